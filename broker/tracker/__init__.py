"""The delivery tracker: states folded from the delivery log (view, no Kafka) and its service."""
