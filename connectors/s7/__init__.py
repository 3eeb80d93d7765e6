"""Siemens S7 connector (python-snap7): addresses, configuration, client, source and simulator."""
