"""MQTT: the Unified Namespace publisher and its Bytewax sink."""
