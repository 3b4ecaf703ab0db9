"""cbx broker side: Kafka plumbing, codec, protection, routing, delivery tracking."""
