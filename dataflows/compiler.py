"""Compile a flow spec into a Bytewax dataflow.

Step ids come from the spec: the flow id, ``devices`` for the source, and each node's id, so
they stay stable across edits and Bytewax recovery resumes the state of unchanged steps.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream
from bytewax.outputs import Sink
from pydantic import ValidationError

from connectors.commands import WritableTag, WriteDataType
from connectors.derived import DerivedSink, DerivedTargets
from connectors.devices import DevicePlan, DeviceSource
from connectors.historian.config import HistorianConfig
from connectors.historian.sink import HistorianSink
from connectors.modbus.config import ModbusDevicePlan
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.sink import UnsSink
from connectors.mqtt.source import MqttSource
from connectors.mqtt.source_config import MqttSourceConfig, MqttSubscription, MqttTagMapping
from connectors.opcua.config import OpcUaDevicePlan
from connectors.polling import AdaptivePolling, ConfigRegistry, WriteRegistry
from connectors.s7.config import S7DevicePlan
from connectors.sparkplug.config import DataType, EdgeNodePlan, MetricDef
from connectors.sparkplug.config import DevicePlan as SparkplugDevicePlan
from connectors.sparkplug.edge_node import CommandSubmitter
from connectors.sparkplug.sink import SparkplugSink
from core.batch import PointBatch, tag_id_for
from core.device_config import DeviceConfig
from core.timestamps import DEFAULT_WINDOW, TimestampWindow
from core.uns import uns_topic
from dataflows.routing import WorkerLocalSource, worker_local_input
from dataflows.spec import (
    AnomalyNode,
    CalculatedTagSpec,
    CalculateNode,
    CompressNode,
    DeadbandNode,
    DeviceSpec,
    FlowSpec,
    HistorianNode,
    ModbusDeviceSpec,
    ModbusTagSpec,
    MqttDeviceSpec,
    MqttUnsNode,
    NormalizeNode,
    OeeNode,
    OpcUaDeviceSpec,
    S7DeviceSpec,
    S7TagSpec,
    SinkNode,
    SparkplugNode,
    TagBase,
    WindowNode,
)
from dataflows.status import FlowStatus
from operators import bytewax_ops
from operators.analytics_bytewax import calculated_tags, oee, swinging_door
from operators.anomaly import AnomalyDetector, MlCheck, RangeCheck, RateCheck, StuckCheck, TagChecks
from operators.anomaly_bytewax import detect_anomalies
from operators.bytewax_ops import HotNormalizer
from operators.chain import OperatorChain
from operators.chain_bytewax import HOT_KINDS, Picked, chain_to_sinks, output_picked
from operators.deadband import Deadband, DeadbandParams
from operators.expressions import CalculatedTags
from operators.normalize import NormalizeParams, Normalizer
from operators.oee import OeeCalculator, OeeMachine, Shift, ShiftCalendar
from operators.swinging_door import SwingingDoor, SwingingDoorParams
from operators.units import conversion
from operators.window import WindowAggregator, parse_window
from operators.window_bytewax import tumbling_aggregate

SOURCE_STEP = "devices"
MQTT_SOURCE_STEP = "mqtt_devices"
DERIVED_STEP = "derived"
"""Sink step of what the taps derive (aggregates, alerts, OEE); override it in ``Runtime.sinks``."""
SINKS_STEP = "_sinks"
"""The one output step of a fused chain's sinks (:func:`_chain`); no node id starts with ``_``."""

X = TypeVar("X")
DeviceSpecAny = ModbusDeviceSpec | OpcUaDeviceSpec | S7DeviceSpec | MqttDeviceSpec


@dataclass
class Runtime:
    """What a compiled flow needs from outside the spec: service URLs and overrides for tests."""

    database_url: str | None = None
    mqtt_url: str | None = None
    source: Source[PointBatch] | None = None
    """Replace the device source (tests feed batches from memory); a :class:`WorkerLocalSource` is
    read as the compiled device source is (each worker polls the devices it routes to)."""
    sinks: Mapping[str, Sink[Any]] = field(default_factory=dict)
    """Replace sinks by node id (tests capture what a sink would receive)."""
    stop_event: threading.Event | None = None
    """Set to drain the sources and stop the flow gracefully."""
    status: FlowStatus | None = None
    """Counts what the source read, for the status topic."""
    write_registry: WriteRegistry | None = None
    """The process's command router: polled devices register so write commands reach them."""
    spool_dir: Path | None = None
    """Base folder of the sinks' disk spools (``{spool_dir}/{flow id}/{sink id}/w{worker}``); ``None``:
    each sink spools to a temporary folder that does not survive the process."""
    config_registry: ConfigRegistry | None = None
    """The process's config listener: polled devices register so hot config changes reach them."""
    version: int = 0
    """The flow version the process starts with (``NEXUS_FLOW_VERSION``): swapped parameters in a
    resumed snapshot are used only when newer."""


def device_plans(spec: FlowSpec) -> list[DevicePlan]:
    """The polling plan of every device, in spec order."""
    window = spec.timestamps.window()
    return [p for d in spec.devices if (p := device_plan(d, window)) is not None]


def device_plan(d: DeviceSpecAny, timestamps: TimestampWindow = DEFAULT_WINDOW) -> DevicePlan | None:
    """The polling plan of one device; ``None`` for an MQTT device (subscribed, see mqtt_source_config).

    ``timestamps``: the accepted window of the device's own timestamps (OPC UA source timestamps;
    Modbus and S7 points are stamped with the poll time)."""
    if isinstance(d, MqttDeviceSpec):
        return None
    if isinstance(d, ModbusDeviceSpec):
        return ModbusDevicePlan(
            d.id,
            d.connection,
            d.poll_interval_s,
            tuple((tag_id_for(d.id, t.name), t.modbus_address()) for t in d.tags),
        )
    if isinstance(d, OpcUaDeviceSpec):
        return OpcUaDevicePlan(
            d.id,
            d.connection,
            d.poll_interval_s,
            tuple((tag_id_for(d.id, t.name), t.opcua_address()) for t in d.tags),
            writable=frozenset(tag_id_for(d.id, t.name) for t in d.tags if t.access == "read_write"),
            timestamps=timestamps,
        )
    return S7DevicePlan(
        d.id,
        d.connection,
        d.poll_interval_s,
        tuple((tag_id_for(d.id, t.name), t.s7_address()) for t in d.tags),
    )


_PLACEHOLDER_MQTT = "mqtt://127.0.0.1"
_PLACEHOLDER_DB = "postgresql://127.0.0.1/nexus"


def check_compiles(spec: FlowSpec) -> list[tuple[str, str]]:
    """Build every part :func:`compile_flow` builds from the spec alone (device plans, the MQTT
    subscriptions, write checks, each operator's core, the sinks' settings) and return what any of
    them refused, as ``(field path, message)``. No I/O: service URLs are placeholders.

    :func:`dataflows.spec.parse_spec` calls this, so the validator refuses whatever the compiler
    would: "what the validator accepts must run".
    """
    problems: list[tuple[str, str]] = []

    def attempt(path: str, build: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        try:
            build(*args, **kwargs)
        except (ValueError, TypeError, ArithmeticError) as exc:  # pydantic's ValidationError is a ValueError
            problems.append((path, _exc_message(exc)))

    for i, d in enumerate(spec.devices):
        attempt(f"devices[{i}]", device_plan, d, spec.timestamps.window())
    attempt("devices", mqtt_source_config, spec, _PLACEHOLDER_MQTT)
    attempt("devices", writable_tags, spec)
    for i, node in enumerate(spec.operators):
        where = f"operators[{i}]"
        if isinstance(node, NormalizeNode):
            attempt(where, normalizer_for, spec)
        elif isinstance(node, DeadbandNode):
            attempt(where, deadband_for, spec)
        elif isinstance(node, CompressNode):
            attempt(where, swinging_door_for, spec)
        elif isinstance(node, CalculateNode):
            attempt(where, calculated_for, spec)
        elif isinstance(node, WindowNode):
            attempt(where, _window_aggregator, node)
        elif isinstance(node, AnomalyNode):
            attempt(where, anomaly_detector_for, spec)
        else:
            attempt(where, oee_calculator_for, spec, node)
    for i, sink in enumerate(spec.sinks):
        if isinstance(sink, MqttUnsNode):
            attempt(f"sinks[{i}]", MqttSinkConfig, url=_PLACEHOLDER_MQTT, qos=sink.qos, retain=sink.retain)
        elif isinstance(sink, SparkplugNode):
            attempt(f"sinks[{i}]", sparkplug_plan, spec, sink, _PLACEHOLDER_MQTT)
        else:
            attempt(
                f"sinks[{i}]",
                HistorianConfig,
                url=_PLACEHOLDER_DB,
                batch_rows=sink.batch_rows,
                max_delay_s=sink.max_delay_s,
                spool_sync_interval_s=sink.spool_sync_interval_s,
            )
    return problems


def _window_aggregator(node: WindowNode) -> WindowAggregator:
    return WindowAggregator(
        [parse_window(w) for w in node.windows], lateness_s=node.lateness_s, max_future_s=node.max_future_s
    )


def _exc_message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors(include_url=False, include_input=False)
        )
    return str(exc)


def device_config_for(spec: FlowSpec, device_id: str, version: int) -> DeviceConfig:
    """The in-band config item of one device of ``spec``: its tags and, per operator kind, the
    parameters of its tags alone (built by the same functions as the whole flow's)."""
    device = next(d for d in spec.devices if d.id == device_id)
    one = spec.model_copy(update={"devices": [device]})  # already validated as part of `spec`
    return DeviceConfig(
        device_id=device_id,
        version=version,
        tags=one.tag_infos(),
        params={
            "normalize": dict(normalizer_for(one).params),
            "deadband": dict(deadband_for(one).params),
            "swinging_door": dict(swinging_door_for(one).params),
            "calculate": calculated_for(one).get(device_id),
            "anomaly": dict(anomaly_detector_for(one).checks),
        },
    )


def device_plan_for(spec: FlowSpec, device_id: str) -> DevicePlan | None:
    """The polling plan of one device (``None`` for an MQTT device: it is subscribed)."""
    for plan in device_plans(spec):
        if plan.device_id == device_id:
            return plan
    return None


def adaptive_for(device: DeviceSpec) -> AdaptivePolling | None:
    if isinstance(device, MqttDeviceSpec) or device.adaptive is None:
        return None
    return AdaptivePolling(device.adaptive.min_interval_s, device.adaptive.max_interval_s)


def adaptive_polling(spec: FlowSpec) -> dict[str, AdaptivePolling]:
    """The adaptive polling settings of the devices that have them, by device id."""
    return {
        d.id: AdaptivePolling(d.adaptive.min_interval_s, d.adaptive.max_interval_s)
        for d in spec.devices
        if not isinstance(d, MqttDeviceSpec) and d.adaptive is not None
    }


def mqtt_source_config(spec: FlowSpec, default_url: str | None) -> MqttSourceConfig | None:
    """The subscriptions of the spec's MQTT devices (one per device and topic), or ``None``."""
    devices = [d for d in spec.devices if isinstance(d, MqttDeviceSpec)]
    if not devices:
        return None
    conn = devices[0].connection
    url = conn.url or default_url
    if not url:
        raise ValueError(
            f"MQTT device {devices[0].id!r} needs a broker: set its connection.url or NEXUS_MQTT_URL"
        )
    subscriptions = []
    for d in devices:
        by_topic: dict[str, list[MqttTagMapping]] = {}
        for t in d.tags:
            mapping = MqttTagMapping.model_validate(t.model_dump(include=set(MqttTagMapping.model_fields)))
            by_topic.setdefault(t.topic, []).append(mapping)
        subscriptions += [
            MqttSubscription(topic_filter=topic, device_id=d.id, tags=maps)
            for topic, maps in by_topic.items()
        ]
    return MqttSourceConfig(
        url=url,
        client_id=conn.client_id,
        qos=conn.qos,
        clean_session=conn.clean_session,
        subscriptions=subscriptions,
        max_past_s=spec.timestamps.max_past_s,
        max_clock_skew_s=spec.timestamps.max_future_s,
    )


_S7_WRITE_TYPES: dict[str, WriteDataType] = {
    "BOOL": "bool",
    "BYTE": "uint8",
    "WORD": "uint16",
    "INT": "int16",
    "DWORD": "uint32",
    "DINT": "int32",
    "REAL": "float32",
    "LREAL": "float64",
    "STRING": "string",
}


def writable_tags(spec: FlowSpec) -> dict[tuple[str, str], WritableTag]:
    """What the command router checks before a write reaches a device.

    Values in commands are in the published unit: the tag's scale, offset and unit conversion are
    inverted, and the clamp limits (converted the same way) bound what may be written.
    """
    out: dict[tuple[str, str], WritableTag] = {}
    for d in spec.devices:
        if isinstance(d, MqttDeviceSpec):
            continue  # nothing to write to
        for t in d.tags:
            a, b = _conversion(t)
            max_length = None
            data_type: WriteDataType
            if isinstance(t, ModbusTagSpec):
                data_type = t.data_type
                max_length = t.length * 2 if t.length else None
            elif isinstance(t, S7TagSpec):
                data_type = _S7_WRITE_TYPES[t.data_type]
                max_length = t.length
            else:
                data_type = "float64"  # an OPC UA node's type is checked by the client against the server
            clamp = t.clamp
            out[(d.id, t.name)] = WritableTag(
                device_id=d.id,
                tag_name=t.name,
                tag_id=tag_id_for(d.id, t.name),
                data_type=data_type,
                writable=t.access == "read_write",
                low=None if clamp is None or clamp.low is None else a * clamp.low + b,
                high=None if clamp is None or clamp.high is None else a * clamp.high + b,
                scale=a * t.scale,
                offset=a * t.offset + b,
                max_length=max_length,
            )
    return out


_SPARKPLUG_TYPES: dict[str, DataType] = {
    "bool": DataType.Boolean,
    "bit": DataType.Boolean,
    "int8": DataType.Int8,
    "uint8": DataType.UInt8,
    "int16": DataType.Int16,
    "uint16": DataType.UInt16,
    "int32": DataType.Int32,
    "uint32": DataType.UInt32,
    "int64": DataType.Int64,
    "uint64": DataType.UInt64,
    "float32": DataType.Float,
    "float64": DataType.Double,
    "string": DataType.String,
}


def sparkplug_datatype(tag: TagBase | CalculatedTagSpec) -> DataType:
    """The metric datatype of a tag: its register type while the value is published unscaled;
    Double once scale, offset or a unit conversion make it a real number (and for OPC UA, MQTT and
    calculated tags, whose values are numbers of any kind). Booleans and strings stay what they are."""
    if isinstance(tag, ModbusTagSpec):
        kind: str = tag.data_type
    elif isinstance(tag, S7TagSpec):
        kind = _S7_WRITE_TYPES[tag.data_type]
    else:
        return DataType.Double
    datatype = _SPARKPLUG_TYPES[kind]
    if datatype in (DataType.Boolean, DataType.String):
        return datatype
    if tag.scale != 1.0 or tag.offset != 0.0 or tag.convert_to:
        return DataType.Double
    return datatype


def sparkplug_plan(
    spec: FlowSpec, node: SparkplugNode, url: str, spool_dir: str | None = None
) -> EdgeNodePlan:
    """The edge node of a ``sparkplug_b`` node: devices in spec order, metrics in tag order.

    ``spool_dir``: where the backlog goes when the node does not name a folder itself (the
    platform's spool folder); neither: a bounded in-memory backlog."""
    devices = []
    for d in spec.devices:
        metrics = tuple(
            MetricDef(
                tag_id=tag_id_for(d.id, t.name),
                device_id=d.id,
                name=node.metric_name(d.id, t.name),
                datatype=sparkplug_datatype(t),
                unit=t.eng_unit,
                writable=getattr(t, "access", "read") == "read_write",
                tag_name=t.name,
            )
            for t in d.all_tags()
        )
        devices.append(
            SparkplugDevicePlan(
                device_id=d.id,
                sparkplug_id=node.sparkplug_device_id(d),
                metrics=metrics,
                death_after_failures=getattr(d.connection, "breaker_failures", 3),
                death_after_s=getattr(d.connection, "breaker_failures", 3) * d.poll_interval_s,
            )
        )
    return EdgeNodePlan(
        url=url,
        group_id=node.group_id,
        edge_node_id=node.edge_node_id,
        devices=tuple(devices),
        primary_host_id=node.primary_host_id,
        report_by_exception=node.report_by_exception,
        backlog_points=node.backlog_points,
        spool_dir=node.spool_dir or spool_dir,
    )


def _conversion(tag: TagBase) -> tuple[float, float]:
    return conversion(tag.unit, tag.convert_to) if tag.convert_to else (1.0, 0.0)


def normalizer_for(spec: FlowSpec) -> Normalizer:
    """Scale, offset and conversion per tag; clamp limits are given in the tag's `unit` and
    converted with the value (every unit conversion is increasing, so the order holds)."""
    params: dict[int, NormalizeParams] = {}
    for d in spec.devices:
        for t in d.tags:
            a, b = _conversion(t)
            low = t.clamp.low if t.clamp else None
            high = t.clamp.high if t.clamp else None
            params[tag_id_for(d.id, t.name)] = NormalizeParams(
                scale=t.scale,
                offset=t.offset,
                convert=(a, b),
                clamp_low=None if low is None else a * low + b,
                clamp_high=None if high is None else a * high + b,
            )
    return Normalizer(params)


def deadband_for(spec: FlowSpec) -> Deadband:
    """Deadbands per tag; bands and spans are in the tag's `unit` and scaled to the published unit."""
    params: dict[int, DeadbandParams] = {}
    for _, t, tag_id, a, _ in _tag_params(spec):
        band = t.deadband
        if band is None:
            continue
        span = band.span
        clamp = t.clamp if isinstance(t, TagBase) else None
        if span is None and clamp is not None and clamp.low is not None and clamp.high is not None:
            span = clamp.high - clamp.low
        params[tag_id] = DeadbandParams(
            absolute=None if band.absolute is None else band.absolute * a,
            percent=band.percent,
            span=None if span is None else span * a,
            heartbeat_s=band.heartbeat_s,
        )
    return Deadband(params)


def _tag_params(spec: FlowSpec) -> Iterable[tuple[str, TagBase | CalculatedTagSpec, int, float, float]]:
    """Every read and calculated tag with its id and the (a, b) that maps its `unit` to the published one."""
    for d in spec.devices:
        for t in d.all_tags():
            a, b = _conversion(t) if isinstance(t, TagBase) else (1.0, 0.0)
            yield d.id, t, tag_id_for(d.id, t.name), a, b


def swinging_door_for(spec: FlowSpec) -> SwingingDoor:
    params = {
        tag_id: SwingingDoorParams(
            deviation=t.compression.deviation * a, max_interval_s=t.compression.max_interval_s
        )
        for _, t, tag_id, a, _ in _tag_params(spec)
        if t.compression is not None
    }
    return SwingingDoor(params)


def calculated_for(spec: FlowSpec) -> dict[str, CalculatedTags]:
    return {
        d.id: CalculatedTags(
            d.id,
            {c.name: c.expression for c in d.calculated},
            {t.name: tag_id_for(d.id, t.name) for t in d.tags},
        )
        for d in spec.devices
        if d.calculated
    }


def anomaly_detector_for(spec: FlowSpec) -> AnomalyDetector:
    """Alarm limits are given in the tag's `unit` and converted with the value."""
    checks: dict[int, TagChecks] = {}
    for _, t, tag_id, a, b in _tag_params(spec):
        alarms = t.alarms
        if alarms is None:
            continue
        has_range = alarms.high is not None or alarms.low is not None
        checks[tag_id] = TagChecks(
            range=RangeCheck(
                high=None if alarms.high is None else a * alarms.high + b,
                low=None if alarms.low is None else a * alarms.low + b,
                hysteresis=alarms.hysteresis * a,
                severity=alarms.severity,
            )
            if has_range
            else None,
            stuck=StuckCheck(
                epsilon=alarms.stuck.epsilon * a,
                samples=alarms.stuck.samples,
                seconds=alarms.stuck.seconds,
                severity=alarms.stuck.severity,
            )
            if alarms.stuck
            else None,
            rate=RateCheck(max_per_s=alarms.rate.max_per_s * a, severity=alarms.rate.severity)
            if alarms.rate
            else None,
            ml=MlCheck(
                model=alarms.ml.model,
                threshold=alarms.ml.threshold,
                warm_up=alarms.ml.warm_up,
                seed=alarms.ml.seed,
                severity=alarms.ml.severity,
            )
            if alarms.ml
            else None,
        )
    return AnomalyDetector(checks)


def oee_calculator_for(spec: FlowSpec, node: OeeNode) -> OeeCalculator:
    machines = []
    for m in spec.machines:
        tag = lambda name, device=m.device: None if name is None else tag_id_for(device, name)  # noqa: E731
        machines.append(
            OeeMachine(
                machine=m.id,
                device_id=m.device,
                state_tag=tag_id_for(m.device, m.state_tag),
                state_map={
                    value: state
                    if isinstance(state, str)
                    else (state.category, state.reason or f"state {value}")
                    for value, state in m.states.items()
                },
                counter_tag=tag_id_for(m.device, m.counter_tag),
                ideal_cycle_s=m.ideal_cycle_s,
                good_tag=tag(m.good_tag),
                reject_tag=tag(m.reject_tag),
                counter_max=m.counter_max,
            )
        )
    calendar = (
        ShiftCalendar([Shift(s.name, s.start, s.end, s.days) for s in spec.shifts], tz=spec.shift_timezone)
        if spec.shifts
        else None
    )
    window_s = parse_window(node.window) if node.window else None
    return OeeCalculator(machines, window_s=window_s, calendar=calendar, max_hold_s=node.max_hold_s)


def machine_topics(spec: FlowSpec) -> dict[str, str]:
    devices = {d.id: d for d in spec.devices}
    return {m.id: uns_topic(devices[m.device].location.isa_path(), m.id) for m in spec.machines}


def _device_key(batch: PointBatch | DeviceConfig) -> str:
    return batch.device_id


def part_device(part_key: str) -> str:
    """The device id (the state key, see ``_device_key``) of a polling partition ``protocol:device``."""
    return part_key.split(":", 1)[1]


class _CountRead:
    """Counts what the source read (for the status topic) and passes the item on."""

    def __init__(self, status: FlowStatus) -> None:
        self.status = status

    def __call__(self, item: X) -> X:
        if isinstance(item, PointBatch):
            self.status.count_read(len(item))
        return item


def _unkey(item: tuple[str, X]) -> X:
    return item[1]


def _compose(fns: tuple[Callable[[Any], Any], ...]) -> Callable[[Any], Any]:
    if len(fns) == 1:
        return fns[0]

    def apply(item: Any) -> Any:
        for fn in fns:
            item = fn(item)
        return item

    return apply


class _Lazy:
    """A stream and the stateless per-item functions (normalize, the read counter) not yet given a
    step: they are fused into the one step that hands the stream on, keyed by device for a stateful
    step or plain for a sink (see :func:`compile_flow`).

    Each Bytewax step costs a Python call per activation and per item plus the engine's scheduling;
    with one poll per activation that is per poll. Fusing keeps the UNS-only flow at two steps after
    the source (normalize, the sink) instead of four (key, normalize, un-key, sink). Stateless steps
    hold no recovery state, so their ids may change; stateful steps keep theirs (node ids), and their
    key stays the device id that ``dataflows.routing`` routes on. Each form is built once, however
    many consumers take it (sinks share one un-keying step).
    """

    def __init__(self, stream: Stream[Any], *, keyed: bool, name: str) -> None:
        self._stream = stream
        self._is_keyed = keyed
        self._fns: tuple[Callable[[Any], Any], ...] = ()
        self.name = name
        """The step (node id) whose output this is; fused steps are named after it."""
        self._forms: dict[bool, Stream[Any]] = {keyed: stream}

    def then(self, fn: Callable[[Any], Any], name: str) -> _Lazy:
        """This stream with ``fn`` applied to every item (value, if keyed), not placed in a step yet.

        What is pending here is carried over, so this stream itself must not be consumed afterwards
        (it would apply it again): true of the read counter and normalize, the only stateless steps,
        which a spec has at most once each, before any node a sink could take its input from."""
        out = _Lazy(self._stream, keyed=self._is_keyed, name=name)
        out._fns = (*self._fns, fn)
        return out

    def keyed(self) -> KeyedStream[Any]:
        """The stream keyed by device id, the pending functions applied (one step at most)."""
        return self._form(True)

    def plain(self) -> Stream[Any]:
        """The stream's items without keys, the pending functions applied (one step at most)."""
        return self._form(False)

    def _form(self, keyed: bool) -> Stream[Any]:
        if self._fns:  # apply them once, in the form asked for first; the other form derives from it
            fn, key_in = _compose(self._fns), self._is_keyed
            step = _fused(fn, key_in=key_in, key_out=keyed)
            self._stream = op.flat_map_batch(self.name, self._stream, step)
            self._is_keyed, self._fns, self._forms = keyed, (), {keyed: self._stream}
        got = self._forms.get(keyed)
        if got is None:
            source = self._forms[not keyed]
            if keyed:
                got = op.key_on(f"{self.name}_key", source, _device_key)
            else:
                got = op.flat_map_batch(f"{self.name}_unkey", source, _unkey_all)
            self._forms[keyed] = got
        return got


def _fused(fn: Callable[[Any], Any], *, key_in: bool, key_out: bool) -> Callable[[list[Any]], Iterable[Any]]:
    """One step's batch function: ``fn`` over every item (or value), keyed or not on the way out."""
    if key_in and key_out:
        return lambda kvs: [(k, fn(v)) for k, v in kvs]
    if key_in:
        return lambda kvs: [fn(v) for _k, v in kvs]
    if key_out:

        def key_and_apply(items: list[Any]) -> list[tuple[str, Any]]:
            done = [fn(x) for x in items]
            return [(x.device_id, x) for x in done]

        return key_and_apply
    return lambda items: [fn(x) for x in items]


def _unkey_all(kvs: list[tuple[str, X]]) -> list[X]:
    return [v for _k, v in kvs]


def _stateful(step_id: str, stream: KeyedStream[Any]) -> _Lazy:
    return _Lazy(stream, keyed=True, name=step_id)


def _spool_dir(runtime: Runtime, spec: FlowSpec, sink_id: str) -> str | None:
    return None if runtime.spool_dir is None else str(runtime.spool_dir / spec.id / sink_id)


def _build_sink(node: SinkNode, spec: FlowSpec, runtime: Runtime) -> Sink[Any]:
    if node.id in runtime.sinks:
        return runtime.sinks[node.id]
    tags = spec.tag_infos()
    if isinstance(node, MqttUnsNode):
        if not runtime.mqtt_url:
            raise ValueError(f"sink {node.id!r} (mqtt_uns) needs a broker: set NEXUS_MQTT_URL")
        return UnsSink(
            MqttSinkConfig(
                url=runtime.mqtt_url,
                qos=node.qos,
                retain=node.retain,
                client_id=None,
                spool_dir=_spool_dir(runtime, spec, node.id),
            ),
            tags,
        )
    if isinstance(node, HistorianNode):
        if not runtime.database_url:
            raise ValueError(f"sink {node.id!r} (historian) needs a database: set NEXUS_DATABASE_URL")
        return HistorianSink(
            HistorianConfig(
                url=runtime.database_url,
                batch_rows=node.batch_rows,
                max_delay_s=node.max_delay_s,
                spool_sync_interval_s=node.spool_sync_interval_s,
                partition_past_s=_partition_past_s(spec),
                spool_dir=_spool_dir(runtime, spec, node.id),
            ),
            tags,
        )
    if isinstance(node, SparkplugNode):
        if not runtime.mqtt_url:
            raise ValueError(f"sink {node.id!r} (sparkplug_b) needs a broker: set NEXUS_MQTT_URL")
        submit = getattr(runtime.write_registry, "submit", None)
        commands: CommandSubmitter | None = runtime.write_registry if submit is not None else None  # type: ignore[assignment]
        base = getattr(
            runtime, "spool_dir", None
        )  # the platform's spool folder (NEXUS_SPOOL_DIR), once wired
        spool_dir = None if base is None else str(Path(base) / spec.id / node.id)
        return SparkplugSink(sparkplug_plan(spec, node, runtime.mqtt_url, spool_dir), commands)
    raise TypeError(f"unknown sink node {node!r}")


def _partition_past_s(spec: FlowSpec) -> float:
    """Partitions for every day the sources accept, plus a day (see HistorianConfig)."""
    return max(HistorianConfig.model_fields["partition_past_s"].default, spec.timestamps.max_past_s + 86_400)


def _derived_sink(spec: FlowSpec, runtime: Runtime) -> Sink[Any]:
    if DERIVED_STEP in runtime.sinks:
        return runtime.sinks[DERIVED_STEP]
    windows = [w for n in spec.operators if isinstance(n, WindowNode) for w in n.windows]
    return DerivedSink(
        DerivedTargets(
            mqtt=MqttSinkConfig(
                url=runtime.mqtt_url, spool_dir=_spool_dir(runtime, spec, f"{DERIVED_STEP}-uns")
            )
            if runtime.mqtt_url
            else None,
            spool_dir=_spool_dir(runtime, spec, f"{DERIVED_STEP}-db"),
            database_url=runtime.database_url,
            windows=windows,
            tags=spec.tag_infos(),
            machine_topics=machine_topics(spec),
        )
    )


def _sources(flow: Dataflow, spec: FlowSpec, runtime: Runtime) -> Stream[PointBatch]:
    """``devices`` polls Modbus, OPC UA and S7 devices; ``mqtt_devices`` subscribes to MQTT ones."""
    if isinstance(runtime.source, WorkerLocalSource):  # as compiled below, with the anchor step
        return worker_local_input(SOURCE_STEP, flow, runtime.source)
    if runtime.source is not None:
        return op.input(SOURCE_STEP, flow, runtime.source)
    streams: list[Stream[PointBatch]] = []
    plans = device_plans(spec)
    mqtt = mqtt_source_config(spec, runtime.mqtt_url)
    if plans:
        polled = DeviceSource(
            plans,
            stop_event=runtime.stop_event,
            write_registry=runtime.write_registry,
            config_registry=runtime.config_registry,
        )
        for device_id, adaptive in adaptive_polling(spec).items():
            polled.set_adaptive(device_id, adaptive)
        if runtime.status is not None:
            runtime.status.add_device_stats(polled.stats)
        # each worker polls the devices whose state Bytewax routes to it: batches stay in-process
        # (every keyed step is keyed by device); without MQTT devices no item crosses workers
        local = WorkerLocalSource(polled, part_device, sole_input=mqtt is None)
        streams.append(worker_local_input(SOURCE_STEP, flow, local))
    if mqtt is not None:
        source = MqttSource(
            mqtt,
            stop_event=runtime.stop_event,
            spool_dir=_spool_dir(runtime, spec, MQTT_SOURCE_STEP),
            config_registry=runtime.config_registry,
        )
        streams.append(op.input(MQTT_SOURCE_STEP, flow, source))
    return streams[0] if len(streams) == 1 else op.merge(f"{SOURCE_STEP}_merge", *streams)


ChainRun = tuple[NormalizeNode, DeadbandNode, WindowNode, AnomalyNode | None]


def fused_chain(spec: FlowSpec) -> ChainRun | None:
    """The spec's operators when they are exactly normalize → deadband → window [→ anomaly] and
    no sink reads the normalized points before the deadband; ``None`` otherwise.

    Such a flow runs the four operators as one keyed stateful step
    (:func:`operators.chain_bytewax.chain_to_sinks`) instead of one step each: the window and the
    anomaly nodes tap the deadband's output, so every other sink input is the chain's points.
    """
    ops = spec.operators
    kinds = [type(n) for n in ops]
    if kinds[:3] != [NormalizeNode, DeadbandNode, WindowNode] or kinds[3:] not in ([], [AnomalyNode]):
        return None
    if any(s.input == ops[0].id for s in spec.sinks):
        return None
    anomaly = ops[3] if len(ops) == 4 else None
    return ops[0], ops[1], ops[2], anomaly  # type: ignore[return-value]


def _chain(spec: FlowSpec, run: ChainRun, cur: _Lazy, runtime: Runtime) -> None:
    """The fused chain's step (see :func:`fused_chain`) and the flow's sinks: every sink takes the
    chain's points and config items, the derived sink its aggregates, alerts and config items, each
    picked from the step's output as the sink writes (:func:`~operators.chain_bytewax.output_picked`:
    no step per output stream); its late points go to the status count.

    Its state is keyed under the normalize, deadband and window node ids and the window labels, so
    adding or removing the anomaly node resumes the rest; a flow that was compiled step by step
    before starts this step fresh. Without an anomaly node the chain's detector has no checks and
    config items swap only normalize and deadband parameters, as the per-operator flow does.
    """
    norm, db, window, anomaly = run
    chain = OperatorChain(
        normalizer_for(spec),
        deadband_for(spec),
        _window_aggregator(window),
        anomaly_detector_for(spec) if anomaly is not None else AnomalyDetector({}),
    )
    status = runtime.status
    out = chain_to_sinks(
        f"{norm.id}_{db.id}_{window.id}",
        cur.keyed(),
        chain,
        count_late=None if status is None else functools.partial(status.count, "late_points"),
        start_version=runtime.version,
        kinds=HOT_KINDS if anomaly is not None else ("normalize", "deadband"),
    )
    sinks = [Picked(node.id, _build_sink(node, spec, runtime), out.points) for node in spec.sinks]
    output_picked(
        SINKS_STEP, out.stream, [*sinks, Picked(DERIVED_STEP, _derived_sink(spec, runtime), out.derived)]
    )


def compile_flow(spec: FlowSpec, runtime: Runtime) -> Dataflow:
    """Build the dataflow for ``spec``: source → operators in order → sinks.

    Operators either transform the points (normalize, calculate, deadband, swinging_door) or tap
    them (window, anomaly, oee: the points flow on unchanged, what they derive goes to the
    ``derived`` sink, which publishes it on the UNS and stores it in the historian). The common
    run normalize → deadband → window [→ anomaly] is one step (:func:`fused_chain`).
    """
    flow = Dataflow(spec.id)
    cur = _Lazy(_sources(flow, spec, runtime), keyed=False, name=SOURCE_STEP)
    status = runtime.status
    if status is not None:
        cur = cur.then(_CountRead(status), f"{SOURCE_STEP}_count")
    run = fused_chain(spec)
    if run is not None:
        _chain(spec, run, cur, runtime)
        return flow
    outputs: dict[str, _Lazy] = {}
    version = runtime.version
    derived: list[Stream[Any]] = []
    for node in spec.operators:
        if isinstance(node, NormalizeNode):  # stateless: fused into the step that hands the stream on
            cur = cur.then(HotNormalizer(normalizer_for(spec)), node.id)
        elif isinstance(node, DeadbandNode):
            cur = _stateful(node.id, bytewax_ops.deadband(node.id, cur.keyed(), deadband_for(spec), version))
        elif isinstance(node, CompressNode):
            cur = _stateful(node.id, swinging_door(node.id, cur.keyed(), swinging_door_for(spec), version))
        elif isinstance(node, CalculateNode):
            cur = _stateful(node.id, calculated_tags(node.id, cur.keyed(), calculated_for(spec), version))
        elif isinstance(node, WindowNode):
            aggregator = _window_aggregator(node)
            aggs, late = tumbling_aggregate(node.id, cur.keyed(), aggregator)
            derived.append(op.map(f"{node.id}_out", aggs, _unkey))
            if status is not None:
                op.inspect(
                    f"{node.id}_late_count", late, lambda _s, kv: status.count("late_points", len(kv[1]))
                )
        elif isinstance(node, AnomalyNode):
            derived.append(
                op.map(
                    f"{node.id}_out",
                    detect_anomalies(node.id, cur.keyed(), anomaly_detector_for(spec), version),
                    _unkey,
                )
            )
        elif isinstance(node, OeeNode):
            derived.append(
                op.map(f"{node.id}_out", oee(node.id, cur.keyed(), oee_calculator_for(spec, node)), _unkey)
            )
        outputs[node.id] = cur
    for sink_node in spec.sinks:
        chosen = outputs[sink_node.input] if sink_node.input else cur
        op.output(sink_node.id, chosen.plain(), _build_sink(sink_node, spec, runtime))
    if derived:
        merged = derived[0] if len(derived) == 1 else op.merge(f"{DERIVED_STEP}_merge", *derived)
        op.output(DERIVED_STEP, merged, _derived_sink(spec, runtime))
    return flow
