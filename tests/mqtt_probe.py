"""A probe for what a broker delivers to one subscription, synchronised without sleeps.

:func:`collect` subscribes to ``topic_filter``, waits for the SUBACK, then publishes a marker on
``marker_topic`` (which the filter must match, or which is subscribed to as well) and collects
every message until the marker comes back. A broker sends the retained messages of a subscription
before anything published after the SUBACK, so when the marker arrives, everything the
subscription was going to get has arrived: negative assertions need no fixed sleep.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from connectors.mqtt.url import parse_mqtt_url


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


def collect(
    mqtt_url: str,
    topic_filter: str,
    marker_topic: str | None = None,
    timeout: float = 15.0,
    *,
    publish_first: Sequence[tuple[str, bytes]] = (),
) -> list[Received]:
    """Messages (retained first) that a new subscriber to ``topic_filter`` receives before a marker.

    ``publish_first`` is published (not retained) by the same client just before the marker, so
    whatever of it the broker delivers to the subscription arrives before the marker too."""
    url = parse_mqtt_url(mqtt_url)
    marker = f"marker-{uuid.uuid4().hex}".encode()
    marker_topic = marker_topic or f"nexus-probe/{uuid.uuid4().hex}"
    got: list[Received] = []
    done = threading.Event()
    subscribed = threading.Event()
    filters = (
        [topic_filter] if mqtt.topic_matches_sub(topic_filter, marker_topic) else [topic_filter, marker_topic]
    )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    if url.username:
        client.username_pw_set(url.username, url.password)

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe([(f, 1) for f in filters])

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == marker_topic and bytes(msg.payload) == marker:
            done.set()
        elif not done.is_set():
            got.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK for {filters} within {timeout} s")
        for topic, payload in publish_first:
            client.publish(topic, payload, qos=1)
        client.publish(marker_topic, marker, qos=1)
        if not done.wait(timeout):
            raise TimeoutError(f"the marker on {marker_topic!r} did not come back within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return got
