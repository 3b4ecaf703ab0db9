"""An agency's gateway onto the exchange: the connector, its inbox and receipts."""
