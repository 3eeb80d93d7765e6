"""The UNS publisher against a real broker."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import bytewax.operators as op
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from connectors.mqtt.config import MqttSinkConfig, parse_mqtt_url
from connectors.mqtt.publisher import BrokerUnavailable, PublishTimeout, UnsPublisher
from connectors.mqtt.sink import UnsSink
from core.batch import PointBatch
from core.quality import Quality
from core.tags import TagInfo
from nexus.embedded import EmbeddedBroker, MosquittoBroker, free_port

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_123_456_789
TAGS = {
    1: TagInfo(1, "press-01", "temp", "degC", "acme/p1/press/l1/press-01/temp"),
    2: TagInfo(2, "press-01", "state", "", "acme/p1/press/l1/press-01/state"),
    3: TagInfo(3, "press-01", "speed", "rpm", "acme/p1/press/l1/press-01/speed"),
}


class Subscriber:
    """A paho client subscribed to '#' (inside on_connect), collecting messages."""

    def __init__(self, url: str) -> None:
        u = parse_mqtt_url(url)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{free_port()}")
        if u.username:
            self.client.username_pw_set(u.username, u.password)
        self.client.on_connect = lambda c, *_: c.subscribe("acme/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(u.host, u.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mqtt_url: str) -> Iterator[Subscriber]:
    sub = Subscriber(mqtt_url)
    yield sub
    sub.close()


def test_one_message_per_point(mqtt_url: str, subscriber: Subscriber, wait_for: Callable[..., Any]) -> None:
    b = PointBatch(
        device_id="press-01",
        ts_ns=np.array([T0, T0, T0 + 1000, T0], dtype=np.int64),
        tag_ids=np.array([1, 2, 3, 99], dtype=np.int64),
        values=np.array([21.5, np.nan, np.inf, 1.0]),
        quality=np.array([Quality.GOOD, Quality.GOOD, Quality.OUT_OF_RANGE, Quality.GOOD], dtype=np.uint8),
        text={1: 'running "auto"'},
    )
    with UnsPublisher(MqttSinkConfig(url=mqtt_url), TAGS) as pub:
        assert pub.publish_batch(b) == 3
        pub.flush(10)
        assert pub.unknown_tags == 1
        assert pub.acked == pub.published == 3
    got = dict(wait_for(lambda: len(subscriber.received()) == 3 and subscriber.received(), what="3 messages"))
    ts = "2023-11-14T22:13:20.123456Z"
    assert got == {
        TAGS[1].topic: {"value": 21.5, "timestamp": ts, "quality": "good", "unit": "degC"},
        TAGS[2].topic: {"value": 'running "auto"', "timestamp": ts, "quality": "good", "unit": ""},
        TAGS[3].topic: {
            "value": None,
            "timestamp": "2023-11-14T22:13:20.123457Z",
            "quality": "bad_out_of_range",
            "unit": "rpm",
        },
    }


def test_nan_is_null_and_unknown_tags_counted(
    mqtt_url: str, subscriber: Subscriber, wait_for: Callable[..., Any]
) -> None:
    b = PointBatch.from_values("press-01", [1, 7, 7, 8], [float("nan"), 1.0, 2.0, 3.0], ts_ns=T0)
    with UnsPublisher(MqttSinkConfig(url=mqtt_url, qos=0), TAGS) as pub:
        assert pub.publish_batch(b) == 1
        assert pub.unknown_tags == 3
    msgs = wait_for(subscriber.received, what="the NaN message")
    assert msgs[0][1]["value"] is None


def test_broker_unavailable_names_host_port_not_password() -> None:
    port = free_port()
    cfg = MqttSinkConfig(url=f"mqtt://edge:hunter2@127.0.0.1:{port}", connect_timeout_s=1.5)
    with pytest.raises(BrokerUnavailable) as info:
        UnsPublisher(cfg, TAGS)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(cfg)


def test_bounded_queue_times_out_when_the_broker_is_gone() -> None:
    broker: MosquittoBroker | EmbeddedBroker
    broker = MosquittoBroker(free_port()) if MosquittoBroker.available() else EmbeddedBroker(port=free_port())
    broker.start()
    cfg = MqttSinkConfig(url=broker.url, qos=1, max_queue=10, publish_timeout_s=0.5)
    pub = UnsPublisher(cfg, TAGS)
    try:
        broker.stop()
        with pytest.raises(PublishTimeout):
            for i in range(5):
                pub.publish_batch(
                    PointBatch.from_values("press-01", [1, 2, 3], [1.0, 2.0, 3.0], ts_ns=T0 + i)
                )
        assert pub.published - pub.acked <= 10
    finally:
        with pytest.raises(PublishTimeout):
            pub.close(timeout=0.2)


def test_reconnects_and_delivers_queued_messages(wait_for: Callable[..., Any]) -> None:
    broker: MosquittoBroker | EmbeddedBroker
    port = free_port()
    make = (
        (lambda: MosquittoBroker(port))
        if MosquittoBroker.available()
        else (lambda: EmbeddedBroker(port=port))
    )
    broker = make()
    broker.start()
    pub = UnsPublisher(MqttSinkConfig(url=broker.url, qos=1), TAGS)
    try:
        broker.stop()
        wait_for(lambda: not pub.connected, what="the publisher to notice")
        pub.publish_batch(PointBatch.from_values("press-01", [1, 3], [1.0, 2.0], ts_ns=T0))
        broker = make()
        broker.start()
        pub.flush(20)  # paho reconnects (backoff 1..30 s) and resends
        assert pub.acked == 2
    finally:
        pub.close(timeout=5)
        broker.stop()


def test_bytewax_sink(mqtt_url: str, subscriber: Subscriber, wait_for: Callable[..., Any]) -> None:
    flow = Dataflow("uns_sink_test")
    batches = [PointBatch.from_values("press-01", [1, 2, 3], [1.0, 2.0, 3.0], ts_ns=T0 + i) for i in range(4)]
    op.output(
        "out", op.input("in", flow, TestingSource(batches)), UnsSink(MqttSinkConfig(url=mqtt_url), TAGS)
    )
    run_main(flow)
    wait_for(lambda: len(subscriber.received()) == 12, what="12 messages")
