"""Reviewed policy data and its rules.

Sharing, routing and the placement registry, reference data, deadlines, agency profiles.
"""
