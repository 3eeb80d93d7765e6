"""The NEXUS Edge benchmark harness: every figure against its physical limit, measured in the same run.

``python -m bench`` (``just bench``) starts the real parts — PostgreSQL, an MQTT broker, Modbus
simulators in their own process, the dataflow as ``python -m bytewax.run`` — drives a configurable
load, and prints a table of figures with the ratio of each to its bare baseline (a bare binary COPY,
a bare paho publish loop, a bare pymodbus read loop) measured against the same services in the same
run. See ``BENCHMARKS.md``.
"""
