"""control.hot.publish_device_configs against a real broker."""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.url import parse_mqtt_url
from control.errors import InvalidError, UnavailableError
from control.hot import clear_device_configs, publish_device_configs
from control.types import CONFIG_TOPIC
from nexus.embedded import free_port
from tests.conftest import wait_for


def retained(url: str, topic_filter: str, want: set[str] | None = None) -> dict[str, Any]:
    """The retained messages a new subscriber to ``topic_filter`` receives (all of ``want``, when
    given: the broker sends a subscription's retained messages in one burst, in no set order)."""
    u = parse_mqtt_url(url)
    got: dict[str, Any] = {}
    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, *_: cl.subscribe(topic_filter, qos=1)
    c.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.payload:
            got[msg.topic] = (json.loads(msg.payload), msg.qos)

    c.on_message = on_message
    c.connect(u.host, u.port)
    c.loop_start()
    try:
        assert subscribed.wait(10)
        wait_for(lambda: set(got) >= want if want else got, timeout=10, what=f"retained {want or 'messages'}")
        return dict(got)
    finally:
        c.loop_stop()
        c.disconnect()


def test_each_device_is_published_retained_with_its_version(mqtt_url: str) -> None:
    sections = {"press-01": {"id": "press-01", "poll_interval_s": 2}, "press-02": {"id": "press-02"}}
    publish_device_configs(mqtt_url, "plant-a", 7, sections)
    topics = {CONFIG_TOPIC.format(flow="plant-a", device=d) for d in sections}
    got = retained(mqtt_url, "$nexus/config/flows/plant-a/#", topics)
    assert set(got) == {CONFIG_TOPIC.format(flow="plant-a", device=d) for d in sections}
    doc, qos = got[CONFIG_TOPIC.format(flow="plant-a", device="press-01")]
    assert doc == {"version": 7, "device": sections["press-01"]} and qos == 1
    publish_device_configs(mqtt_url, "plant-a", 8, {"press-01": {"id": "press-01"}})  # replaces v7
    got = retained(mqtt_url, "$nexus/config/flows/plant-a/devices/press-01")
    assert next(iter(got.values()))[0]["version"] == 8


def test_bad_arguments_are_refused_with_their_field(mqtt_url: str) -> None:
    with pytest.raises(InvalidError) as err:
        publish_device_configs(mqtt_url, "plant/a", 0, {"d+1": {"id": "d+1"}, "d2": {"id": "other"}})
    fields = [path for path, _ in err.value.problems]
    assert fields == ["flow_id", "version", "patches.d+1", "patches.d2.id"]


def test_an_unreachable_broker_is_unavailable_and_the_url_is_redacted() -> None:
    url = f"mqtt://edge:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(UnavailableError) as err:
        publish_device_configs(url, "plant-a", 1, {"d1": {"id": "d1"}}, timeout_s=1.0)
    assert "s3cret" not in str(err.value) and "127.0.0.1" in str(err.value)


def test_cleared_notifications_are_no_longer_retained(mqtt_url: str) -> None:
    publish_device_configs(mqtt_url, "plant-c", 3, {"d1": {"id": "d1"}, "d2": {"id": "d2"}})
    clear_device_configs(mqtt_url, "plant-c", ["d1"])
    publish_device_configs(mqtt_url, "plant-c", 4, {"marker": {"id": "marker"}})
    got = wait_for(
        lambda: (
            (r := retained(mqtt_url, "$nexus/config/flows/plant-c/#"))
            and CONFIG_TOPIC.format(flow="plant-c", device="marker") in r
            and r
        ),
        timeout=10,
        what="the marker",
    )
    assert sorted(got) == [CONFIG_TOPIC.format(flow="plant-c", device=d) for d in ("d2", "marker")]
    clear_device_configs(mqtt_url, "plant-c", ["d2", "marker"])
    with pytest.raises(InvalidError):
        clear_device_configs(mqtt_url, "plant-c", ["a/b"])
