"""Bare baselines and sink capacities, against the same services and with the same rows and messages.

- :func:`copy_baseline`: binary COPY of the rows into ``nexus_points`` in 50,000-row transactions — the
  historian's physical limit; :func:`writer_capacity`: the same rows through
  :class:`~connectors.historian.writer.HistorianWriter` (and once more, as a replay, to price idempotency).
- :func:`paho_baseline`: a bare paho loop publishing the ready messages; :func:`publisher_capacity`: the
  same batches through :class:`~connectors.mqtt.publisher.UnsPublisher` (formatting included).
- :func:`modbus_baseline`: a bare pymodbus read loop of every device's registers, all devices at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pymodbus.client import AsyncModbusTcpClient

from bench.load import Load
from connectors.historian.config import INTERVAL_SECONDS, HistorianConfig
from connectors.historian.schema import PG_EPOCH_US, ensure_partitions, ensure_schema, upsert_tags
from connectors.historian.writer import COPY_POINTS, HistorianWriter, encode_copy_binary
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.publisher import UnsPublisher, _encode_tags, format_batch
from connectors.mqtt.url import parse_mqtt_url
from connectors.sparkplug.edge_node import SparkplugEdgeNode
from core.batch import PointBatch
from core.tags import TagInfo
from dataflows.compiler import sparkplug_plan
from dataflows.spec import FlowSpec, SparkplugNode

COPY_ROWS = 50_000
"""Rows per COPY transaction: the writer's default ``batch_rows``."""


def shifted(batches: Sequence[PointBatch], shift_ns: int) -> list[PointBatch]:
    return [
        PointBatch(b.device_id, b.ts_ns + shift_ns, b.tag_ids, b.values, b.quality, b.text) for b in batches
    ]


def _rate(count: int, seconds: float) -> dict[str, float]:
    return {
        "count": count,
        "seconds": round(seconds, 4),
        "per_s": round(count / seconds, 1) if seconds else 0.0,
    }


def prepare_historian(url: str, tags: Mapping[int, TagInfo], batches: Sequence[PointBatch]) -> None:
    """Schema, tag rows and the partitions the batches need (so no stage pays for creating them)."""
    config = HistorianConfig(url=url)
    interval_us = INTERVAL_SECONDS[config.partition_interval] * 1_000_000
    with psycopg.connect(url, autocommit=True) as conn:
        mode = ensure_schema(conn, config)
        upsert_tags(conn, tags.values())
        if mode == "native":
            starts = {int(b.ts_ns.min()) // 1000 // interval_us * interval_us for b in batches}
            starts |= {int(b.ts_ns.max()) // 1000 // interval_us * interval_us for b in batches}
            ensure_partitions(conn, sorted(starts), interval_us // 1_000_000)


def copy_baseline(url: str, batches: Sequence[PointBatch]) -> dict[str, float]:
    """Bare binary COPY (the writer's encoder) of ``batches`` in ``COPY_ROWS``-row transactions."""
    import numpy as np

    chunks = []
    for start in range(0, len(batches), max(1, COPY_ROWS // max(1, len(batches[0])))):
        part = batches[start : start + max(1, COPY_ROWS // max(1, len(batches[0])))]
        chunks.append(
            (
                np.concatenate([b.ts_ns for b in part]) // 1000 - PG_EPOCH_US,
                np.concatenate([b.tag_ids for b in part]),
                np.concatenate([b.values for b in part]),
                np.concatenate([b.quality for b in part]),
            )
        )
    rows = sum(len(c[1]) for c in chunks)
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for t, ids, v, q in chunks:
            payload = encode_copy_binary(t, ids, v, q)
            with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_POINTS) as copy:
                copy.write(payload)
        seconds = time.perf_counter() - t0
    return _rate(rows, seconds)


def writer_capacity(
    url: str, tags: Mapping[int, TagInfo], batches: Sequence[PointBatch], *, replay: bool = True
) -> dict[str, Any]:
    """The same rows through the HistorianWriter (first write, then a full replay of them)."""
    rows = sum(len(b) for b in batches)
    out: dict[str, Any] = {}
    with HistorianWriter(HistorianConfig(url=url), tags, name="bench") as writer:
        # connected, schema checked and the tags registered before the clock starts (the writer
        # connects at its first write; a flush with nothing accepted returns at once)
        writer.write(shifted(batches[:1], -3600 * 10**9)[0])
        writer.flush(60)
        t0 = time.perf_counter()
        for b in batches:
            writer.write(b)
        writer.flush(300)
        out["write"] = _rate(rows, time.perf_counter() - t0)
        if replay:
            t0 = time.perf_counter()
            for b in batches:
                writer.write(b)
            writer.flush(300)
            out["replay"] = _rate(rows, time.perf_counter() - t0)
            out["replay"]["duplicates_skipped"] = writer.stats()["duplicates_skipped"]
    return out


def messages_for(batches: Sequence[PointBatch], tags: Mapping[int, TagInfo]) -> list[tuple[str, bytes]]:
    encoded = _encode_tags(tags)
    out: list[tuple[str, bytes]] = []
    for b in batches:
        out.extend(format_batch(b, encoded)[0])
    return out


def paho_baseline(
    url: str, messages: Sequence[tuple[str, bytes]], qos: int, max_inflight: int
) -> dict[str, float]:
    """A bare paho client publishing ready messages as fast as it can; timed until the last is acked."""
    broker = parse_mqtt_url(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-paho-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    n = len(messages)
    acked = [0]
    cond = threading.Condition()
    window = 20_000  # outstanding messages: paho's message ids wrap at 65,535

    def on_publish(*_: object) -> None:
        with cond:
            acked[0] += 1
            if acked[0] >= n or acked[0] % 1000 == 0:
                cond.notify_all()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        time.sleep(0.2)
        publish = client.publish
        t0 = time.perf_counter()
        for i, (topic, payload) in enumerate(messages):
            if i - acked[0] >= window:
                with cond:
                    cond.wait_for(lambda i=i: i - acked[0] < window, 60)  # type: ignore[misc]
            publish(topic, payload, qos)
        with cond:
            cond.wait_for(lambda: acked[0] >= n, 300)
        seconds = time.perf_counter() - t0
    finally:
        client.disconnect()
        client.loop_stop()
    return _rate(acked[0], seconds)


def publisher_capacity(
    url: str, tags: Mapping[int, TagInfo], batches: Sequence[PointBatch], qos: int
) -> dict[str, float]:
    """The same batches through the UnsPublisher (formatting included), until every message is acked.

    Like the bare loop's window, the loop waits for room instead of letting the publisher spool what
    exceeds its outstanding bound; every message must come back acknowledged (``acked``), or it fails.
    """
    config = MqttSinkConfig(url=url, qos=qos)  # type: ignore[arg-type]
    with UnsPublisher(config, tags) as pub:
        t0 = time.perf_counter()
        for b in batches:
            pub.wait_for_room(len(b), 60)
            pub.publish_batch(b)
        pub.flush(300)
        if not pub.wait_drained(300):
            raise RuntimeError("UNS publisher bench: the spool did not drain")
        pub.flush(300)
        seconds = time.perf_counter() - t0
        sent = pub.acked
        expected = sum(len(b) for b in batches)
        if sent != expected or pub.lost:
            raise RuntimeError(f"UNS publisher bench: {sent} of {expected} acknowledged, {pub.lost} lost")
    out = _rate(sent, seconds)
    out["max_inflight"] = config.max_inflight
    return out


def sparkplug_capacity(
    url: str, spec: FlowSpec, warmup: Sequence[PointBatch], batches: Sequence[PointBatch]
) -> dict[str, float]:
    """The batches as DDATA through a :class:`SparkplugEdgeNode` (births first, with ``warmup``),
    until paho wrote every message (as :func:`publisher_capacity` waits at QoS 0)."""
    node_spec = next(s for s in spec.sinks if isinstance(s, SparkplugNode))
    node = SparkplugEdgeNode(sparkplug_plan(spec, node_spec, url)).start()
    try:
        if not node.wait_connected(30):
            raise RuntimeError("sparkplug bench: the edge node did not connect")
        for b in warmup:
            node.publish_batch(b)  # every device's first batch: NBIRTH and the DBIRTHs
        if not node.wait_online(30):
            raise RuntimeError("sparkplug bench: the edge node did not come online")
        node.flush(60)
        before = node.stats()["ddata_metrics"]
        t0 = time.perf_counter()
        for b in batches:
            node.publish_batch(b)
        if not node.flush(300):
            raise RuntimeError("sparkplug bench: messages not written within 300 s")
        seconds = time.perf_counter() - t0
        metrics = node.stats()["ddata_metrics"] - before
    finally:
        node.close()
    out = _rate(metrics, seconds)
    out["messages"] = float(len(batches))
    return out


async def _modbus(load: Load, ports: Sequence[int], seconds: float) -> tuple[int, float]:
    clients = []
    for i in range(load.devices):
        port_index, unit = load.placement(i)
        client = AsyncModbusTcpClient("127.0.0.1", port=ports[port_index], retries=0, timeout=2)
        await client.connect()
        clients.append((client, unit))
    reads = 0
    t0 = time.perf_counter()
    stop_at = t0 + seconds

    async def loop(client: AsyncModbusTcpClient, unit: int) -> None:
        nonlocal reads
        while time.perf_counter() < stop_at:
            rr = await client.read_holding_registers(0, count=load.tags, device_id=unit)
            if not rr.isError():
                reads += 1

    await asyncio.gather(*(loop(c, u) for c, u in clients))
    elapsed = time.perf_counter() - t0
    for c, _ in clients:
        c.close()
    return reads, elapsed


def modbus_baseline(load: Load, ports: Sequence[int], seconds: float) -> dict[str, float]:
    """Bare pymodbus: every device read back to back (one connection each, one event loop)."""
    reads, elapsed = asyncio.run(_modbus(load, ports, seconds))
    out = _rate(reads * load.tags, elapsed)
    out["reads_per_s"] = round(reads / elapsed, 1)
    return out
