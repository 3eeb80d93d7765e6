"""The network thread of :class:`QuietClient` sleeps long when idle, yet publishes and stops at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from connectors.mqtt import client as client_module
from connectors.mqtt.batch_ack import BatchAckClient
from connectors.mqtt.client import QuietClient, make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url

pytestmark = pytest.mark.integration


def _started(url: str, wait_for: Callable[..., Any], timeouts: list[float]) -> QuietClient:
    client = make_client(url, unique_client_id("nexus-quiet"))
    assert isinstance(client, QuietClient)
    loop = client._loop

    def counted(timeout: float = 1.0) -> Any:
        timeouts.append(timeout)
        return loop(timeout)

    client._loop = counted  # type: ignore[method-assign]
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    broker = parse_mqtt_url(url)
    client.connect_async(broker.host, broker.port, keepalive=60)
    client.loop_start()
    wait_for(connected.is_set, timeout=10, what="the quiet client connected")
    return client


def test_idle_thread_waits_long_and_wakes_for_a_publish_and_a_stop(
    mqtt_url: str, wait_for: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "IDLE_SELECT_S", 30.0)
    timeouts: list[float] = []
    quiet = _started(mqtt_url, wait_for, timeouts)
    got: list[bytes] = []
    listener = make_client(mqtt_url, unique_client_id("nexus-quiet-sub"))
    subscribed = threading.Event()
    listener.on_connect = lambda c, *_: c.subscribe("nexus-test/quiet", qos=0)
    listener.on_subscribe = lambda *_: subscribed.set()
    listener.on_message = lambda _c, _u, msg: got.append(msg.payload)
    broker = parse_mqtt_url(mqtt_url)
    listener.connect_async(broker.host, broker.port)
    listener.loop_start()
    try:
        wait_for(subscribed.is_set, timeout=10, what="the listener subscribed")
        # the select waits a quarter of the keepalive (60 s), under IDLE_SELECT_S; paho's own: 1 s
        assert timeouts and set(timeouts) <= {0.0, 15.0}
        # a publish from another thread is sent at once, not when the select times out
        quiet.publish("nexus-test/quiet", b"now", qos=0)
        wait_for(lambda: got == [b"now"], timeout=5, what="the message, before the 15 s select ends")
        stopper = threading.Thread(target=quiet.loop_stop)
        stopper.start()
        stopper.join(timeout=5)
        assert not stopper.is_alive(), "loop_stop waited for the select's timeout"
    finally:
        quiet.disconnect()
        listener.disconnect()
        listener.loop_stop()


def test_the_uns_client_is_quiet_too() -> None:
    assert issubclass(BatchAckClient, QuietClient)
