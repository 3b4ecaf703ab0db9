"""End-to-end protection: agency keys, data-key wrapping, field sealing, batch signatures."""
