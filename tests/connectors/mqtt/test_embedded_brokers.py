"""Embedded MQTT brokers: start, serve, stop, free the port."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from nexus.embedded import EmbeddedBroker, EmbeddedServiceError, MosquittoBroker, free_port, mqtt_answers

pytestmark = pytest.mark.integration


def _round_trip(port: int, topic: str = "t/x", *, retain: bool = False, payload: bytes = b"hello") -> bytes:
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rt")
    client.on_connect = lambda c, *_: c.subscribe(topic.rsplit("/", 1)[0] + "/#", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        client.publish(topic, payload, qos=1, retain=retain)
        assert done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_embedded_broker_start_stop() -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port)
    with broker:
        assert broker.url == f"mqtt://127.0.0.1:{port}"
        assert mqtt_answers("127.0.0.1", port)
        assert _round_trip(port) == b"hello"
        broker.start()  # idempotent
    assert not mqtt_answers("127.0.0.1", port)
    broker.start()  # and again after a stop
    broker.stop()


def test_embedded_broker_carries_nexus_control_topics() -> None:
    """amqtt refuses `$` topics from clients; the embedded broker lets `$nexus/...` through, retained."""
    with EmbeddedBroker(port=free_port()) as broker:
        assert _round_trip(broker.port, "$nexus/status/flows/f/p", retain=True) == b"hello"
        # a later subscriber first gets the retained status, then its own message
        assert _round_trip(broker.port, "$nexus/status/flows/f/q", payload=b"other") == b"hello"


def test_embedded_broker_port_in_use() -> None:
    with EmbeddedBroker(port=free_port()) as first, pytest.raises(EmbeddedServiceError, match="in use"):
        EmbeddedBroker(port=first.port).start()


@pytest.mark.skipif(not MosquittoBroker.available(), reason="mosquitto is not installed")
def test_mosquitto_broker() -> None:
    port = free_port()
    with MosquittoBroker(port) as broker:
        assert broker.url == f"mqtt://127.0.0.1:{port}"
        assert _round_trip(port) == b"hello"
    assert not mqtt_answers("127.0.0.1", port)


def _brokers() -> list[str]:
    return ["embedded", *(["mosquitto"] if MosquittoBroker.available() else [])]


@pytest.mark.parametrize("kind", _brokers())
def test_a_client_receives_only_what_it_subscribed_to(kind: str) -> None:
    """Retained messages go to a subscription that matches them, once, and never to another
    client's filters; ``#`` does not match ``$`` topics (MQTT-4.7.2-1). amqtt 0.12 alone replayed
    every filter any session had subscribed to on each CONNECT."""
    from paho.mqtt import publish

    from tests.mqtt_probe import collect

    broker = EmbeddedBroker(port=free_port()) if kind == "embedded" else MosquittoBroker(free_port())
    with broker:
        for topic, payload in [("$nexus/status/flows/f/0", b"s1"), ("plant/a/b", b"p1")]:
            publish.single(topic, payload, qos=1, retain=True, hostname="127.0.0.1", port=broker.port)
        url = broker.url

        def got(topic_filter: str, marker: str) -> list[tuple[str, bytes]]:
            return [(m.topic, m.payload) for m in collect(url, topic_filter, marker)]

        status = [("$nexus/status/flows/f/0", b"s1")]
        assert got("$nexus/status/#", "$nexus/status/marker") == status  # once, not twice
        assert got("$nexus/status/#", "$nexus/status/marker") == status  # and again for a new client
        assert got("nothing/#", "nothing/marker") == []
        assert got("plant/#", "plant/marker") == [("plant/a/b", b"p1")]
        assert got("#", "x/marker") == [("plant/a/b", b"p1")]
        assert got("$nexus/status/flows/f/0", "$nexus/status/marker") == status
        # live messages too: only those the subscription matches
        live = [("$nexus/status/flows/f/1", b"live"), ("plant/a/c", b"live"), ("nothing", b"live")]
        seen = [(m.topic, m.payload, m.retain) for m in collect(url, "#", "x/marker2", publish_first=live)]
        assert seen == [
            ("plant/a/b", b"p1", True),
            ("plant/a/c", b"live", False),
            ("nothing", b"live", False),
        ]
        only = [(m.topic, m.payload) for m in collect(url, "nothing/#", "nothing/m", publish_first=live)]
        assert only == [("nothing", b"live")]  # 'nothing/#' also matches its parent level 'nothing'
