"""Compile a flow spec into a Bytewax dataflow.

Step ids come from the spec: the flow id, ``devices`` for the source, and each node's id, so
they stay stable across edits and Bytewax recovery resumes the state of unchanged steps.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors.historian.config import HistorianConfig
from connectors.historian.sink import HistorianSink
from connectors.modbus.config import ModbusDevicePlan
from connectors.modbus.source import ModbusSource
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.sink import UnsSink
from core.batch import PointBatch, tag_id_for
from core.settings import Settings
from dataflows.spec import (
    DeadbandNode,
    FlowSpec,
    HistorianNode,
    MqttUnsNode,
    NormalizeNode,
    SinkNode,
    TagSpec,
)
from dataflows.status import FlowStatus
from operators import bytewax_ops
from operators.deadband import Deadband, DeadbandParams
from operators.normalize import NormalizeParams, Normalizer
from operators.units import conversion

SOURCE_STEP = "devices"


@dataclass
class Runtime:
    """What a compiled flow needs from outside the spec: service URLs and overrides for tests."""

    database_url: str | None = None
    mqtt_url: str | None = None
    source: Source[PointBatch] | None = None
    """Replace the device source (tests feed batches from memory)."""
    sinks: Mapping[str, Sink[Any]] = field(default_factory=dict)
    """Replace sinks by node id (tests capture what a sink would receive)."""
    stop_event: threading.Event | None = None
    """Set to drain the sources and stop the flow gracefully."""
    status: FlowStatus | None = None
    """Counts what the source read, for the status topic."""

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Runtime:
        return cls(database_url=settings.database_url, mqtt_url=settings.mqtt_url, **overrides)


def device_plans(spec: FlowSpec) -> list[ModbusDevicePlan]:
    return [
        ModbusDevicePlan(
            device_id=d.id,
            connection=d.connection,
            poll_interval_s=d.poll_interval_s,
            tags=tuple((tag_id_for(d.id, t.name), t.modbus_address()) for t in d.tags),
        )
        for d in spec.devices
    ]


def _conversion(tag: TagSpec) -> tuple[float, float]:
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
    for d in spec.devices:
        for t in d.tags:
            band = t.deadband
            if band is None:
                continue
            a, _ = _conversion(t)
            span = band.span
            if span is None and t.clamp is not None and t.clamp.low is not None and t.clamp.high is not None:
                span = t.clamp.high - t.clamp.low
            params[tag_id_for(d.id, t.name)] = DeadbandParams(
                absolute=None if band.absolute is None else band.absolute * a,
                percent=band.percent,
                span=None if span is None else span * a,
                heartbeat_s=band.heartbeat_s,
            )
    return Deadband(params)


def _device_key(batch: PointBatch) -> str:
    return batch.device_id


def _unkey(item: tuple[str, PointBatch]) -> PointBatch:
    return item[1]


def _build_sink(node: SinkNode, spec: FlowSpec, runtime: Runtime) -> Sink[Any]:
    if node.id in runtime.sinks:
        return runtime.sinks[node.id]
    tags = spec.tag_infos()
    if isinstance(node, MqttUnsNode):
        if not runtime.mqtt_url:
            raise ValueError(f"sink {node.id!r} (mqtt_uns) needs a broker: set NEXUS_MQTT_URL")
        return UnsSink(
            MqttSinkConfig(url=runtime.mqtt_url, qos=node.qos, retain=node.retain, client_id=None), tags
        )
    if isinstance(node, HistorianNode):
        if not runtime.database_url:
            raise ValueError(f"sink {node.id!r} (historian) needs a database: set NEXUS_DATABASE_URL")
        return HistorianSink(
            HistorianConfig(
                url=runtime.database_url, batch_rows=node.batch_rows, max_delay_s=node.max_delay_s
            ),
            tags,
        )
    raise TypeError(f"unknown sink node {node!r}")


def compile_flow(spec: FlowSpec, runtime: Runtime) -> Dataflow:
    """Build the dataflow for ``spec``: source → operators in order → sinks."""
    flow = Dataflow(spec.id)
    source = runtime.source or ModbusSource(device_plans(spec), stop_event=runtime.stop_event)
    batches: Stream[PointBatch] = op.input(SOURCE_STEP, flow, source)
    if runtime.status is not None:
        status = runtime.status
        batches = op.inspect(f"{SOURCE_STEP}_count", batches, lambda _step, b: status.count_read(len(b)))
    outputs: dict[str, Stream[PointBatch]] = {}
    for node in spec.operators:
        if isinstance(node, NormalizeNode):
            batches = bytewax_ops.normalize(node.id, batches, normalizer_for(spec))
        elif isinstance(node, DeadbandNode):
            keyed = op.key_on(f"{node.id}_key", batches, _device_key)
            batches = op.map(
                f"{node.id}_unkey", bytewax_ops.deadband(node.id, keyed, deadband_for(spec)), _unkey
            )
        outputs[node.id] = batches
    for sink_node in spec.sinks:
        stream = outputs[sink_node.input] if sink_node.input else batches
        op.output(sink_node.id, stream, _build_sink(sink_node, spec, runtime))
    return flow
