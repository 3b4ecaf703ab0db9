"""The ways an agency's events come in: one request reader, one submit, HTTP and its OpenAPI."""
