"""Sparkplug B 3.0 edge node: the flow's devices as Sparkplug devices for SCADA/MES hosts.

``sparkplug_b.proto`` is the spec's schema; ``sparkplug_b_pb2.py``/``.pyi`` are generated from it
by ``just sparkplug-proto`` (grpcio-tools' protoc) and committed.
"""
