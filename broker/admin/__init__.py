"""Administration: provisioning principals, topics and ACLs; service and agency identities."""
