"""The router: decisions per record with no Kafka (core), the exactly-once loop, dead letters."""
