"""Prometheus metrics of the Modbus connector, labelled by device.

Created on first use in the process's default registry (Bytewax serves it on ``/metrics`` when
``BYTEWAX_DATAFLOW_API_ENABLED=1``). Without ``prometheus_client`` every hook is a no-op.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ModbusMetrics:
    polls: Any
    failures: Any
    comm_errors: Any
    device_exceptions: Any
    reconnects: Any
    latency: Any


@functools.cache
def modbus_metrics() -> ModbusMetrics | None:
    try:
        from prometheus_client import Counter, Gauge
    except ImportError:  # pragma: no cover - prometheus-client is a dependency
        return None
    label = ["device"]
    return ModbusMetrics(
        polls=Counter("nexus_modbus_polls", "Modbus polls executed", label),
        failures=Counter(
            "nexus_modbus_poll_failures", "Modbus polls with at least one failed request", label
        ),
        comm_errors=Counter("nexus_modbus_comm_errors", "Modbus requests lost to transport errors", label),
        device_exceptions=Counter(
            "nexus_modbus_device_exceptions", "Modbus requests answered with an exception response", label
        ),
        reconnects=Counter("nexus_modbus_reconnects", "Modbus connections re-established", label),
        latency=Gauge("nexus_modbus_poll_latency_seconds", "Duration of the last Modbus poll", label),
    )
