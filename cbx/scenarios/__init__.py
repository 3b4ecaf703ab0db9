"""Scenario files played through the whole exchange: spec, runner, audit, report."""
