"""End to end: a device change published by ``control.hot.publish_device_configs`` reaches a
running ``python -m bytewax.run "dataflows.telemetry:flow"`` without a restart and without a new
connection to the device; values on the broker and in PostgreSQL follow; the other device goes on."""

from __future__ import annotations

import copy
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import yaml

from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.mqtt.url import parse_mqtt_url
from control.hot import publish_device_configs
from control.types import CONFIG_TOPIC
from core.batch import tag_id_for
from nexus.embedded import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

POLL_S = 0.2
LOCATION = {"enterprise": "acme", "site": "hot", "area": "a1", "line": "l1"}
ROOT = "acme/hot/a1/l1"
TEMP = ModbusTagAddress(table="holding", address=0, data_type="int16")
SPEED = ModbusTagAddress(table="holding", address=1, data_type="uint16")
EXTRA = ModbusTagAddress(table="holding", address=10, data_type="uint16")
LEVEL = ModbusTagAddress(table="holding", address=0, data_type="uint16")


def press(port: int) -> dict[str, Any]:
    return {
        "id": "press-07",
        "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout_s": 0.5},
        "poll_interval_s": POLL_S,
        "location": LOCATION,
        "tags": [
            {
                "name": "temp",
                "table": "holding",
                "address": 0,
                "data_type": "int16",
                "scale": 0.1,
                "unit": "degC",
            },
            {"name": "speed", "table": "holding", "address": 1, "data_type": "uint16", "unit": "rpm"},
        ],
    }


def tank(port: int) -> dict[str, Any]:
    return {
        "id": "tank-01",
        "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout_s": 0.5},
        "poll_interval_s": POLL_S,
        "location": LOCATION,
        "tags": [{"name": "level", "table": "holding", "address": 0, "data_type": "uint16", "unit": "cm"}],
    }


class Watcher:
    """The flow's UNS topics (every message, in order) and its status topic (the latest payload)."""

    def __init__(self, url: str) -> None:
        u = parse_mqtt_url(url)
        self.lock = threading.Lock()
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.status: dict[str, Any] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        """The latest status payload of each flow process, by topic."""
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{ROOT}/#", 1), ("$nexus/status/flows/#", 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(u.host, u.port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        doc = json.loads(msg.payload)
        with self.lock:
            if msg.topic.startswith("$nexus/status/"):
                self.status = doc
                self.statuses[msg.topic] = doc
            else:
                self.messages.setdefault(msg.topic, []).append(doc)

    def values(self, device: str, tag: str) -> list[float]:
        with self.lock:
            return [m["value"] for m in self.messages.get(f"{ROOT}/{device}/{tag}", [])]

    def last(self, device: str, tag: str) -> float | None:
        values = self.values(device, tag)
        return values[-1] if values else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stored(db: str, device: str, tag: str, since: datetime | None = None) -> list[tuple[datetime, float]]:
    try:
        with psycopg.connect(db) as conn:
            return conn.execute(
                "SELECT time, value FROM nexus_points WHERE tag_id = %s AND time >= %s ORDER BY time",
                (tag_id_for(device, tag), since or datetime(2000, 1, 1, tzinfo=UTC)),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def registered(db: str, device: str, tag: str) -> bool:
    try:
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT name FROM nexus_tags WHERE tag_id = %s", (tag_id_for(device, tag),))
            return row.fetchone() is not None
    except psycopg.errors.UndefinedTable:
        return False


class Flow:
    """One flow process on a spec, with its log in a file."""

    def __init__(
        self,
        tmp: Path,
        spec: dict[str, Any],
        db: str,
        mqtt_url: str,
        *,
        flow_id: str,
        version: int,
        cluster: tuple[int, str] | None = None,
    ) -> None:
        """``cluster``: this process's id and the ``-a`` addresses of a multi-process flow."""
        path = tmp / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        self.log_path = tmp / f"flow{cluster[0] if cluster else ''}.log"
        self.log = self.log_path.open("wb")
        env = {
            **os.environ,
            "NEXUS_SPEC": str(path),
            "NEXUS_DATABASE_URL": db,
            "NEXUS_MQTT_URL": mqtt_url,
            "NEXUS_FLOW_ID": flow_id,
            "NEXUS_FLOW_VERSION": str(version),
        }
        args = ["-i", str(cluster[0]), "-a", cluster[1]] if cluster else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflows.telemetry:flow", *args],
            env=env,
            cwd=Path(__file__).parents[2],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, signal_first: bool = True) -> int:
        """Drain (SIGTERM) and wait; in a cluster signal every process first (they drain together)."""
        if signal_first:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.log.close()


@pytest.fixture
def sims() -> Iterator[tuple[ModbusSimulator, ModbusSimulator]]:
    dev7 = SimulatedDevice("press-07", 1, [SimTag(address=a) for a in (TEMP, SPEED, EXTRA)])
    dev8 = SimulatedDevice("tank-01", 1, [SimTag(address=LEVEL)])
    with ModbusSimulator(devices=[dev7]) as s7, ModbusSimulator(devices=[dev8]) as s8:
        s7.set_value("press-07", TEMP, 250)
        s7.set_value("press-07", SPEED, 1200)
        s7.set_value("press-07", EXTRA, 77)
        s8.set_value("tank-01", LEVEL, 40)
        yield s7, s8


@pytest.fixture
def flow_id(mqtt_url: str) -> Iterator[str]:
    """A flow id of its own (retained notifications live on the session's broker); cleared after."""
    fid = f"hot-{uuid.uuid4().hex[:8]}"
    yield fid
    u = parse_mqtt_url(mqtt_url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(u.host, u.port)
    c.loop_start()
    for device in ("press-07", "tank-01", "gw-01"):
        c.publish(CONFIG_TOPIC.format(flow=fid, device=device), b"", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def spec_for(ports: tuple[int, int]) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "hotflow",
        "devices": [press(ports[0]), tank(ports[1])],
        "operators": [{"id": "normalize", "type": "normalize"}, {"id": "deadband", "type": "deadband"}],
        "sinks": [
            {"id": "uns", "type": "mqtt_uns", "qos": 1},
            {"id": "historian", "type": "historian", "max_delay_s": 0.2},
        ],
    }


def rounded(values: list[float]) -> set[float]:
    return {round(v, 6) for v in values}


def device_status(watcher: Watcher, device: str) -> int | None:
    with watcher.lock:
        return ((watcher.status.get("devices") or {}).get(device) or {}).get("version")


def status_count(watcher: Watcher, name: str) -> int:
    with watcher.lock:
        return int(watcher.status.get(name, 0))


def started(flow: Flow, watcher: Watcher) -> None:
    wait_for(
        lambda: (
            not flow.alive()
            or (watcher.last("press-07", "temp") is not None and watcher.last("tank-01", "level"))
        ),
        timeout=90,
        what="the first values of both devices",
    )
    assert flow.alive(), flow.output()


def test_a_scale_change_applies_live_without_restart_or_reconnect(
    tmp_path: Path, sims: tuple[ModbusSimulator, ModbusSimulator], db: str, mqtt_url: str, flow_id: str
) -> None:
    s7, s8 = sims
    spec = spec_for((s7.port, s8.port))
    watcher = Watcher(mqtt_url)
    assert watcher.subscribed.wait(10)
    flow = Flow(tmp_path, spec, db, mqtt_url, flow_id=flow_id, version=1)
    try:
        started(flow, watcher)
        assert watcher.last("press-07", "temp") == pytest.approx(25.0)
        wait_for(lambda: device_status(watcher, "press-07") == 1, timeout=20, what="version 1 on the status")
        wait_for(lambda: stored(db, "press-07", "temp"), timeout=30, what="stored points")
        pid = flow.proc.pid
        connections = s7.connections_accepted

        section = copy.deepcopy(spec["devices"][0])
        section["tags"][0]["scale"] = 1.0
        publish_device_configs(mqtt_url, flow_id, 2, {"press-07": section})
        published_at = datetime.now(UTC)

        wait_for(
            lambda: watcher.last("press-07", "temp") == pytest.approx(250.0),
            timeout=30,
            what="new scale on UNS",
        )
        wait_for(
            lambda: any(v == pytest.approx(250.0) for _, v in stored(db, "press-07", "temp")),
            timeout=30,
            what="new scale in the historian",
        )
        wait_for(lambda: device_status(watcher, "press-07") == 2, timeout=20, what="version 2 on the status")
        # A clean switch: once the new scale arrived, never the old one again (the in-band item
        # comes ahead of the first batch polled with the new plan).
        temps = watcher.values("press-07", "temp")
        first_new = temps.index(pytest.approx(250.0))
        assert rounded(temps[:first_new]) == {25.0} and rounded(temps[first_new:]) == {250.0}, temps
        # Same process, same TCP connection to the device.
        assert flow.alive() and watcher.status["pid"] == pid
        assert s7.connections_accepted == connections
        assert device_status(watcher, "tank-01") == 1  # the other device did not change
        # the per-device poll statistics the live feed shows, from the real partitions
        polled = wait_for(
            lambda: (
                (watcher.status.get("devices") or {}).get("tank-01", {}).get("polls", 0) > 0
                and watcher.status["devices"]["tank-01"]
            ),
            timeout=10,
            what="poll statistics on the status",
        )
        assert polled["breaker"] == "closed" and polled["interval_s"] == pytest.approx(POLL_S)
        assert polled["latency_ms"] is not None and polled["skipped_polls"] >= 0
        # The other device went on polling: no hole around the change (a restart or reconnect would
        # leave one of seconds; polls are every 0.2 s).
        since = published_at.replace(microsecond=0)
        levels = wait_for(
            lambda: len(pts := stored(db, "tank-01", "level", since)) >= 10 and pts,
            timeout=30,
            what="tank points",
        )
        gaps = [(b - a).total_seconds() for (a, _), (b, _) in itertools.pairwise(levels)]
        assert max(gaps) < 2.0, gaps
        # Old-scale polls after the notification was acknowledged (reported, not asserted: timing).
        old_after = [t for t, v in stored(db, "press-07", "temp", published_at) if v == pytest.approx(25.0)]
        first_new_at = min(t for t, v in stored(db, "press-07", "temp") if v == pytest.approx(250.0))
        print(
            f"hot change: {len(old_after)} old-scale polls stored after the publish; first new-scale poll "
            f"{(first_new_at - published_at).total_seconds():.3f} s after it (poll interval {POLL_S} s)"
        )
    finally:
        watcher.close()
        code = flow.stop()
    assert code == 0, flow.output()


def test_tags_added_and_removed_stale_and_invalid_notifications(
    tmp_path: Path, sims: tuple[ModbusSimulator, ModbusSimulator], db: str, mqtt_url: str, flow_id: str
) -> None:
    s7, s8 = sims
    spec = spec_for((s7.port, s8.port))
    watcher = Watcher(mqtt_url)
    assert watcher.subscribed.wait(10)
    flow = Flow(tmp_path, spec, db, mqtt_url, flow_id=flow_id, version=3)
    try:
        started(flow, watcher)
        connections = s7.connections_accepted

        # Added "extra", removed "speed".
        section = copy.deepcopy(spec["devices"][0])
        section["tags"] = [
            section["tags"][0],
            {
                "name": "extra",
                "table": "holding",
                "address": 10,
                "data_type": "uint16",
                "scale": 2.0,
                "unit": "l",
            },
        ]
        publish_device_configs(mqtt_url, flow_id, 4, {"press-07": section})
        wait_for(
            lambda: watcher.last("press-07", "extra") == pytest.approx(154.0), timeout=30, what="the new tag"
        )
        wait_for(lambda: registered(db, "press-07", "extra"), timeout=30, what="the new tag in nexus_tags")
        wait_for(lambda: stored(db, "press-07", "extra"), timeout=30, what="the new tag's points")
        wait_for(lambda: device_status(watcher, "press-07") == 4, timeout=20, what="version 4 on the status")
        n_speed = len(watcher.values("press-07", "speed"))
        last_speed = stored(db, "press-07", "speed")[-1][0]
        n_extra = len(watcher.values("press-07", "extra"))
        wait_for(
            lambda: len(watcher.values("press-07", "extra")) >= n_extra + 5, timeout=30, what="more polls"
        )
        assert len(watcher.values("press-07", "speed")) == n_speed  # the removed tag is not read any more
        assert stored(db, "press-07", "speed")[-1][0] == last_speed

        # A stale notification (not newer than what runs) is ignored.
        stale = copy.deepcopy(section)
        stale["tags"][0]["scale"] = 5.0
        ignored = status_count(watcher, "config_ignored")
        publish_device_configs(mqtt_url, flow_id, 3, {"press-07": stale})
        wait_for(
            lambda: status_count(watcher, "config_ignored") > ignored,
            timeout=20,
            what="the stale one ignored",
        )
        # An invalid one is refused with the field named; the flow keeps its config.
        bad = copy.deepcopy(section)
        bad["poll_interval_s"] = -1
        refused = status_count(watcher, "config_refused")
        publish_device_configs(mqtt_url, flow_id, 5, {"press-07": bad})
        wait_for(
            lambda: status_count(watcher, "config_refused") > refused, timeout=20, what="the bad one refused"
        )
        wait_for(lambda: "poll_interval_s" in flow.output(), timeout=10, what="the refusal in the log")
        n_temp = len(watcher.values("press-07", "temp"))
        wait_for(
            lambda: len(watcher.values("press-07", "temp")) >= n_temp + 5, timeout=30, what="polls go on"
        )
        assert rounded(watcher.values("press-07", "temp")[n_temp:]) == {25.0}
        assert device_status(watcher, "press-07") == 4

        # A later valid version still applies (the refused one left nothing behind).
        good = copy.deepcopy(section)
        good["tags"][0]["scale"] = 0.5
        publish_device_configs(mqtt_url, flow_id, 6, {"press-07": good})
        wait_for(
            lambda: watcher.last("press-07", "temp") == pytest.approx(125.0), timeout=30, what="version 6"
        )
        assert flow.alive() and s7.connections_accepted == connections
    finally:
        watcher.close()
        code = flow.stop()
    assert code == 0, flow.output()


def test_a_process_started_with_an_older_version_takes_the_retained_change_before_its_first_poll(
    tmp_path: Path, sims: tuple[ModbusSimulator, ModbusSimulator], db: str, mqtt_url: str, flow_id: str
) -> None:
    """A restart on the old spec (the supervisor's version lags) still runs the published one;
    a process started with that version (or a newer one) ignores the retained notification."""
    s7, s8 = sims
    spec = spec_for((s7.port, s8.port))
    section = copy.deepcopy(spec["devices"][0])
    section["tags"][0]["scale"] = 1.0
    publish_device_configs(mqtt_url, flow_id, 2, {"press-07": section})
    watcher = Watcher(mqtt_url)
    assert watcher.subscribed.wait(10)
    old = Flow(tmp_path, spec, db, mqtt_url, flow_id=flow_id, version=1)
    try:
        started(old, watcher)
        wait_for(lambda: len(watcher.values("press-07", "temp")) >= 3, timeout=30, what="a few polls")
        assert rounded(watcher.values("press-07", "temp")) == {250.0}  # not one poll with the old scale
        wait_for(lambda: device_status(watcher, "press-07") == 2, timeout=20, what="version 2 on the status")
    finally:
        code = old.stop()
    assert code == 0, old.output()
    with watcher.lock:
        watcher.messages.clear()
    (tmp_path / "newer").mkdir()
    newer = Flow(tmp_path / "newer", spec, db, mqtt_url, flow_id=flow_id, version=2)
    try:
        started(newer, watcher)
        wait_for(lambda: len(watcher.values("press-07", "temp")) >= 3, timeout=30, what="a few polls")
        assert rounded(watcher.values("press-07", "temp")) == {
            25.0
        }  # its own spec: the notification is not newer
        wait_for(
            lambda: status_count(watcher, "config_ignored") >= 1, timeout=20, what="the retained one ignored"
        )
    finally:
        watcher.close()
        code = newer.stop()
    assert code == 0, newer.output()


def test_an_mqtt_device_takes_new_topics_and_scales_on_its_session(
    tmp_path: Path, sims: tuple[ModbusSimulator, ModbusSimulator], db: str, mqtt_url: str, flow_id: str
) -> None:
    s7, s8 = sims
    spec = spec_for((s7.port, s8.port))
    gw = {
        "id": "gw-01",
        "protocol": "mqtt",
        "location": LOCATION,
        "tags": [{"name": "amb", "topic": f"sensors/{flow_id}/amb", "value_path": "v", "unit": "degC"}],
    }
    spec["devices"].append(gw)
    watcher = Watcher(mqtt_url)
    assert watcher.subscribed.wait(10)
    flow = Flow(tmp_path, spec, db, mqtt_url, flow_id=flow_id, version=1)

    def sent(topic: str, value: float, expect: float) -> bool:
        watcher.client.publish(topic, json.dumps({"v": value}), qos=1)
        return watcher.last("gw-01", "amb") == pytest.approx(expect)

    try:
        started(flow, watcher)
        wait_for(lambda: sent(f"sensors/{flow_id}/amb", 21.5, 21.5), timeout=30, interval=0.3, what="amb")
        changed = copy.deepcopy(gw)
        changed["tags"] = [
            {
                "name": "amb",
                "topic": f"sensors/{flow_id}/amb2",
                "value_path": "v",
                "scale": 10.0,
                "unit": "degC",
            },
            {"name": "hum", "topic": f"sensors/{flow_id}/hum", "value_path": "v", "unit": "%"},
        ]
        publish_device_configs(mqtt_url, flow_id, 2, {"gw-01": changed})
        wait_for(
            lambda: sent(f"sensors/{flow_id}/amb2", 2.0, 20.0), timeout=30, interval=0.3, what="new topic"
        )
        wait_for(
            lambda: (
                watcher.client.publish(f"sensors/{flow_id}/hum", '{"v": 40}', qos=1)
                and watcher.last("gw-01", "hum") == 40.0
            ),
            timeout=30,
            interval=0.3,
            what="the added tag",
        )
        wait_for(lambda: registered(db, "gw-01", "hum"), timeout=30, what="the added tag in nexus_tags")
        # The old topic is not subscribed any more: its messages make no points.
        n = len(watcher.values("gw-01", "amb"))
        watcher.client.publish(f"sensors/{flow_id}/amb", json.dumps({"v": 99}), qos=1).wait_for_publish(5)
        wait_for(
            lambda: sent(f"sensors/{flow_id}/amb2", 3.0, 30.0), timeout=30, interval=0.3, what="a marker"
        )
        assert not {99.0, 990.0} & set(watcher.values("gw-01", "amb")[n:])
        # the status is published once a second: the next report carries the device's new version
        wait_for(lambda: device_status(watcher, "gw-01") == 2, timeout=20, what="version 2 on the status")
        assert flow.alive()
    finally:
        watcher.close()
        code = flow.stop()
    assert code == 0, flow.output()


def test_in_a_two_process_cluster_the_owner_applies_the_change(
    tmp_path: Path, sims: tuple[ModbusSimulator, ModbusSimulator], db: str, mqtt_url: str, flow_id: str
) -> None:
    """Every process hears the notification; the one whose partition polls the device applies it,
    and the config item reaches the keyed steps wherever Bytewax routes the device's key."""
    s7, s8 = sims
    spec = spec_for((s7.port, s8.port))
    spec["devices"][0]["tags"][1]["deadband"] = {"absolute": 0.5}  # speed: a stateful step's parameter
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    watcher = Watcher(mqtt_url)
    assert watcher.subscribed.wait(10)
    flows = [
        Flow(tmp_path, spec, db, mqtt_url, flow_id=flow_id, version=1, cluster=(i, addresses)) for i in (0, 1)
    ]
    try:
        wait_for(
            lambda: (
                any(not f.alive() for f in flows)
                or (watcher.last("press-07", "temp") is not None and watcher.last("tank-01", "level"))
            ),
            timeout=120,
            what="the first values of both devices",
        )
        assert all(f.alive() for f in flows), [f.output() for f in flows]
        pids = [f.proc.pid for f in flows]
        connections = s7.connections_accepted
        section = copy.deepcopy(spec["devices"][0])
        section["tags"][0]["scale"] = 1.0
        section["tags"][1]["deadband"] = {"absolute": 5000}  # speed moves no more than this
        publish_device_configs(mqtt_url, flow_id, 2, {"press-07": section})
        wait_for(
            lambda: watcher.last("press-07", "temp") == pytest.approx(250.0), timeout=30, what="new scale"
        )

        def owners() -> list[int | None]:
            with watcher.lock:
                docs = [
                    d
                    for d in watcher.statuses.values()
                    if d.get("pid") in pids and d.get("state") == "running"
                ]
                return [((d.get("devices") or {}).get("press-07") or {}).get("version") for d in docs]

        wait_for(
            lambda: sorted(owners(), key=str) == [2, None], timeout=30, what="one owner reporting version 2"
        )
        n = len(watcher.values("press-07", "speed"))
        s7.set_value("press-07", SPEED, 3000)  # +1800: inside the new band, outside the old one
        s7.set_value("press-07", TEMP, 260)
        wait_for(
            lambda: watcher.last("press-07", "temp") == pytest.approx(260.0), timeout=30, what="a later poll"
        )
        assert len(watcher.values("press-07", "speed")) == n  # the new deadband held it back
        assert all(f.alive() for f in flows) and [f.proc.pid for f in flows] == pids
        assert s7.connections_accepted == connections
    finally:
        watcher.close()
        for f in flows:
            f.proc.send_signal(signal.SIGTERM)
        codes = [f.stop(signal_first=False) for f in flows]
    assert codes == [0, 0], [f.output() for f in flows]
