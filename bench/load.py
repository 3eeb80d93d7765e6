"""The benchmark load: devices x tags x poll interval x change rate, as a flow spec and as batches.

Every device has ``tags`` holding registers ``0 .. tags-1`` (uint16, scale 0.1), read in one
request per device. Devices are spread over simulator ports of at most ``DEVICES_PER_PORT`` unit ids.

>>> load = Load(devices=3, tags=2)
>>> spec = load.spec({"modbus": [15020]})
>>> [d["id"] for d in spec["devices"]], spec["devices"][2]["connection"]["unit_id"]
(['dev0000', 'dev0001', 'dev0002'], 3)
>>> len(load.batches(polls=2, ts0_ns=0))
6
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.batch import PointBatch, tag_id_for

DEVICES_PER_PORT = 200
"""Unit ids per simulator port (Modbus allows 1..247)."""
ENTERPRISE = "bench"


@dataclass(frozen=True, slots=True)
class Load:
    devices: int = 50
    tags: int = 100
    poll_interval_s: float = 1.0
    change_rate: float = 0.5
    """Fraction of the tags whose value changes at each simulator update."""
    deadband: bool = False
    """Give every tag an absolute deadband (0.05 engineering units); off: every point is stored."""
    qos: int = 1
    processes: int = 1
    """Bytewax processes of the end-to-end dataflow (devices partitioned across them)."""

    def __post_init__(self) -> None:
        if self.devices < 1 or self.tags < 1:
            raise ValueError(f"`devices` and `tags` must be >= 1, got {self.devices} and {self.tags}")
        if self.tags > 125:
            raise ValueError(f"`tags` must be <= 125 (one Modbus read per device), got {self.tags}")
        if not 0 <= self.change_rate <= 1:
            raise ValueError(f"`change_rate` must be in 0..1, got {self.change_rate}")
        if not self.poll_interval_s > 0:
            raise ValueError(f"`poll_interval_s` must be > 0, got {self.poll_interval_s}")
        if self.qos not in (0, 1):
            raise ValueError(f"`qos` must be 0 or 1, got {self.qos}")
        if self.processes < 1:
            raise ValueError(f"`processes` must be >= 1, got {self.processes}")

    @property
    def points_per_s(self) -> float:
        return self.devices * self.tags / self.poll_interval_s

    @property
    def ports_needed(self) -> int:
        return -(-self.devices // DEVICES_PER_PORT)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def device_id(i: int) -> str:
        return f"dev{i:04d}"

    @staticmethod
    def tag_name(j: int) -> str:
        return f"t{j:03d}"

    def placement(self, i: int) -> tuple[int, int]:
        """(simulator port index, unit id) of device ``i``."""
        return i // DEVICES_PER_PORT, i % DEVICES_PER_PORT + 1

    def tag_ids(self, i: int) -> np.ndarray:
        dev = self.device_id(i)
        return np.array([tag_id_for(dev, self.tag_name(j)) for j in range(self.tags)], dtype=np.int64)

    def spec(self, ports: dict[str, list[int]], *, sinks: bool = True) -> dict[str, Any]:
        """The flow spec (a plain dict) polling the simulators on ``ports["modbus"]``."""
        band = {"absolute": 0.05} if self.deadband else None
        tags = [
            {
                "name": self.tag_name(j),
                "table": "holding",
                "address": j,
                "data_type": "uint16",
                "scale": 0.1,
                "unit": "u",
                **({"deadband": band} if band else {}),
            }
            for j in range(self.tags)
        ]
        devices = []
        for i in range(self.devices):
            port_index, unit = self.placement(i)
            devices.append(
                {
                    "id": self.device_id(i),
                    "connection": {
                        "host": "127.0.0.1",
                        "port": ports["modbus"][port_index],
                        "unit_id": unit,
                        "timeout_s": 2.0,
                    },
                    "poll_interval_s": self.poll_interval_s,
                    "location": {"enterprise": ENTERPRISE, "site": "s1", "area": f"a{i % 10}", "line": "l1"},
                    "tags": tags,
                }
            )
        spec: dict[str, Any] = {
            "version": 1,
            "id": "bench",
            "devices": devices,
            "operators": [{"id": "normalize", "type": "normalize"}, {"id": "deadband", "type": "deadband"}],
            "sinks": [],
        }
        if sinks:
            spec["sinks"] = [
                {"id": "uns", "type": "mqtt_uns", "qos": self.qos},
                {"id": "historian", "type": "historian", "max_delay_s": 0.2},
            ]
        return spec

    def batches(self, polls: int, ts0_ns: int, *, seed: int = 1) -> list[PointBatch]:
        """``polls`` polls of every device as they would come from the source (raw register values)."""
        rng = np.random.default_rng(seed)
        ids = [self.tag_ids(i) for i in range(self.devices)]
        raw = rng.integers(0, 65535, size=(self.devices, self.tags)).astype(np.float64)
        step = round(self.poll_interval_s * 1e9)
        out: list[PointBatch] = []
        for k in range(polls):
            change = rng.random((self.devices, self.tags)) < self.change_rate
            raw = np.where(change, rng.integers(0, 65535, size=raw.shape), raw)
            ts = ts0_ns + k * step
            for i in range(self.devices):
                out.append(PointBatch.from_values(self.device_id(i), ids[i], raw[i].copy(), ts_ns=ts))
        return out
