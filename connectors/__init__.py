"""cbx connectors: each agency's gateway onto the exchange."""
