"""Desired state for supervisor tests without the config store: real classes, in memory or in a JSON file.

``FileDesiredState`` lets a supervisor in another process (``python -m tests.control.run_supervisor``)
read the same desired state the test writes, so the test can ``kill -9`` that supervisor.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from control.types import DesiredFlow, DesiredState


class MemoryDesiredState:
    """What should run, set by the test; thread-safe."""

    def __init__(self) -> None:
        self._flows: dict[str, DesiredFlow] = {}
        self._lock = threading.Lock()

    def set(
        self,
        flow_id: str,
        state: DesiredState,
        version: int | None,
        spec: Mapping[str, Any] | None,
        processes: int = 1,
    ) -> None:
        with self._lock:
            self._flows[flow_id] = DesiredFlow(flow_id, state, version, spec, processes)

    def remove(self, flow_id: str) -> None:
        with self._lock:
            self._flows.pop(flow_id, None)

    def desired_flows(self) -> list[DesiredFlow]:
        with self._lock:
            return list(self._flows.values())


class FileDesiredState:
    """The desired flows as a JSON list in a file (written atomically by :meth:`write`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, flows: list[DesiredFlow]) -> None:
        rows = [
            {
                "flow_id": f.flow_id,
                "desired_state": f.desired_state,
                "version": f.version,
                "spec": f.spec,
                "processes": f.processes,
            }
            for f in flows
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(self.path)

    def desired_flows(self) -> list[DesiredFlow]:
        rows = json.loads(self.path.read_text())
        return [DesiredFlow(**row) for row in rows]


def small_spec(
    flow_id: str,
    port: int,
    *,
    scale: float = 1.0,
    window: bool = False,
    devices: int = 1,
    poll_interval_s: float = 0.5,
) -> dict[str, Any]:
    """A valid spec: Modbus devices on ``port`` (served or not), normalize, deadband, UNS sink."""
    operators: list[dict[str, Any]] = [{"id": "normalize", "type": "normalize"}]
    if window:
        operators.append({"id": "agg", "type": "window", "windows": ["10s"]})
    operators.append({"id": "deadband", "type": "deadband"})
    return {
        "version": 1,
        "id": flow_id,
        "devices": [
            {
                "id": f"dev-{i}",
                "connection": {"host": "127.0.0.1", "port": port, "unit_id": i, "timeout_s": 0.5},
                "poll_interval_s": poll_interval_s,
                "location": {"enterprise": "acme", "site": "s1", "area": "a1", "line": f"l-{flow_id}"},
                "tags": [
                    {
                        "name": "t0",
                        "table": "holding",
                        "address": 0,
                        "data_type": "int16",
                        "scale": scale,
                        "deadband": {"absolute": 0.5, "heartbeat_s": 600},
                        "simulate": {"kind": "ramp", "offset": 0, "amplitude": 1000, "period_s": 20},
                    },
                    {
                        "name": "t1",
                        "table": "holding",
                        "address": 1,
                        "data_type": "int16",
                        "simulate": {"kind": "constant", "offset": 42},
                    },
                ],
            }
            for i in range(1, devices + 1)
        ],
        "operators": operators,
        "sinks": [{"id": "uns", "type": "mqtt_uns", "qos": 1, "retain": False}],
    }
