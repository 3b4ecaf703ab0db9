"""The cbx application: command line and scenarios, on top of the broker library and connectors."""
