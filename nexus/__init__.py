"""NEXUS Edge command line, embedded services and the demo."""
