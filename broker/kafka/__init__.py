"""Kafka plumbing: settings, clients, topics, followers, ACLs, principals, TLS, embedded broker."""
