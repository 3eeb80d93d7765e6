"""What a Sparkplug B edge node publishes: its ids, its devices and their metrics, resolved once.

The flow compiler builds an :class:`EdgeNodePlan` from the spec's ``sparkplug_b`` node; the edge node
takes the plan and never reads the spec. Ids and names are checked here, with the offending value:

>>> plan = EdgeNodePlan(url="mqtt://127.0.0.1:1883", group_id="plant/9", edge_node_id="edge-1")
Traceback (most recent call last):
...
ValueError: group_id 'plant/9' must not contain '+', '/' or '#'
>>> m = MetricDef(tag_id=7, device_id="press-01", name="temp", datatype=DataType.Double, unit="degC")
>>> d = DevicePlan(device_id="press-01", sparkplug_id="Press1", metrics=(m, m))
Traceback (most recent call last):
...
ValueError: device 'press-01': metric name 'temp' appears twice (metric names are compared ignoring case)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from connectors.mqtt.url import MqttUrl, parse_mqtt_url

__all__ = ["DataType", "DevicePlan", "EdgeNodePlan", "MetricDef", "check_sparkplug_id"]

NAMESPACE = "spBv1.0"


class DataType(IntEnum):
    """Sparkplug B metric datatypes used by the edge node (the spec's ``DataType`` enum)."""

    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12


def check_sparkplug_id(what: str, value: str) -> str:
    """Group, edge node and device ids: non-empty UTF-8 without the reserved ``+ / #``
    (tck-id-topic-structure-namespace-valid-*)."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    if any(c in value for c in "+/#"):
        raise ValueError(f"{what} {value!r} must not contain '+', '/' or '#'")
    return value


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One device metric: the tag it reports, its Sparkplug name and datatype, its engineering unit."""

    tag_id: int
    device_id: str
    name: str
    datatype: DataType
    unit: str = ""
    writable: bool = False
    tag_name: str = ""
    """The tag's name in the spec (what a DCMD writes through the command router); default: ``name``."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"device {self.device_id!r}: a metric name must not be empty")
        if not self.tag_name:
            object.__setattr__(self, "tag_name", self.name)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """A Sparkplug device: the flow's device id, its Sparkplug device id, its metrics in birth order."""

    device_id: str
    sparkplug_id: str
    metrics: tuple[MetricDef, ...]
    death_after_failures: int = 3
    """Consecutive all-``bad_comm_error`` batches after which the device is declared dead (DDEATH):
    the device's circuit-breaker threshold, so DDEATH goes out when the breaker opens."""
    death_after_s: float | None = None
    """Or: seconds since the first of a run of failed polls with no readable one since (the breaker
    threshold times the poll interval) — what tells a dead device after a deadband, which lets only
    the first failed poll through. ``None``: by count only."""

    def __post_init__(self) -> None:
        check_sparkplug_id(f"device id of {self.device_id!r}", self.sparkplug_id)
        seen: set[str] = set()
        for m in self.metrics:
            key = m.name.lower()  # tck-id-case-sensitivity-metric-names
            if key in seen:
                raise ValueError(
                    f"device {self.device_id!r}: metric name {m.name!r} appears twice "
                    "(metric names are compared ignoring case)"
                )
            seen.add(key)
        if self.death_after_s is not None and not self.death_after_s > 0:
            raise ValueError(f"`death_after_s` must be > 0, got {self.death_after_s}")
        if self.death_after_failures < 1:
            raise ValueError(f"`death_after_failures` must be >= 1, got {self.death_after_failures}")


@dataclass(frozen=True, slots=True)
class EdgeNodePlan:
    """The edge node: broker, ids, optional primary host, devices; timing and buffering settings."""

    url: str = field(repr=False)
    group_id: str
    edge_node_id: str
    devices: tuple[DevicePlan, ...] = ()
    primary_host_id: str | None = None
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    report_by_exception: bool = True
    """DDATA carries only metrics whose value or quality changed since the last birth or data message."""
    backlog_points: int = 100_000
    """Points kept while offline (no broker, or the primary host away), sent afterwards with
    ``is_historical = true``; the oldest are dropped beyond this (0: nothing is kept)."""
    birth_wait_s: float = 5.0
    """How long a ready session waits for every device's first batch before the births (the DBIRTHs
    of devices not heard from by then carry null values)."""
    birth_all_devices: bool = True
    """DBIRTH every device at birth; False when the node only sees some of the devices (one Bytewax
    worker among several): then each device is born at its first batch."""
    spool_dir: str | None = None
    """Keep the backlog in a disk spool under this folder instead (it survives a restart)."""
    spool_max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        parse_mqtt_url(self.url)
        check_sparkplug_id("group_id", self.group_id)
        check_sparkplug_id("edge_node_id", self.edge_node_id)
        if self.primary_host_id is not None:
            check_sparkplug_id("primary_host_id", self.primary_host_id)
        seen: dict[str, str] = {}
        for d in self.devices:
            key = d.sparkplug_id.lower()  # tck-id-case-sensitivity-sparkplug-ids
            if key in seen:
                raise ValueError(
                    f"devices {seen[key]!r} and {d.device_id!r} map to the same Sparkplug device id "
                    f"{d.sparkplug_id!r} (ids are compared ignoring case)"
                )
            seen[key] = d.device_id
        if self.backlog_points < 0:
            raise ValueError(f"`backlog_points` must be >= 0, got {self.backlog_points}")

    @property
    def broker(self) -> MqttUrl:
        return parse_mqtt_url(self.url)

    def topic(self, message_type: str, device: str | None = None) -> str:
        """``spBv1.0/{group}/{type}/{edge node}[/{device}]``.

        >>> EdgeNodePlan(url="mqtt://h", group_id="g", edge_node_id="e").topic("DBIRTH", "d")
        'spBv1.0/g/DBIRTH/e/d'
        """
        base = f"{NAMESPACE}/{self.group_id}/{message_type}/{self.edge_node_id}"
        return f"{base}/{device}" if device is not None else base
