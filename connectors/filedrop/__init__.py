"""The drop folder: CSV and JSON-lines exports of an agency's system, sent row by row."""
