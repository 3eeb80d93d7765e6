"""The shipped broker configuration (deploy/broker) on a real mosquitto: no anonymous access, and
only the API's user may publish write commands.

The shipped ``mosquitto.conf`` and ``mosquitto.acl`` are used as they are; only the listener (a free
loopback port), the password file (made with ``mosquitto_passwd`` in a temp folder), the ACL path
and persistence are adapted to the test. A refused publish is dropped silently by the broker
(MQTT 3.1.1), so "never delivered" is proven by order: after the refused message, a permitted
sentinel is published (once the refused one was acknowledged by the broker); when the observer has
the sentinel, it would have had the refused message before it.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.subscriber import DeviceSubscriber
from tests.broker.mosquitto import SHIPPED, broker_folder, mosquitto, needs_mosquitto, password_file
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, needs_mosquitto]

USERS = {"nexus-api": "api-pw-" + uuid.uuid4().hex, "nexus-flow": "flow-pw-" + uuid.uuid4().hex,
         "nexus-reader": "reader-pw-" + uuid.uuid4().hex}  # fmt: skip


def shipped_conf(folder: Path) -> str:
    """The shipped mosquitto.conf with only what a test must change replaced (each line checked)."""
    conf = (SHIPPED / "mosquitto.conf").read_text()
    replacements = {
        "password_file /mosquitto/config/passwd": f"password_file {password_file(folder, USERS)}",
        "acl_file /mosquitto/config/mosquitto.acl": f"acl_file {shutil.copy(SHIPPED / 'mosquitto.acl', folder)}",
        "listener 1883\n": "listener {port} 127.0.0.1\n",
        "persistence true": "persistence false",
        "persistence_location /mosquitto/data/\n": "",
    }
    for old, new in replacements.items():
        assert old in conf, f"deploy/broker/mosquitto.conf no longer has {old!r}"
        conf = conf.replace(old, new)
    assert "allow_anonymous false" in conf
    return conf


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with broker_folder() as folder, mosquitto(folder, shipped_conf(folder)) as p:
        yield p


def url(port: int, user: str | None, password: str | None = None) -> str:
    if user is None:
        return f"mqtt://127.0.0.1:{port}"
    return f"mqtt://{user}:{password or USERS[user]}@127.0.0.1:{port}"


class Client:
    """A connected project MQTT client (``make_client``) that records what it receives."""

    def __init__(self, broker_url: str, subscribe: list[str] | None = None) -> None:
        from connectors.mqtt.url import parse_mqtt_url

        u = parse_mqtt_url(broker_url)
        self.received: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.granted: list[Any] = []
        self.ready = threading.Event()
        self.subscribe = subscribe or []
        self.client = make_client(u, unique_client_id("test-acl"))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, bytes(m.payload)))
        self.client.connect_async(u.host, u.port)
        self.client.loop_start()

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        self.connack = reason
        if reason.is_failure or not self.subscribe:
            self.ready.set()
            return
        c.subscribe([(t, 1) for t in self.subscribe])

    def _on_subscribe(self, _c: object, _u: object, _m: object, reasons: list[Any], _p: object) -> None:
        self.granted = reasons
        self.ready.set()

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)  # the broker has handled it

    def topics(self) -> list[str]:
        return [t for t, _ in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def connect(clients: list[Client], broker_url: str, subscribe: list[str] | None = None) -> Client:
    c = Client(broker_url, subscribe)
    clients.append(c)
    assert c.ready.wait(10), "no CONNACK/SUBACK"
    return c


def test_anonymous_and_wrong_passwords_are_refused(port: int, clients: list[Client]) -> None:
    anonymous = connect(clients, url(port, None))
    assert anonymous.connack.is_failure, anonymous.connack
    wrong = connect(clients, url(port, "nexus-api", "guess"))
    assert wrong.connack.is_failure, wrong.connack
    ok = connect(clients, url(port, "nexus-reader"))
    assert not ok.connack.is_failure
    # a project subscriber says why it cannot start
    probe = _Probe(url(port, None), "#")
    try:
        with pytest.raises(TimeoutError, match="connection refused: Not authorized"):
            probe.start(timeout=5)
    finally:
        probe.close()


class _Probe(DeviceSubscriber[Any]):
    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        pass


def test_only_the_api_user_publishes_commands(port: int, clients: list[Client]) -> None:
    observer = connect(clients, url(port, "nexus-api"), ["$nexus/cmd/#", "acme/#"])
    assert not any(r.is_failure for r in observer.granted), observer.granted
    flow = connect(clients, url(port, "nexus-flow"), ["$nexus/cmd/+/+/set", "$nexus/config/#"])
    assert not any(r.is_failure for r in flow.granted), flow.granted
    reader = connect(clients, url(port, "nexus-reader"), ["acme/#"])
    api = observer

    # a flow cannot send a write command; its ack and its telemetry go through
    flow.publish("$nexus/cmd/press-01/setpoint/set", '{"value": 1, "from": "flow"}')
    flow.publish("$nexus/cmd/press-01/setpoint/ack", '{"ok": true}')  # sentinel, same client: ordered
    flow.publish("acme/plant/area/line/press-01/temp", "21.5")
    wait_for(lambda: "acme/plant/area/line/press-01/temp" in observer.topics(), what="the flow's telemetry")
    assert "$nexus/cmd/press-01/setpoint/ack" in observer.topics()
    assert "$nexus/cmd/press-01/setpoint/set" not in observer.topics(), observer.received
    assert "$nexus/cmd/press-01/setpoint/set" not in flow.topics()

    # the reader cannot publish anything: telemetry nor commands
    reader.publish("acme/plant/area/line/press-01/temp", "-999")
    reader.publish("$nexus/cmd/press-01/setpoint/set", '{"value": 2, "from": "reader"}')
    flow.publish("acme/plant/area/line/sentinel", "s")  # after the reader's were acknowledged
    wait_for(lambda: "acme/plant/area/line/sentinel" in reader.topics(), what="the sentinel at the reader")
    wait_for(lambda: "acme/plant/area/line/sentinel" in observer.topics(), what="the sentinel")
    assert (b"-999") not in [p for _, p in observer.received]
    assert "$nexus/cmd/press-01/setpoint/set" not in flow.topics()

    # the API can: the flow (the command router's user) receives it
    api.publish("$nexus/cmd/press-01/setpoint/set", '{"value": 3, "from": "api"}')
    wait_for(
        lambda: "$nexus/cmd/press-01/setpoint/set" in flow.topics(), what="the API's command at the flow"
    )
    assert [p for t, p in flow.received if t.endswith("/set")] == [b'{"value": 3, "from": "api"}']


def test_the_reader_cannot_subscribe_to_commands_or_config(port: int, clients: list[Client]) -> None:
    reader = connect(clients, url(port, "nexus-reader"), ["$nexus/cmd/+/+/set", "$nexus/config/#"])
    # mosquitto grants the SUBACK but never delivers what the ACL does not allow to read
    api = connect(clients, url(port, "nexus-api"), ["$nexus/config/#"])
    api.publish("$nexus/cmd/press-01/setpoint/set", '{"value": 4}')
    api.publish("$nexus/config/flows/f/devices/d", "{}")
    wait_for(lambda: "$nexus/config/flows/f/devices/d" in api.topics(), what="the config message at the API")
    assert reader.topics() == []
