"""Flow spec v1: the contract between the API, the flow designer and the runtime.

A spec names the devices to poll (connection, poll interval, ISA-95 location, tags) and the
chain of operators and sinks the points go through. It is plain data (YAML or JSON), checked
here by pydantic models; :func:`load_spec` refuses a bad spec before anything starts, with the
field path of every problem:

>>> try:
...     parse_spec({"version": 1, "id": "f", "devices": [
...         {"id": "d1", "connection": {"host": "127.0.0.1"}, "poll_interval_s": -1,
...          "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
...          "tags": [{"name": "t", "table": "holding", "address": 0, "data_type": "float128"}]}]})
... except SpecError as e:
...     print(e)
flow spec is invalid (2 problems):
  devices[0].poll_interval_s: Input should be greater than 0 (got -1)
  devices[0].tags[0].data_type: Input should be 'bool', 'bit', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string' (got 'float128')
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.modbus.config import ModbusConnectionConfig, ModbusTagAddress
from connectors.mqtt.source_config import MqttTagMapping
from connectors.mqtt.url import parse_mqtt_url
from connectors.opcua.config import OpcUaConnection, OpcUaTagAddress
from connectors.s7.config import S7Connection, S7TagAddress
from connectors.signals import Signal
from core.batch import tag_id_for
from core.tags import TagInfo
from core.timestamps import DEFAULT_MAX_FUTURE_S, DEFAULT_MAX_PAST_S, TimestampWindow
from core.uns import IsaPath, uns_topic
from operators.expressions import Expression, ExpressionError
from operators.oee import Shift
from operators.units import UnitError, conversion
from operators.window import parse_window

SPEC_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
"""Ids and names: they become MQTT topic levels, step ids and SQL values."""

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
STEP_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$"
"""The flow id and node ids: they become Bytewax step ids, which may not contain a period."""
StepName = Annotated[str, Field(pattern=STEP_PATTERN)]


def _window_length(text: str) -> str:
    parse_window(text)  # a ValueError names the window ("0s" is no length)
    return text


WindowLength = Annotated[str, Field(pattern=r"^[0-9]{1,6}[smhd]$"), AfterValidator(_window_length)]
"""A window length such as ``10s``, ``5m``, ``1h``, ``1d``: a positive whole number of a unit."""


class SpecError(ValueError):
    """A spec that cannot run; ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        where = f" ({source})" if source else ""
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"flow spec{where} is invalid ({len(problems)} {noun}):"]
        lines += [f"  {path}: {message}" if path else f"  {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class _Model(BaseModel):
    # NaN and infinity are refused everywhere: no limit, scale, band or interval means them, and
    # every one of them crashed the flow at start (or poisoned every value) when accepted.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Location(_Model):
    """ISA-95 location; the first four levels of every UNS topic of the device."""

    enterprise: Name
    site: Name
    area: Name
    line: Name

    def isa_path(self) -> IsaPath:
        return IsaPath(self.enterprise, self.site, self.area, self.line)


class Clamp(_Model):
    """Limits in the tag's ``unit``; values outside are clamped and flagged ``uncertain_clamped``."""

    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Clamp:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"clamp low ({self.low}) must be below high ({self.high})")
        return self


class DeadbandSpec(_Model):
    """Publish a value only when it moved more than the band since the last published one.

    ``absolute`` and ``span`` are in the tag's ``unit`` (converted along with the value)."""

    absolute: float | None = Field(default=None, gt=0)
    percent: float | None = Field(default=None, gt=0, le=100)
    span: float | None = Field(default=None, gt=0)
    """Span for ``percent``; defaults to the tag's clamp range."""
    heartbeat_s: float | None = Field(default=None, gt=0)
    """Republish a steady value after this many seconds of silence."""


Severity = Literal["info", "warning", "critical"]


class StuckSpec(_Model):
    """Alarm when the value has not moved more than ``epsilon`` for ``samples`` samples or ``seconds``."""

    epsilon: float = Field(default=0.0, ge=0)
    samples: int | None = Field(default=None, ge=2)
    seconds: float | None = Field(default=None, gt=0)
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _one_limit(self) -> StuckSpec:
        if self.samples is None and self.seconds is None:
            raise ValueError("stuck needs `samples` or `seconds`")
        return self


class RateSpec(_Model):
    """Alarm when the value changes faster than ``max_per_s`` (absolute, per second)."""

    max_per_s: float = Field(gt=0)
    severity: Severity = "warning"


class MlSpec(_Model):
    """Online anomaly score (river): score first, then learn; silent during ``warm_up`` samples."""

    model: Literal["zscore", "hst"] = "zscore"
    threshold: float | None = Field(default=None, gt=0)
    """z-score above which the value is anomalous (default 3), or HST score (default 0.9)."""
    warm_up: int = Field(default=100, ge=1)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    severity: Severity = "warning"


class AlarmSpec(_Model):
    """Per-tag anomaly checks, raised once and cleared once; limits are in the tag's ``unit``."""

    high: float | None = None
    low: float | None = None
    hysteresis: float = Field(default=0.0, ge=0)
    """Clear a high alarm only below ``high - hysteresis`` (a low one above ``low + hysteresis``)."""
    severity: Severity = "warning"
    stuck: StuckSpec | None = None
    rate: RateSpec | None = None
    ml: MlSpec | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AlarmSpec:
        if self.high is not None and self.low is not None and self.low >= self.high:
            raise ValueError(f"alarms: low ({self.low}) must be below high ({self.high})")
        return self


class CompressionSpec(_Model):
    """Swinging-door compression (an alternative to a deadband): keep the points a straight line
    between stored points cannot reproduce within ``deviation`` (in the tag's ``unit``)."""

    deviation: float = Field(gt=0)
    max_interval_s: float | None = Field(default=None, gt=0)
    """Store a point at least this often, even when the line still fits."""


class TagBase(_Model):
    """What every tag has, whatever the protocol: scaling, units, limits, deadband, alarms."""

    name: Name
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    convert_to: str | None = None
    """Engineering unit to convert to after scaling (e.g. ``degF`` for a ``degC`` tag)."""
    clamp: Clamp | None = None
    deadband: DeadbandSpec | None = None
    compression: CompressionSpec | None = None
    alarms: AlarmSpec | None = None
    access: Literal["read", "read_write"] = "read"
    """``read_write`` accepts write commands on ``$nexus/cmd/{device}/{tag}/set``."""

    @model_validator(mode="after")
    def _tag_consistent(self) -> TagBase:  # not `_consistent`: the address models have one
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.convert_to is not None:
            if not self.unit:
                raise ValueError(f"convert_to {self.convert_to!r} needs the tag's `unit`")
            try:
                conversion(self.unit, self.convert_to)
            except UnitError as exc:
                raise ValueError(str(exc)) from None
        band, clamp = self.deadband, self.clamp
        has_span = clamp is not None and clamp.low is not None and clamp.high is not None
        if band is not None and band.percent is not None and band.span is None and not has_span:
            raise ValueError("deadband.percent needs deadband.span or both clamp limits")
        if band is not None and self.compression is not None:
            raise ValueError("a tag takes `deadband` or `compression`, not both")
        return self

    @property
    def eng_unit(self) -> str:
        return self.convert_to or self.unit


class ModbusTagSpec(TagBase, ModbusTagAddress):
    """A Modbus tag: ``table``, ``address``, ``data_type``, ``byte_order`` (or ``word_order``),
    ``bit`` (for ``bit``), ``length`` and ``string_byte_order`` (for ``string``)."""

    simulate: Signal | None = None
    """Signal of the simulated device (demo and tests); ignored by real connections."""

    def modbus_address(self) -> ModbusTagAddress:
        return ModbusTagAddress.model_validate(
            self.model_dump(include=set(ModbusTagAddress.model_fields), exclude_none=True)
        )


class OpcUaTagSpec(TagBase, OpcUaTagAddress):
    """An OPC UA tag: ``node_id`` and, in subscribe mode, ``sampling_interval_ms``, ``queue_size``
    and a server-side ``deadband_abs``."""

    simulate: Signal | None = None
    """Signal of the simulated server (demo and tests); ignored by real connections."""

    def opcua_address(self) -> OpcUaTagAddress:
        return OpcUaTagAddress.model_validate(self.model_dump(include=set(OpcUaTagAddress.model_fields)))


class S7TagSpec(TagBase, S7TagAddress):
    """A Siemens S7 tag: ``address`` in S7 notation (``DB1.DBD20``, ``M10.3``), ``data_type``
    (BOOL, BYTE, WORD, INT, DWORD, DINT, REAL, LREAL, STRING) and ``length`` for strings."""

    simulate: Signal | None = None
    """Signal of the simulated PLC (demo and tests); ignored by real connections."""

    def s7_address(self) -> S7TagAddress:
        return S7TagAddress.model_validate(self.model_dump(include=set(S7TagAddress.model_fields)))


class MqttTagSpec(TagBase, MqttTagMapping):
    """A tag read from MQTT messages on ``topic``: the payload itself (a number, ``true``/``false``
    or a string) or the value at ``value_path`` in a JSON payload (``data.temp``, ``values[2].v``);
    ``timestamp_path`` (ISO-8601 or epoch s/ms/us/ns) and ``quality_path`` are optional."""

    topic: str = Field(min_length=1)  # type: ignore[assignment]


class CalculatedTagSpec(_Model):
    """A tag computed from other tags of the same device, e.g. ``voltage * current * 0.001``.

    Names in the expression are the device's tag names (or calculated tags defined before this
    one); allowed are numbers, ``+ - * / ** %``, comparisons and abs, min, max, sqrt, exp, log,
    log10, sin, cos, tan, floor, ceil, round, clip(x, lo, hi), where(cond, a, b)."""

    name: Name
    expression: str = Field(min_length=1)
    unit: str = ""
    deadband: DeadbandSpec | None = None
    compression: CompressionSpec | None = None
    alarms: AlarmSpec | None = None

    @property
    def eng_unit(self) -> str:
        return self.unit


class DeviceBase(_Model):
    id: Name
    poll_interval_s: float = Field(default=1.0, gt=0, le=86_400)
    location: Location
    calculated: list[CalculatedTagSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_tags(self) -> DeviceBase:
        names = [t.name for t in self.tags]  # type: ignore[attr-defined]
        _refuse_duplicates(names, "tag name", "tags")
        for i, calc in enumerate(self.calculated):
            if calc.name in names:
                raise ValueError(f"calculated[{i}]: name {calc.name!r} is already a tag of the device")
        _refuse_duplicates([c.name for c in self.calculated], "calculated tag name", "calculated")
        known = list(names)
        for i, calc in enumerate(self.calculated):
            try:
                Expression.parse(calc.expression, known)
            except ExpressionError as exc:
                raise ValueError(f"calculated[{i}].expression: {exc}") from None
            known.append(calc.name)
        return self

    def all_tags(self) -> list[TagBase | CalculatedTagSpec]:
        """Read and calculated tags, in order."""
        return [*self.tags, *self.calculated]  # type: ignore[attr-defined]


class AdaptivePollingSpec(_Model):
    """Poll faster (down to ``min_interval_s``) while values change, slower (up to ``max_interval_s``)
    while they are stable; ``poll_interval_s`` is where it starts. A change halves the interval, a
    stable poll makes it 1.5 times longer."""

    min_interval_s: float = Field(gt=0, le=86_400)
    max_interval_s: float = Field(gt=0, le=86_400)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptivePollingSpec:
        if self.min_interval_s > self.max_interval_s:
            raise ValueError(
                f"adaptive: min_interval_s ({self.min_interval_s}) must be <= max_interval_s ({self.max_interval_s})"
            )
        return self


class PolledDeviceBase(DeviceBase):
    """A device the flow polls (Modbus, OPC UA, S7)."""

    adaptive: AdaptivePollingSpec | None = None
    """Adaptive polling; ``None``: every ``poll_interval_s``."""

    @model_validator(mode="after")
    def _adaptive_bounds(self) -> PolledDeviceBase:
        a = self.adaptive
        if a is not None and not a.min_interval_s <= self.poll_interval_s <= a.max_interval_s:
            raise ValueError(
                f"poll_interval_s ({self.poll_interval_s}) must be within adaptive.min_interval_s "
                f"({a.min_interval_s}) and adaptive.max_interval_s ({a.max_interval_s}): it is where "
                "adaptive polling starts"
            )
        if a is not None and getattr(getattr(self, "connection", None), "mode", "poll") == "subscribe":
            raise ValueError(
                "adaptive: a subscribed OPC UA device is not polled (connection.mode 'subscribe')"
            )
        return self


class ModbusDeviceSpec(PolledDeviceBase):
    """A Modbus device: TCP, RTU over TCP (a gateway) or RTU on a serial line (``connection.transport``)."""

    protocol: Literal["modbus", "modbus_tcp"] = "modbus"
    connection: ModbusConnectionConfig
    tags: list[ModbusTagSpec] = Field(min_length=1)


class OpcUaDeviceSpec(PolledDeviceBase):
    """An OPC UA server, polled or subscribed (``connection.mode``), with optional security."""

    protocol: Literal["opcua"]
    connection: OpcUaConnection
    tags: list[OpcUaTagSpec] = Field(min_length=1)


class S7DeviceSpec(PolledDeviceBase):
    """A Siemens S7 PLC (rack/slot or TSAP addressing)."""

    protocol: Literal["s7"]
    connection: S7Connection
    tags: list[S7TagSpec] = Field(min_length=1)


class MqttConnectionSpec(_Model):
    """The broker an MQTT device publishes to. All MQTT devices of a flow share one connection."""

    url: str | None = Field(default=None, repr=False)
    """Default: the flow's broker (``NEXUS_MQTT_URL``)."""
    client_id: str | None = None
    qos: Literal[0, 1, 2] = 1
    clean_session: bool = True

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_mqtt_url(value)  # mqtt:// or mqtts:// with a host; the message never shows a password
        return value


class MqttDeviceSpec(DeviceBase):
    """A device (or gateway) that publishes its values over MQTT; the flow subscribes to its topics."""

    protocol: Literal["mqtt"]
    connection: MqttConnectionSpec = MqttConnectionSpec()
    tags: list[MqttTagSpec] = Field(min_length=1)


def _protocol_of(value: Any) -> str:
    protocol = (
        value.get("protocol", "modbus") if isinstance(value, dict) else getattr(value, "protocol", "modbus")
    )
    return "modbus" if protocol in ("modbus", "modbus_tcp") else str(protocol)


DeviceSpec = Annotated[
    Annotated[ModbusDeviceSpec, Tag("modbus")]
    | Annotated[OpcUaDeviceSpec, Tag("opcua")]
    | Annotated[S7DeviceSpec, Tag("s7")]
    | Annotated[MqttDeviceSpec, Tag("mqtt")],
    Discriminator(
        _protocol_of,
        custom_error_type="unknown_protocol",
        custom_error_message="protocol must be one of 'modbus', 'opcua', 's7', 'mqtt'",
    ),
]
"""A device of any protocol, told apart by ``protocol`` (``modbus`` when absent)."""


StateCategory = Literal["running", "planned_stop", "unplanned_stop"]


class MachineStateSpec(_Model):
    category: StateCategory
    reason: str | None = None
    """Downtime reason reported for this state (default: ``state <value>``)."""


class MachineSpec(_Model):
    """A machine for OEE: its state tag, part counter and ideal cycle time (tags of one device)."""

    id: Name
    device: Name
    state_tag: Name
    states: dict[int, StateCategory | MachineStateSpec] = Field(min_length=1)
    """Machine-state value -> category (or category and downtime reason)."""
    counter_tag: Name
    """Total parts counter (resets and wraps are handled)."""
    ideal_cycle_s: float = Field(gt=0)
    good_tag: Name | None = None
    reject_tag: Name | None = None
    counter_max: int = Field(default=2**32, gt=1, le=2**63)
    """Where the counters wrap (``2**16`` for a 16-bit register)."""


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class ShiftSpec(_Model):
    """A shift from ``start`` to ``end`` (local ``HH:MM``, 00:00 to 23:59); ``end <= start`` crosses midnight."""

    name: Name
    start: str = Field(pattern=_HHMM)
    end: str = Field(pattern=_HHMM)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None

    @model_validator(mode="after")
    def _compiles(self) -> ShiftSpec:
        Shift(self.name, self.start, self.end, self.days)  # the calendar's own checks, first
        return self


class NormalizeNode(_Model):
    id: StepName
    type: Literal["normalize"]


class DeadbandNode(_Model):
    id: StepName
    type: Literal["deadband"]


class CompressNode(_Model):
    """Swinging-door compression of the tags that have a ``compression`` setting."""

    id: StepName
    type: Literal["swinging_door"]


class CalculateNode(_Model):
    """Add each device's ``calculated`` tags, evaluated from the latest values of their inputs."""

    id: StepName
    type: Literal["calculate"]


class WindowNode(_Model):
    """Tumbling-window aggregates per tag (min, max, avg, count, sum, first, last, time-weighted
    average), published on ``{tag topic}/_agg/{window}`` and stored in ``nexus_agg_{window}``.

    A tap: the points flow on unchanged to the next node."""

    id: StepName
    type: Literal["window"]
    windows: list[WindowLength] = Field(min_length=1)
    """Window lengths, e.g. ``["10s", "1m", "5m"]``."""
    lateness_s: float = Field(default=2.0, ge=0)
    """How long a bucket stays open for late points; later ones are counted and set aside."""
    max_future_s: float = Field(default=5.0, ge=0)
    """Device timestamps further ahead of the clock are clamped to it (and counted)."""

    @field_validator("windows")
    @classmethod
    def _distinct(cls, windows: list[str]) -> list[str]:
        seconds: dict[float, str] = {}
        for w in windows:
            s = parse_window(w)
            if s in seconds:
                raise ValueError(f"{w!r} is the same length as {seconds[s]!r}")
            seconds[s] = w
        return windows


class AnomalyNode(_Model):
    """Check the tags' ``alarms``; alerts go to ``{device topic}/_alerts`` and ``nexus_alerts``. A tap."""

    id: StepName
    type: Literal["anomaly"]


class OeeNode(_Model):
    """OEE of the spec's ``machines`` per window and per shift; on ``.../{machine}/_oee`` and in
    ``nexus_oee``. A tap."""

    id: StepName
    type: Literal["oee"]
    window: WindowLength | None = "5m"
    max_hold_s: float = Field(default=8 * 3600.0, gt=0, le=7 * 86_400)
    """The longest a machine state holds without a point; after a longer gap the machine starts
    over (the periods in the gap are not filled with one result per window)."""


OperatorNode = Annotated[
    NormalizeNode | DeadbandNode | CompressNode | CalculateNode | WindowNode | AnomalyNode | OeeNode,
    Field(discriminator="type"),
]


class MqttUnsNode(_Model):
    """Publish one JSON message per point on the device's UNS topics."""

    id: StepName
    type: Literal["mqtt_uns"]
    input: StepName | None = None
    """Operator node to take points from; default: the last operator."""
    qos: Literal[0, 1, 2] = 1
    retain: bool = False


class HistorianNode(_Model):
    """Store raw points in the historian (binary COPY, batched by size and time)."""

    id: StepName
    type: Literal["historian"]
    input: StepName | None = None
    batch_rows: int = Field(default=50_000, gt=0)
    max_delay_s: float = Field(default=1.0, gt=0)
    """The longest a row waits before its commit (a chunk is written at ``batch_rows`` or this)."""
    spool_sync_interval_s: float = Field(default=1.5, gt=0, le=60)
    """Group commit of the write-ahead spool: how long an accepted row the database has not committed
    may sit in the page cache before its fsync (a ``kill -9`` loses nothing either way; a power loss
    at most this much of what the database has not committed). Longer than ``max_delay_s`` by
    default, so a commit on time spares the fsync; each one costs ~0.2-0.5 ms of CPU here and a
    journal write on the flash (see ``HistorianConfig``)."""


SparkplugId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^+/#]+$")]
"""A Sparkplug group, edge node, device or host id: any UTF-8 except ``+``, ``/`` and ``#``."""


class SparkplugNode(_Model):
    """Publish the points as a Sparkplug B 3.0 edge node (for Ignition, HiveMQ, Canary, MES hosts).

    Each device of the flow is a Sparkplug device (DBIRTH/DDATA/DDEATH), each tag a metric. Writable
    tags (``access: read_write``) accept DCMD through the same checks as ``$nexus/cmd``."""

    id: Name
    type: Literal["sparkplug_b"]
    input: Name | None = None
    """Operator node to take points from; default: the last operator (put it after ``deadband``)."""
    group_id: SparkplugId
    edge_node_id: SparkplugId
    primary_host_id: SparkplugId | None = None
    """Wait for this host's ``spBv1.0/STATE/{id}`` online before birth; disconnect when it goes offline."""
    device_ids: Literal["device", "location"] = "device"
    """Sparkplug device ids: the flow's device id, or ``{area}.{line}.{device}`` from its ISA-95 location."""
    devices: dict[Name, SparkplugId] = Field(default_factory=dict)
    """Explicit Sparkplug device id per flow device id (overrides ``device_ids``)."""
    metrics: dict[str, Annotated[str, Field(min_length=1, max_length=500)]] = Field(default_factory=dict)
    """Explicit metric name per ``{device}/{tag}`` (default: the tag's name; ``/`` makes folders)."""
    report_by_exception: bool = True
    """DDATA carries only the metrics whose value or quality changed."""
    backlog_points: int = Field(default=100_000, ge=0)
    """Points kept while the broker or the primary host is away, sent later as historical data."""
    spool_dir: str | None = None
    """Keep that backlog in a disk spool under this folder instead of memory (it survives restarts)."""

    def sparkplug_device_id(
        self, device: ModbusDeviceSpec | OpcUaDeviceSpec | S7DeviceSpec | MqttDeviceSpec
    ) -> str:
        if device.id in self.devices:
            return self.devices[device.id]
        if self.device_ids == "location":
            return f"{device.location.area}.{device.location.line}.{device.id}"
        return device.id

    def metric_name(self, device_id: str, tag_name: str) -> str:
        return self.metrics.get(f"{device_id}/{tag_name}", tag_name)


SinkNode = Annotated[MqttUnsNode | HistorianNode | SparkplugNode, Field(discriminator="type")]


class TimestampsSpec(_Model):
    """How far a device's own timestamp (an MQTT payload's ``timestamp_path``, an OPC UA
    SourceTimestamp) may lie from the time it was received. Outside, the receive time is used, the
    point is ``uncertain`` and ``nexus_timestamps_replaced`` counts it (:mod:`core.timestamps`)."""

    max_past_s: float = Field(default=DEFAULT_MAX_PAST_S, gt=0, le=366 * 86_400)
    """Older stamps are replaced: a week by default (a device's store-and-forward backlog)."""
    max_future_s: float = Field(default=DEFAULT_MAX_FUTURE_S, gt=0, le=86_400)
    """Stamps further ahead (clock skew) are replaced: a minute by default."""

    def window(self) -> TimestampWindow:
        return TimestampWindow(max_past_s=self.max_past_s, max_future_s=self.max_future_s)


class CommandsSpec(_Model):
    """How the flow's command router accepts writes (``$nexus/cmd/...``, Sparkplug DCMD)."""

    require_signature: bool = True
    """Write only commands signed with the shared command key (``NEXUS_COMMAND_KEY``), as the API
    sends them. ``false`` accepts any well-formed command from whoever may publish on the broker
    (and Sparkplug DCMD writes, which carry no signature): turn it off only on a broker whose ACLs
    allow nobody else to publish commands."""


class FlowSpec(_Model):
    version: Literal[1]
    id: StepName
    """Flow id; with the node ids it forms the Bytewax step ids (keep both stable)."""
    description: str = ""
    devices: list[DeviceSpec] = Field(min_length=1)
    operators: list[OperatorNode] = Field(default_factory=list)
    sinks: list[SinkNode] = Field(default_factory=list)
    machines: list[MachineSpec] = Field(default_factory=list)
    shifts: list[ShiftSpec] = Field(default_factory=list)
    shift_timezone: str = "UTC"
    timestamps: TimestampsSpec = TimestampsSpec()
    """The accepted window of device timestamps, for every source of the flow."""
    commands: CommandsSpec = CommandsSpec()
    """Write commands: signed only (the default), or any well-formed command."""

    @model_validator(mode="after")
    def _references(self) -> FlowSpec:
        _refuse_duplicates([d.id for d in self.devices], "device id", "devices")
        nodes = [*self.operators, *self.sinks]
        ids = [n.id for n in nodes]
        if "devices" in ids:
            raise ValueError("node id 'devices' is reserved for the source step")
        _refuse_duplicates(ids, "node id", "operators/sinks")
        kinds = [n.type for n in self.operators]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ValueError(f"operators: {kind!r} appears {kinds.count(kind)} times; use it once")
        taps = {"window", "anomaly", "oee"}
        if not self.sinks and not any(n.type in taps for n in self.operators):
            raise ValueError("sinks: a flow needs at least one sink (or a window, anomaly or oee node)")
        self._check_machines()
        self._check_operator_order()
        mqtt_connections = {d.connection for d in self.devices if isinstance(d, MqttDeviceSpec)}
        if len(mqtt_connections) > 1:
            raise ValueError(
                "devices: MQTT devices of one flow must share one `connection` (one broker session)"
            )
        if any(n.type == "oee" for n in self.operators) and not self.machines:
            raise ValueError("operators: an `oee` node needs `machines`")
        operator_ids = {n.id for n in self.operators}
        for i, sink in enumerate(self.sinks):
            if sink.input is not None and sink.input not in operator_ids:
                raise ValueError(
                    f"sinks[{i}].input: {sink.input!r} is not an operator id "
                    f"(operators: {sorted(operator_ids) or 'none'})"
                )
            if isinstance(sink, SparkplugNode):
                self._check_sparkplug(i, sink)
        return self

    def _check_operator_order(self) -> None:
        """Operators that compare values with limits or label them with a unit work in engineering
        units; before ``normalize`` they would see raw register values. Refused unless no tag needs
        normalizing (every scale 1, offset 0, no conversion or clamp)."""
        needs = [
            f"{d.id}/{t.name}"
            for d in self.devices
            for t in d.tags
            if t.scale != 1 or t.offset != 0 or t.convert_to is not None or t.clamp is not None
        ]
        if not needs:
            return
        seen_normalize = False
        for i, node in enumerate(self.operators):
            if node.type == "normalize":
                seen_normalize = True
            elif node.type in _ENGINEERING_NODES and not seen_normalize:
                where = (
                    "comes before the `normalize` node"
                    if any(n.type == "normalize" for n in self.operators)
                    else "has no `normalize` node before it"
                )
                raise ValueError(
                    f"operators[{i}]: {node.type} node {node.id!r} {where}: it would compare raw register "
                    f"values with limits and units in engineering units (tag {needs[0]!r} is scaled, "
                    "converted or clamped); put a `normalize` node first"
                )

    def _check_sparkplug(self, i: int, node: SparkplugNode) -> None:
        """Device and metric mappings name existing devices and tags; ids and names are unique
        ignoring case (tck-id-case-sensitivity-sparkplug-ids, -metric-names)."""
        devices = {d.id: d for d in self.devices}
        for device_id in node.devices:
            if device_id not in devices:
                raise ValueError(f"sinks[{i}].devices: unknown device {device_id!r}")
        for key in node.metrics:
            device_id, _, tag = key.partition("/")
            device = devices.get(device_id)
            if device is None or tag not in {t.name for t in device.all_tags()}:
                raise ValueError(f"sinks[{i}].metrics: {key!r} is not a `device/tag` of the flow")
        seen: dict[str, str] = {}
        for d in self.devices:
            sp_id = node.sparkplug_device_id(d)
            if sp_id.lower() in seen:
                raise ValueError(
                    f"sinks[{i}]: devices {seen[sp_id.lower()]!r} and {d.id!r} get the same Sparkplug "
                    f"device id {sp_id!r} (ids are compared ignoring case)"
                )
            seen[sp_id.lower()] = d.id
            names: dict[str, str] = {}
            for t in d.all_tags():
                name = node.metric_name(d.id, t.name)
                if name.lower() in names:
                    raise ValueError(
                        f"sinks[{i}].metrics: tags {names[name.lower()]!r} and {t.name!r} of device "
                        f"{d.id!r} get the same metric name {name!r} (names are compared ignoring case)"
                    )
                names[name.lower()] = t.name

    def _check_machines(self) -> None:
        devices = {d.id: d for d in self.devices}
        _refuse_duplicates([m.id for m in self.machines], "machine id", "machines")
        for i, machine in enumerate(self.machines):
            device = devices.get(machine.device)
            if device is None:
                raise ValueError(f"machines[{i}].device: unknown device {machine.device!r}")
            names = {t.name for t in device.all_tags()}
            for field_name in ("state_tag", "counter_tag", "good_tag", "reject_tag"):
                tag = getattr(machine, field_name)
                if tag is not None and tag not in names:
                    raise ValueError(f"machines[{i}].{field_name}: device {device.id!r} has no tag {tag!r}")
        _refuse_duplicates([s.name for s in self.shifts], "shift name", "shifts")
        try:
            ZoneInfo(self.shift_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"shift_timezone: unknown time zone {self.shift_timezone!r}") from None

    def tag_infos(self) -> dict[int, TagInfo]:
        """Every configured tag by its stable id (what the sinks need to know)."""
        infos: dict[int, TagInfo] = {}
        for device in self.devices:
            path = device.location.isa_path()
            for tag in device.all_tags():
                tag_id = tag_id_for(device.id, tag.name)
                infos[tag_id] = TagInfo(
                    tag_id=tag_id,
                    device_id=device.id,
                    name=tag.name,
                    unit=tag.eng_unit,
                    topic=uns_topic(path, device.id, tag.name),
                )
        return infos


_ENGINEERING_NODES = frozenset({"deadband", "swinging_door", "window", "anomaly"})
"""Operators whose settings (bands, deviations, alarm limits) or outputs (aggregates labelled with
the unit) are in engineering units."""
_PROTOCOL_TAGS = {"modbus", "opcua", "s7", "mqtt", "tcp", "rtu"}
_NODE_TYPES = {
    "normalize",
    "deadband",
    "swinging_door",
    "calculate",
    "window",
    "anomaly",
    "oee",
    "mqtt_uns",
    "historian",
    "sparkplug_b",
}


def _refuse_duplicates(names: list[str], what: str, where: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{where}[{i}]: duplicate {what} {name!r} (first at {where}[{seen[name]}])")
        seen[name] = i


def _is_union_tag(loc: tuple[int | str, ...], i: int) -> bool:
    """Whether ``loc[i]`` names the member of a union pydantic tried (not a field of the spec)."""
    part = loc[i]
    if not isinstance(part, str):
        return False
    if part.startswith(("function-", "constrained-")) or "[" in part:
        return True  # validator wrappers: function-after[...], constrained-str
    if i >= 2 and isinstance(loc[i - 1], int) and loc[i - 2] in ("operators", "sinks", "devices"):
        return part in _NODE_TYPES or part in _PROTOCOL_TAGS
    return i >= 1 and loc[i - 1] == "connection" and part in _PROTOCOL_TAGS


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_union_tag(loc, i):
            continue  # discriminator tags and validator wrappers add no information
        else:
            out += f".{part}" if out else str(part)
    return out


MAX_SPEC_BYTES = 4 * 1024 * 1024
"""A spec file (or API body) larger than this is refused before parsing: 4 MiB holds tens of
thousands of tags, and a 50 MB document took minutes to parse."""
MAX_DEPTH = 32
"""Nesting levels of a spec document; the deepest real spec has about 8."""
MAX_NODES = 1_000_000
"""Values (mappings, lists, scalars) in a spec document *after* YAML aliases are expanded: the
"billion laughs" document is a few hundred bytes that expand to 10^9 values."""
MAX_ECHO_CHARS = 80
"""How much of a refused value an error message repeats (the ``(got ...)`` part)."""

_ECHO = reprlib.Repr()
_ECHO.maxstring = _ECHO.maxother = _ECHO.maxlong = MAX_ECHO_CHARS
_ECHO.maxlist = _ECHO.maxtuple = _ECHO.maxdict = _ECHO.maxset = 4
_ECHO.maxlevel = 2


def echo(value: Any) -> str:
    """A bounded ``repr`` for error messages: work and length do not grow with the value.

    >>> echo("x" * 1000)[:20], len(echo("x" * 1000)) <= MAX_ECHO_CHARS
    ("'xxxxxxxxxxxxxxxxxxx", True)
    >>> echo(10**5000)
    'an integer of 16610 bits'
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"  # str() of a huge int is slow (and limited)
    text = _ECHO.repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 3] + "..."


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing", "value_error", "extra_forbidden") and "input" in err:
            message += f" (got {echo(err['input'])})"
        problems.append((_path(tuple(err["loc"])), _cap(message)))
    return problems


def _cap(message: str, limit: int = 400) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def check_document_limits(data: Any, source: str | None = None) -> None:
    """Refuse a document nested deeper than ``MAX_DEPTH`` or holding more than ``MAX_NODES`` values
    once aliases are expanded; linear in the document's *stored* size (shared parts counted once
    per reference, by memo), iterative (no recursion to overflow)."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    # post-order walk: (node, depth, path, children visited?)
    stack: list[tuple[Any, int, str, bool]] = [(data, 1, "", False)]
    while stack:
        node, depth, where, done = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise SpecError([(where, f"nested deeper than {MAX_DEPTH} levels")], source)
        key = id(node)
        if done:
            children = list(node.values() if isinstance(node, dict) else node)
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            height = 1 + max((heights.get(id(c), 0) for c in children), default=0)
            if total > MAX_NODES:
                raise SpecError(
                    [(where, f"more than {MAX_NODES:,} values once YAML aliases are expanded")], source
                )
            sizes[key], heights[key] = total, height
            continue
        if key in sizes:
            if depth - 1 + heights[key] > MAX_DEPTH:  # a shared part reused deeper down
                raise SpecError([(where, f"nested deeper than {MAX_DEPTH} levels")], source)
            continue
        stack.append((node, depth, where, True))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, child in items:
            if isinstance(child, dict | list):
                sub = f"{where}[{k}]" if isinstance(k, int) else (f"{where}.{k}" if where else str(k))
                stack.append((child, depth + 1, sub, False))


def parse_spec(data: Mapping[str, Any], source: str | None = None) -> FlowSpec:
    """Validate a spec document (already parsed from YAML/JSON).

    What this accepts compiles: after the models' own checks, the operator cores and device plans
    are built once (:func:`dataflows.compiler.check_compiles`), so a spec the compiler would refuse
    at start is refused here, with the field path.
    """
    if not isinstance(data, Mapping):
        raise SpecError([("", f"a spec is a mapping, got {type(data).__name__}")], source)
    check_document_limits(data, source)
    version = data.get("version")
    if version != SPEC_VERSION:
        raise SpecError(
            [("version", f"unsupported spec version {echo(version)}; this build reads 1")], source
        )
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problems(exc), source) from None
    from dataflows.compiler import check_compiles  # the compiler imports this module

    problems = check_compiles(spec)
    if problems:
        raise SpecError([(path, _cap(msg)) for path, msg in problems], source)
    return spec


class _SpecLoader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc,name-defined]
    """The safe loader, refusing duplicate keys (YAML takes the last one silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping names it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key {echo(key)} (first on line {first.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _json_object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {echo(key)}")
        out[key] = value
    return out


def parse_document(text: str, kind: Literal["yaml", "json"], source: str | None = None) -> Any:
    """Parse a spec document's text, within the limits above; :class:`SpecError` naming ``source``.

    Duplicate keys are refused, YAML aliases may not expand beyond ``MAX_NODES`` values, nesting
    beyond ``MAX_DEPTH`` levels is refused before the (recursive) composer sees it.
    """
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(
            [("", f"the document is {len(text):,} characters; the limit is {MAX_SPEC_BYTES:,}")], source
        )
    label = kind.upper()
    try:
        if kind == "json":
            return json.loads(text, object_pairs_hook=_json_object_without_duplicates)
        _check_yaml_depth(text, source)
        return yaml.load(text, Loader=_SpecLoader)
    except SpecError:
        raise
    except yaml.MarkedYAMLError as exc:
        raise SpecError([("", _cap(f"not valid YAML: {_yaml_problem(exc)}"))], source) from None
    except (yaml.YAMLError, ValueError) as exc:  # JSONDecodeError is a ValueError; so are huge ints
        raise SpecError([("", _cap(f"not valid {label}: {exc}"))], source) from None
    except RecursionError:
        raise SpecError([("", f"not valid {label}: nested too deeply")], source) from None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """``line 3, column 1: duplicate key 'id' (first on line 2)`` instead of PyYAML's five lines."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = exc.problem or exc.context or "unreadable"
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    return f"{where}{problem}{context}"


def _check_yaml_depth(text: str, source: str | None) -> None:
    """Walk the YAML event stream (iterative, cheap) and refuse deep nesting before composing."""
    depth = 0
    for event in yaml.parse(text, Loader=_SpecLoader):  # type: ignore[arg-type]
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark is not None else "?"
                raise SpecError([("", f"nested deeper than {MAX_DEPTH} levels (line {line})")], source)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_spec(path: str | Path) -> FlowSpec:
    """Read and validate a YAML or JSON spec file (at most ``MAX_SPEC_BYTES``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([("", f"the file is {size:,} bytes; the limit is {MAX_SPEC_BYTES:,}")], str(path))
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([("", f"cannot read spec file: {exc.strerror}")], str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [("", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} (a binary file?)")],
            str(path),
        ) from None
    data = parse_document(text, "json" if path.suffix == ".json" else "yaml", str(path))
    return parse_spec(data, str(path))


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of flow spec v1."""
    schema = FlowSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://nexus-edge.dev/schemas/flow-spec-v1.json"
    schema["title"] = "NEXUS Edge flow spec v1"
    return schema


DEMO_SPEC = Path(__file__).parent / "specs" / "demo.yaml"
SCHEMA_FILE = Path(__file__).parent / "schema" / "flow-spec-v1.json"
