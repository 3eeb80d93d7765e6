"""End to end: `python -m bytewax.run "dataflows.telemetry:flow"` polls a pymodbus server and
delivers scaled values to a real broker (on ISA-95 topics) and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import yaml

from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.mqtt.url import parse_mqtt_url
from core.batch import tag_id_for
from core.signing import sign_command
from tests.conftest import wait_for

COMMAND_KEY = "e2e-command-key"

pytestmark = pytest.mark.integration

TAGS: list[dict[str, Any]] = [
    {"name": "temp", "table": "holding", "address": 0, "data_type": "int16", "scale": 0.1, "unit": "degC"},
    {
        "name": "pressure",
        "table": "holding",
        "address": 1,
        "data_type": "float32",
        "word_order": "little",
        "unit": "bar",
    },
    {"name": "count", "table": "input", "address": 0, "data_type": "uint32", "unit": "parts"},
    {
        "name": "speed",
        "table": "holding",
        "address": 3,
        "data_type": "uint16",
        "scale": 0.5,
        "offset": -10,
        "unit": "rpm",
        "clamp": {"low": 0, "high": 1000},
    },
    {"name": "running", "table": "coil", "address": 0, "data_type": "bool"},
]
SETPOINT = {
    "name": "setpoint",
    "table": "holding",
    "address": 5,
    "data_type": "int16",
    "scale": 0.1,
    "unit": "degC",
    "clamp": {"low": 0, "high": 100},
    "access": "read_write",
}
RAW = {"temp": -123, "pressure": 7.25, "count": 70_000, "speed": 5000, "running": 1}
EXPECTED = {"temp": -12.3, "pressure": 7.25, "count": 70_000.0, "speed": 1000.0, "running": 1.0}
QUALITY = {"speed": "uncertain_clamped"}  # 5000 * 0.5 - 10 = 2490 rpm is clamped to 1000


class Collector:
    """Subscribes to the plant's UNS root and keeps the last message per topic."""

    def __init__(self, url: str) -> None:
        u = parse_mqtt_url(url)
        self.messages: dict[str, dict[str, Any]] = {}
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe([("acme/#", 1), ("$nexus/cmd/+/+/ack", 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(u.host, u.port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages[msg.topic] = json.loads(msg.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def address_of(tag: dict[str, Any]) -> ModbusTagAddress:
    return ModbusTagAddress(
        **{k: tag[k] for k in tag if k in ("table", "address", "data_type", "word_order")}
    )


@pytest.fixture
def simulator() -> Iterator[ModbusSimulator]:
    device = SimulatedDevice("press-07", 1, [SimTag(address=address_of(t)) for t in [*TAGS, SETPOINT]])
    with ModbusSimulator(host="127.0.0.1", port=0, devices=[device]) as sim:
        yield sim


def write_spec(path: Path, port: int) -> Path:
    spec = {
        "version": 1,
        "id": "e2e",
        "devices": [
            {
                "id": "press-07",
                "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout_s": 0.5},
                "poll_interval_s": 0.2,
                "location": {"enterprise": "acme", "site": "plant9", "area": "pressing", "line": "line3"},
                "tags": [*TAGS, SETPOINT],
            },
            {
                "id": "gw-01",
                "protocol": "mqtt",
                "location": {"enterprise": "acme", "site": "plant9", "area": "utilities", "line": "line3"},
                "tags": [
                    {"name": "ambient", "topic": "sensors/gw-01/ambient", "value_path": "v", "unit": "degC"}
                ],
            },
        ],
        "operators": [{"id": "normalize", "type": "normalize"}, {"id": "deadband", "type": "deadband"}],
        "sinks": [
            {"id": "uns", "type": "mqtt_uns", "qos": 1},
            {"id": "historian", "type": "historian", "max_delay_s": 0.2},
        ],
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def stored_values(db_url: str) -> dict[str, tuple[float, int]]:
    try:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (tag_id) tag_id, value, quality FROM nexus_points ORDER BY tag_id, time DESC"
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    names = {tag_id_for("press-07", t["name"]): t["name"] for t in TAGS}
    return {names[tag_id]: (value, quality) for tag_id, value, quality in rows if tag_id in names}


def test_simulator_values_arrive_scaled_on_topics_and_in_the_historian(
    tmp_path: Path, simulator: ModbusSimulator, db: str, mqtt_url: str
) -> None:
    for tag in TAGS:
        simulator.set_value(
            "press-07",
            ModbusTagAddress(
                **{k: tag[k] for k in tag if k in ("table", "address", "data_type", "word_order")}
            ),
            RAW[tag["name"]],
        )
    spec = write_spec(tmp_path / "e2e.yaml", simulator.port)
    collector = Collector(mqtt_url)
    assert collector.subscribed.wait(10)
    env = {
        **os.environ,
        "NEXUS_SPEC": str(spec),
        "NEXUS_DATABASE_URL": db,
        "NEXUS_MQTT_URL": mqtt_url,
        "NEXUS_COMMAND_KEY": COMMAND_KEY,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.telemetry:flow"],
        env=env,
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        root = "acme/plant9/pressing/line3/press-07"
        wait_for(
            lambda: proc.poll() is not None or all(f"{root}/{t['name']}" in collector.messages for t in TAGS),
            timeout=60,
            what="one message per tag on the UNS topics",
        )
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        for tag in TAGS:
            msg = collector.messages[f"{root}/{tag['name']}"]
            assert msg["value"] == pytest.approx(EXPECTED[tag["name"]]), tag["name"]
            assert msg["quality"] == QUALITY.get(tag["name"], "good")
            assert msg["unit"] == tag.get("unit", "")
            assert msg["timestamp"].endswith("Z")

        stored = wait_for(
            lambda: len(stored_values(db)) == len(TAGS) and stored_values(db),
            timeout=30,
            what="one row per tag in the historian",
        )
        for name, (value, quality) in stored.items():
            assert value == pytest.approx(EXPECTED[name]), name
            assert (quality == 65) if name in QUALITY else (quality == 0), name

        # A changed register arrives as a new value; the steady ones stay silent (no deadband: every poll
        # publishes, so check the new value only).
        simulator.set_value("press-07", ModbusTagAddress(table="holding", address=0, data_type="int16"), 456)
        wait_for(
            lambda: collector.messages[f"{root}/temp"]["value"] == pytest.approx(45.6),
            timeout=20,
            what="the changed temperature on the broker",
        )

        # Write-back: an unsigned command and one signed with another key change nothing and are
        # answered with the reason; a signed one changes the register and is acked; a read-only tag
        # is refused and its register stays as it was.
        ack = "$nexus/cmd/press-07/{}/ack"
        before = simulator.get_registers("press-07", "holding", 5, 1)
        forged = sign_command(b"not-the-key", "press-07", "setpoint", 42.5, request_id="r0b")
        for payload, rid, code in (
            ('{"value": 42.5, "request_id": "r0"}', "r0", "unsigned"),
            (json.dumps(forged), "r0b", "bad_signature"),
        ):
            collector.client.publish("$nexus/cmd/press-07/setpoint/set", payload, qos=1)
            reply = wait_for(
                lambda rid=rid: (
                    (m := collector.messages.get(ack.format("setpoint"))) and m["request_id"] == rid and m
                ),
                timeout=20,
                what=f"the refusal of {rid}",
            )
            assert reply["ok"] is False and reply["code"] == code, reply
        assert simulator.get_registers("press-07", "holding", 5, 1) == before
        signed = sign_command(COMMAND_KEY.encode(), "press-07", "setpoint", 42.5, request_id="r1")
        collector.client.publish("$nexus/cmd/press-07/setpoint/set", json.dumps(signed), qos=1)
        reply = wait_for(
            lambda: (m := collector.messages.get(ack.format("setpoint"))) and m["request_id"] == "r1" and m,
            timeout=20,
            what="the write ack",
        )
        assert reply["ok"] is True and reply["request_id"] == "r1", reply
        assert simulator.get_registers("press-07", "holding", 5, 1) == [425]
        refused = sign_command(COMMAND_KEY.encode(), "press-07", "temp", 1, request_id="r2")
        collector.client.publish("$nexus/cmd/press-07/temp/set", json.dumps(refused), qos=1)
        reply = wait_for(lambda: collector.messages.get(ack.format("temp")), timeout=20, what="the refusal")
        assert reply["ok"] is False and "read-only" in reply["error"], reply
        assert simulator.get_registers("press-07", "holding", 0, 1) == [456]

        # An MQTT device: its JSON messages become points on its own UNS topic.
        ambient = "acme/plant9/utilities/line3/gw-01/ambient"

        def ambient_arrived() -> bool:
            collector.client.publish("sensors/gw-01/ambient", '{"v": 21.5}', qos=1)
            return ambient in collector.messages

        wait_for(ambient_arrived, timeout=20, interval=0.5, what="the MQTT device's value on the UNS")
        assert collector.messages[ambient]["value"] == 21.5
    finally:
        collector.close()
        proc.send_signal(signal.SIGTERM)  # drain: sources stop, sinks flush
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stdout.read().decode() if proc.stdout else ""
