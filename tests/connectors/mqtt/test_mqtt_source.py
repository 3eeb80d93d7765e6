"""The MQTT source against a real broker: payload decoding, qualities, wildcards, reconnects, Bytewax."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from pydantic import ValidationError

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.source import MqttSource, _MqttPartition, decode_timestamp
from connectors.mqtt.source_config import MqttSourceConfig, MqttSubscription, MqttTagMapping
from connectors.mqtt.url import parse_mqtt_url
from core.batch import PointBatch, tag_id_for
from core.quality import Quality
from nexus.embedded import EmbeddedBroker, MosquittoBroker, free_port

pytestmark = pytest.mark.integration

DEV = "dev-1"


def tid(name: str, device: str = DEV) -> int:
    return tag_id_for(device, name)


class Publisher:
    def __init__(self, url: str) -> None:
        self.client = make_client(url, unique_client_id("test-pub"))
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        u = parse_mqtt_url(url)
        self.client.connect(u.host, u.port)
        self.client.loop_start()
        assert connected.wait(10), "publisher did not connect"

    def send(self, topic: str, payload: str | bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def pub(mqtt_url: str) -> Iterator[Publisher]:
    p = Publisher(mqtt_url)
    yield p
    p.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def make_part(config: MqttSourceConfig, wait_for: Callable[..., Any]) -> _MqttPartition:
    source = MqttSource(config)
    (key,) = source.list_parts()
    part = source.build_part("in", key, None)
    wait_for(lambda: part.stats.subscribed, what="the subscription to be granted")
    return part


def collect(part: _MqttPartition, n: int, timeout: float = 10.0) -> PointBatch:
    """Drain the partition until ``n`` points arrived; all of them in one concatenated view."""
    batches: list[PointBatch] = []
    deadline = time.monotonic() + timeout
    while sum(len(b) for b in batches) < n:
        assert time.monotonic() < deadline, f"got {sum(len(b) for b in batches)} of {n} points"
        batches.extend(part.next_batch())
        time.sleep(0.01)
    text: dict[int, str] = {}
    offset = 0
    for b in batches:
        for i, s in (b.text or {}).items():
            text[offset + i] = s
        offset += len(b)
    return PointBatch(
        device_id=batches[0].device_id,
        ts_ns=np.concatenate([b.ts_ns for b in batches]),
        tag_ids=np.concatenate([b.tag_ids for b in batches]),
        values=np.concatenate([b.values for b in batches]),
        quality=np.concatenate([b.quality for b in batches]),
        text=text or None,
    )


def config(mqtt_url: str, *subs: MqttSubscription, **kw: Any) -> MqttSourceConfig:
    return MqttSourceConfig(url=mqtt_url, subscriptions=list(subs), **kw)


# -- configuration ---------------------------------------------------------------------------------


def test_config_refuses_bad_settings() -> None:
    sub = MqttSubscription(topic_filter="a/#", device_id=DEV, tags=[MqttTagMapping(name="x")])
    with pytest.raises(ValidationError, match="clean_session=False needs a fixed `client_id`"):
        MqttSourceConfig(url="mqtt://b", clean_session=False, subscriptions=[sub])
    with pytest.raises(ValidationError, match=r"path 'a\.\.b' is not valid"):
        MqttTagMapping(name="x", value_path="a..b")
    with pytest.raises(ValidationError, match="is not matched by the subscription's filter"):
        MqttSubscription(topic_filter="a/+", device_id=DEV, tags=[MqttTagMapping(name="x", topic="b/c")])
    with pytest.raises(ValidationError, match="maps no tag"):
        MqttSubscription(topic_filter="a/+", device_id=DEV)
    with pytest.raises(ValidationError, match="'#' must be a whole level"):
        MqttSubscription(topic_filter="a/b#", device_id=DEV, tags=[MqttTagMapping(name="x")])
    with pytest.raises(ValidationError) as exc:
        MqttSourceConfig(url="mqtt://u:s3cret@b:99999", subscriptions=[sub])
    assert "s3cret" not in str(exc.value)
    with pytest.raises(ValidationError, match="tag_from_level"):  # removed: the spec never used it
        MqttSubscription(topic_filter="a/#", device_id=DEV, tag_from_level=3, tags=[MqttTagMapping(name="x")])


def test_timestamp_magnitudes() -> None:
    t = 1_714_564_800
    ns = t * 10**9
    assert decode_timestamp(t) == ns
    assert decode_timestamp(t + 0.25) == ns + 250_000_000
    assert decode_timestamp(t * 1000 + 5) == ns + 5_000_000
    assert decode_timestamp(t * 10**6) == ns
    assert decode_timestamp(ns) == ns
    assert decode_timestamp("2024-05-01T14:00:00+02:00") == ns
    assert decode_timestamp("2024-05-01 12:00:00.5") == ns + 500_000_000
    for bad in ("yesterday", True, None, float("nan"), [1]):
        with pytest.raises(ValueError):
            decode_timestamp(bad)


# -- payloads --------------------------------------------------------------------------------------


def test_plain_payloads(mqtt_url: str, pub: Publisher, prefix: str, wait_for: Callable[..., Any]) -> None:
    sub = MqttSubscription(
        topic_filter=f"{prefix}/#",
        device_id=DEV,
        tags=[
            MqttTagMapping(name="temp", topic=f"{prefix}/temp"),
            MqttTagMapping(name="run", topic=f"{prefix}/run"),
            MqttTagMapping(name="mode", topic=f"{prefix}/mode", value_type="auto"),
            MqttTagMapping(name="label", topic=f"{prefix}/label", value_type="text"),
        ],
    )
    part = make_part(config(mqtt_url, sub), wait_for)
    try:
        before = time.time_ns()
        pub.send(f"{prefix}/temp", "21.5")
        pub.send(f"{prefix}/run", "true")
        pub.send(f"{prefix}/mode", "auto")
        pub.send(f"{prefix}/mode", "3")
        pub.send(f"{prefix}/label", '"batch 7"')
        b = collect(part, 5)
        assert b.device_id == DEV
        assert b.tag_ids.tolist() == [tid("temp"), tid("run"), tid("mode"), tid("mode"), tid("label")]
        assert b.values[[0, 1, 3]].tolist() == [21.5, 1.0, 3.0]
        assert math.isnan(b.values[2]) and math.isnan(b.values[4])
        assert b.text == {2: "auto", 4: "batch 7"}
        assert b.quality.tolist() == [Quality.GOOD] * 5
        assert (b.ts_ns >= before).all() and (b.ts_ns <= time.time_ns()).all()  # receive time
    finally:
        part.close()


def test_json_paths(mqtt_url: str, pub: Publisher, prefix: str, wait_for: Callable[..., Any]) -> None:
    topic = f"{prefix}/line1/press"
    sub = MqttSubscription(
        topic_filter=f"{prefix}/+/press",
        device_id=DEV,
        tags=[
            MqttTagMapping(name="temp", value_path="data.temp"),
            MqttTagMapping(name="pressure", value_path="values[2].v"),
            MqttTagMapping(name="first", value_path="values[0].v", topic=topic),
            MqttTagMapping(name="state", value_path="data.state", value_type="text"),
        ],
    )
    part = make_part(config(mqtt_url, sub), wait_for)
    try:
        pub.send(
            topic,
            '{"data": {"temp": 71.25, "state": "running"}, "values": [{"v": 1}, {"v": 2}, {"v": 3.5}]}',
        )
        b = collect(part, 4)
        assert b.tag_ids.tolist() == [tid("temp"), tid("pressure"), tid("first"), tid("state")]
        assert b.values[:3].tolist() == [71.25, 3.5, 1.0]
        assert b.text == {3: "running"}
        assert b.quality.tolist() == [Quality.GOOD] * 4
        assert len(set(b.ts_ns.tolist())) == 1  # one message, one receive time
    finally:
        part.close()


def test_timestamps_from_payload(
    mqtt_url: str, pub: Publisher, prefix: str, wait_for: Callable[..., Any]
) -> None:
    sub = MqttSubscription(
        topic_filter=f"{prefix}/m",
        device_id=DEV,
        tags=[MqttTagMapping(name="v", value_path="v", timestamp_path="ts")],
    )
    # 2024 stays within the accepted past (core.timestamps) only with a wide max_past_s
    part = make_part(config(mqtt_url, sub, max_clock_skew_s=5, max_past_s=100 * 365 * 86_400), wait_for)
    t0 = 1_714_564_800 * 10**9
    try:
        pub.send(f"{prefix}/m", '{"v": 1, "ts": "2024-05-01T12:00:00Z"}')
        pub.send(f"{prefix}/m", '{"v": 2, "ts": "2024-05-01T12:00:00.250"}')  # naive: UTC
        pub.send(f"{prefix}/m", '{"v": 3, "ts": 1714564800500}')  # epoch ms
        pub.send(f"{prefix}/m", '{"v": 4, "ts": 1714564800.75}')  # epoch s
        before = time.time_ns()
        pub.send(f"{prefix}/m", '{"v": 5, "ts": "not a time"}')
        pub.send(f"{prefix}/m", '{"v": 6, "ts": 4102444800000}')  # 2100: the future
        pub.send(f"{prefix}/m", '{"v": 7}')  # missing
        b = collect(part, 7)
        assert b.values.tolist() == [1, 2, 3, 4, 5, 6, 7]
        assert b.ts_ns[:4].tolist() == [t0, t0 + 250_000_000, t0 + 500_000_000, t0 + 750_000_000]
        assert (b.ts_ns[4:] >= before).all()  # receive time instead
        assert b.quality.tolist() == [Quality.GOOD] * 4 + [Quality.UNCERTAIN] * 3
        assert part.stats.timestamp_errors == 3
    finally:
        part.close()


def test_bad_payloads_become_bad_points(
    mqtt_url: str, pub: Publisher, prefix: str, wait_for: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    sub = MqttSubscription(
        topic_filter=f"{prefix}/+",
        device_id=DEV,
        tags=[
            MqttTagMapping(name="j", topic=f"{prefix}/j", value_path="a.b"),
            MqttTagMapping(name="p", topic=f"{prefix}/p"),
        ],
    )
    part = make_part(config(mqtt_url, sub), wait_for)
    caplog.set_level(logging.WARNING, logger="connectors.mqtt.source")
    try:
        for _ in range(3):
            pub.send(f"{prefix}/j", "{not json")
        pub.send(f"{prefix}/j", '{"a": {"c": 1}}')  # missing path
        pub.send(f"{prefix}/j", '{"a": {"b": "high"}}')  # not a number
        pub.send(f"{prefix}/j", '{"a": {"b": null}}')
        pub.send(f"{prefix}/j", '{"a": {"b": [1, 2]}}')  # not a scalar
        pub.send(f"{prefix}/p", "twenty")
        pub.send(f"{prefix}/p", b"\xff\xfe")
        pub.send(f"{prefix}/j", '{"a": {"b": 9}}')  # and good ones still flow
        pub.send(f"{prefix}/other", "1")  # no mapping
        b = collect(part, 10)
        ce, oor = Quality.CONFIG_ERROR, Quality.OUT_OF_RANGE
        assert b.quality.tolist() == [ce, ce, ce, ce, oor, oor, ce, oor, ce, Quality.GOOD]
        assert np.isnan(b.values[:9]).all() and b.values[9] == 9
        s = part.stats
        assert (s.bad_points, s.points, s.received) == (9, 10, 11)
        wait_for(lambda: part.next_batch() == [] and part.stats.unmatched == 1, what="the unmatched count")
        json_warnings = [r for r in caplog.records if "malformed JSON" in r.getMessage()]
        assert len(json_warnings) == 1, "rate-limited: one warning for three bad messages"
        msg = json_warnings[0].getMessage()
        assert f"{prefix}/j" in msg and "'a.b'" in msg and "bad_config_error" in msg
        assert any("'twenty' is not a number" in r.getMessage() for r in caplog.records)
    finally:
        part.close()


def test_quality_from_payload(
    mqtt_url: str, pub: Publisher, prefix: str, wait_for: Callable[..., Any]
) -> None:
    sub = MqttSubscription(
        topic_filter=f"{prefix}/q",
        device_id=DEV,
        tags=[MqttTagMapping(name="v", value_path="v", quality_path="q")],
    )
    part = make_part(config(mqtt_url, sub), wait_for)
    try:
        for q in ('"good"', "false", "131", '"uncertain"', '"nonsense"'):
            pub.send(f"{prefix}/q", f'{{"v": 1, "q": {q}}}')
        pub.send(f"{prefix}/q", '{"v": 2}')  # no quality: good
        b = collect(part, 6)
        assert b.quality.tolist() == [0, Quality.BAD, 131, Quality.UNCERTAIN, Quality.CONFIG_ERROR, 0]
    finally:
        part.close()


def test_queue_is_bounded_and_drops_oldest(
    mqtt_url: str, pub: Publisher, prefix: str, wait_for: Callable[..., Any]
) -> None:
    sub = MqttSubscription(topic_filter=f"{prefix}/v", device_id=DEV, tags=[MqttTagMapping(name="v")])
    part = make_part(config(mqtt_url, sub, max_queue=5), wait_for)
    try:
        for i in range(20):
            pub.send(f"{prefix}/v", str(i))
        wait_for(lambda: part.stats.received == 20, what="20 messages")
        (b,) = part.next_batch()
        assert b.values.tolist() == [15, 16, 17, 18, 19]
        assert part.stats.dropped == 15
    finally:
        part.close()


# -- connection ------------------------------------------------------------------------------------


def _broker_factory() -> Callable[[int], MosquittoBroker | EmbeddedBroker]:
    if MosquittoBroker.available():
        return MosquittoBroker
    return lambda port: EmbeddedBroker(port=port)


def test_reconnect_renews_subscriptions(wait_for: Callable[..., Any]) -> None:
    make = _broker_factory()
    port = free_port()
    broker = make(port)
    broker.start()
    sub = MqttSubscription(topic_filter="r/+", device_id=DEV, tags=[MqttTagMapping(name="v")])
    part = make_part(config(broker.url, sub, reconnect_min_s=1, reconnect_max_s=1), wait_for)
    try:
        p = Publisher(broker.url)
        p.send("r/a", "1")
        p.close()
        assert collect(part, 1).values.tolist() == [1]
        broker.stop()
        wait_for(lambda: not part.stats.connected, what="the source to notice the outage")
        broker = make(port)  # a fresh broker: no session, no subscriptions
        broker.start()
        wait_for(lambda: part.stats.subscribed, timeout=20, what="reconnect and re-subscribe")
        assert part.stats.connects == 2
        p = Publisher(broker.url)
        p.send("r/b", "2")
        p.close()
        assert collect(part, 1).values.tolist() == [2]
    finally:
        part.close()
        broker.stop()


@pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto")
def test_persistent_session_keeps_messages(prefix: str, wait_for: Callable[..., Any]) -> None:
    """clean_session=False: what is published while the flow is down arrives after the restart.

    Against mosquitto (amqtt 0.12 did not deliver the queued message in our runs).
    """
    broker = MosquittoBroker(free_port())
    broker.start()
    sub = MqttSubscription(topic_filter=f"{prefix}/v", device_id=DEV, tags=[MqttTagMapping(name="v")])
    cfg = config(broker.url, sub, client_id=f"nexus-test-{prefix}", clean_session=False, qos=1)
    try:
        part = make_part(cfg, wait_for)
        part.close()  # the flow stops; the broker keeps the session and queues QoS 1 messages
        pub = Publisher(broker.url)
        pub.send(f"{prefix}/v", "42", qos=1)
        pub.close()
        part = make_part(cfg, wait_for)
        try:
            assert collect(part, 1).values.tolist() == [42]
        finally:
            part.close()
    finally:
        broker.stop()


# -- Bytewax ---------------------------------------------------------------------------------------


def test_in_a_dataflow(mqtt_url: str, prefix: str) -> None:
    stop = threading.Event()
    subs = [
        MqttSubscription(
            topic_filter=f"{prefix}/a/+", device_id="dev-a", tags=[MqttTagMapping(name="x", value_path="x")]
        ),
        MqttSubscription(
            topic_filter=f"{prefix}/b/#",
            device_id="dev-b",
            tags=[MqttTagMapping(name="y", topic=f"{prefix}/b/y")],
        ),
    ]
    source = MqttSource(config(mqtt_url, *subs), stop_event=stop)
    assert source.list_parts() == ["mqtt:dev-a", "mqtt:dev-b"]
    out: list[PointBatch] = []
    seen = {"dev-a": 0, "dev-b": 0}

    def count(_step: str, batch: PointBatch) -> None:
        seen[batch.device_id] += len(batch)
        if min(seen.values()) >= 20:
            stop.set()

    def publish() -> None:
        p = Publisher(mqtt_url)
        try:
            i = 0
            while not stop.is_set() and i < 5000:
                p.send(f"{prefix}/a/1", f'{{"x": {i}}}', qos=0)
                p.send(f"{prefix}/b/y", str(i), qos=0)
                i += 1
                time.sleep(0.002)
        finally:
            p.close()

    flow = Dataflow("mqtt_source_test")
    s = op.input("in", flow, source)
    op.output("out", op.inspect("count", s, count), TestingSink(out))
    t = threading.Thread(target=publish, daemon=True)
    t.start()
    run_main(flow)  # returns once both partitions saw the stop event
    stop.set()
    t.join(10)
    assert seen["dev-a"] >= 20 and seen["dev-b"] >= 20
    a = np.concatenate([b.values for b in out if b.device_id == "dev-a"])
    assert (np.diff(a) > 0).all(), "values arrive in order"
    ids = {int(x) for b in out if b.device_id == "dev-b" for x in b.tag_ids}
    assert ids == {tag_id_for("dev-b", "y")}
    assert all(q == Quality.GOOD for b in out for q in b.quality.tolist())
    assert len(out) < seen["dev-a"] + seen["dev-b"], "messages are batched per drain"
