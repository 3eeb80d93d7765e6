"""Issue 8's end-to-end checks, as a user meets them: ``nexus up --simulate`` in its own process on the
test's PostgreSQL and broker, flows changed through the REST API, values watched on the broker and in
the historian, processes watched with psutil.

One scenario, in order: a hot scale change (same PID, same TCP connection to the simulator, no gap for
the other device, new values within two polls); a window operator added (redeploy, deadband state
resumes, status shows the new version); a rollback (and its diff); ``kill -9`` of the flow (restarted);
``kill -9`` of the whole ``nexus up`` (supervisor) and a new one (exactly one process per flow, the
same one, adopted); two clients updating the same version (one 409).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from control.supervisor import flow_processes
from nexus.embedded import free_port, port_accepts
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

FLOW = "e2e-line"
POLL_S = 1.0
START_S = 150.0  # a flow's first start imports the whole project; slow on a busy shared machine
ADMIN_PASSWORD = "e2e-admin-password-0123"
"""`nexus up` makes its first admin with this password (NEXUS_ADMIN_PASSWORD)."""


def spec_doc(sim_port: int) -> dict[str, Any]:
    def device(n: int, tags: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": f"dev-{n}",
            "connection": {"host": "127.0.0.1", "port": sim_port, "unit_id": n, "timeout_s": 1.0},
            "poll_interval_s": POLL_S,
            "location": {"enterprise": "e2e", "site": "s1", "area": "a1", "line": "l1"},
            "tags": tags,
        }

    return {
        "version": 1,
        "id": FLOW,
        "devices": [
            device(
                1,
                [
                    # no deadband: published at every poll, so polls can be counted on the broker
                    {
                        "name": "level",
                        "table": "holding",
                        "address": 0,
                        "data_type": "int16",
                        "simulate": {"kind": "constant", "offset": 42},
                    },
                    # deadbanded and unchanging: published once; a fresh deadband state publishes it again
                    {
                        "name": "steady",
                        "table": "holding",
                        "address": 1,
                        "data_type": "int16",
                        "deadband": {"absolute": 0.5, "heartbeat_s": 3600},
                        "simulate": {"kind": "constant", "offset": 7},
                    },
                ],
            ),
            device(
                2,
                [
                    {
                        "name": "level",
                        "table": "holding",
                        "address": 0,
                        "data_type": "int16",
                        "simulate": {"kind": "constant", "offset": 10},
                    }
                ],
            ),
        ],
        "operators": [{"id": "normalize", "type": "normalize"}, {"id": "deadband", "type": "deadband"}],
        "sinks": [
            {"id": "uns", "type": "mqtt_uns", "qos": 1, "retain": False},
            {"id": "historian", "type": "historian", "max_delay_s": 0.5},
        ],
    }


@dataclass
class Msg:
    device: str
    tag: str
    value: float
    timestamp: datetime
    seq: int


@dataclass
class Watch:
    """Every telemetry message of the flow, in arrival order."""

    mqtt_url: str
    msgs: list[Msg] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        url = parse_mqtt_url(self.mqtt_url)
        self.client = make_client(url, unique_client_id("e2e-watch"))
        self.client.on_connect = lambda c, *_: c.subscribe("e2e/s1/a1/l1/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(url.host, url.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 6:
            return  # aggregates, alerts
        data = json.loads(msg.payload)
        value = data.get("value")  # null while the device is unreachable (bad quality)
        stamp = datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00"))
        with self.lock:
            self.msgs.append(
                Msg(parts[4], parts[5], math.nan if value is None else float(value), stamp, len(self.msgs))
            )

    def mark(self) -> int:
        with self.lock:
            return len(self.msgs)

    def since(self, mark: int, device: str, tag: str) -> list[Msg]:
        with self.lock:
            return [m for m in self.msgs[mark:] if m.device == device and m.tag == tag]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Platform:
    """``nexus up --simulate`` as a subprocess; restartable; its API through httpx."""

    def __init__(self, tmp_path: Path, db: str, mqtt_url: str) -> None:
        self.tmp_path = tmp_path
        self.data = tmp_path / "data"
        self.port = free_port()
        self.env = {
            **os.environ,
            "NEXUS_DATABASE_URL": db,
            "NEXUS_MQTT_URL": mqtt_url,
            "NEXUS_DATA_DIR": str(self.data),
            "NEXUS_API_PORT": str(self.port),
            "NEXUS_SNAPSHOT_INTERVAL_S": "1",
            "NEXUS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def start(self) -> None:
        self.runs += 1
        log = (self.tmp_path / f"nexus-up-{self.runs}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "up", "--simulate"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: port_accepts("127.0.0.1", self.port), timeout=START_S, what="the API")
        # each start signs tokens with a new key (no NEXUS_AUTH_SECRET): log in again
        r = self.api.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        self.api.cookies.clear()
        self.api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.tmp_path.glob("nexus-up-*.log"))
        )

    def status(self) -> dict[str, Any]:
        r = self.api.get(f"/api/v1/flows/{FLOW}/status")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def running(
        self, version: int | None = None, other_than: list[int] | None = None
    ) -> dict[str, Any] | None:
        s = self.status()
        if s["state"] != "running" or not s["pids"]:
            return None
        if version is not None and s["version"] != version:
            return None
        if other_than is not None and set(s["pids"]) & set(other_than):
            return None
        return s

    def deploy(self) -> dict[str, Any]:
        r = self.api.post(f"/api/v1/flows/{FLOW}/deploy")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def latest(self) -> int:
        r = self.api.get(f"/api/v1/flows/{FLOW}")
        assert r.status_code == 200, r.text
        return int(r.json()["latest_version"])

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=120)


@pytest.fixture
def platform(tmp_path: Path, db: str, mqtt_url: str) -> Iterator[Platform]:
    p = Platform(tmp_path, db, mqtt_url)
    try:
        yield p
    finally:
        p.stop()
        for _, _, pid in flow_processes(p.data):  # whatever a failed test left behind
            os.kill(pid, signal.SIGKILL)


def sim_connections(pid: int, sim_port: int) -> set[tuple[str, int]]:
    """The flow process's established TCP connections to the simulator (local address, port)."""
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return {
        (c.laddr.ip, c.laddr.port)
        for c in conns
        if c.raddr and c.raddr.port == sim_port and c.status == psutil.CONN_ESTABLISHED
    }


def stored(db: str, device: str, tag: str, value: float) -> bool:
    sql = (
        "SELECT count(*) FROM nexus_points p JOIN nexus_tags t USING (tag_id) "
        "WHERE t.device_id = %s AND t.name = %s AND p.value = %s"
    )
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(sql, (device, tag, value)).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0])


def republished(msgs: list[Msg]) -> int:
    """Good values of an unchanging deadbanded tag published right after a good one (a deadband that
    forgot its state). After a bad-quality point (a timed-out poll) the deadband rightly publishes the
    good value again."""
    good = [not math.isnan(m.value) for m in msgs]
    assert any(good), "the deadbanded tag was never published with a value"
    return sum(1 for before, now in itertools.pairwise(good) if before and now)


def test_control_plane_end_to_end(platform: Platform, db: str, mqtt_url: str) -> None:
    sim_port = free_port()
    doc = spec_doc(sim_port)
    watch = Watch(mqtt_url)
    watch.start()
    try:
        platform.start()
        api = platform.api
        r = api.post("/api/v1/flows", json={"spec": doc, "message": "first"})
        assert r.status_code == 201, r.text
        assert platform.deploy()["version"] == 1
        s1 = wait_for(lambda: platform.running(1), timeout=START_S, what="v1 running")
        (pid,) = s1["pids"]
        wait_for(lambda: len(watch.since(0, "dev-1", "level")) >= 3, timeout=60, what="dev-1 values")
        # a poll that times out on a loaded machine publishes a bad-quality point (null value): skip those
        assert {m.value for m in watch.since(0, "dev-1", "level") if not math.isnan(m.value)} == {42.0}
        # the deadband publishes it once; a timed-out poll between (bad quality) makes it publish again
        assert republished(watch.since(0, "dev-1", "steady")) == 0
        conns = wait_for(lambda: sim_connections(pid, sim_port), timeout=30, what="the device connection")

        # --- 1. hot: a tag's scale through the API ----------------------------------------------------
        v = platform.latest()
        r = api.patch(
            f"/api/v1/flows/{FLOW}/devices/dev-1/tags/level",
            json={"scale": 2.0},
            headers={"If-Match": f'"{v}"'},
        )
        assert r.status_code == 200, r.text
        mark = watch.mark()
        answer = platform.deploy()
        assert answer["path"] == "hot", answer
        hot_version = answer["version"]
        wait_for(
            lambda: any(m.value == 84.0 for m in watch.since(mark, "dev-1", "level")),
            timeout=60,
            what="scaled value published",
        )
        after = watch.since(mark, "dev-1", "level")
        first_new = next(i for i, m in enumerate(after) if m.value == 84.0)
        assert first_new <= 2, f"{first_new} polls with the old scale after the deploy answered"
        assert all(m.value == 84.0 for m in after[first_new:])
        wait_for(lambda: stored(db, "dev-1", "level", 84.0), timeout=60, what="scaled value stored")
        s2 = wait_for(lambda: platform.running(hot_version), timeout=30, what="status shows the hot version")
        assert s2["pids"] == [pid], "a hot change must not restart the flow"
        assert sim_connections(pid, sim_port) == conns, "a hot change must not reconnect to the device"
        metrics = api.get("/metrics").text
        assert 'nexus_deploys_total{path="hot"} 1.0' in metrics
        assert 'nexus_flows{state="running"} 1.0' in metrics
        # the other device kept its schedule: no missing poll around the change
        wait_for(lambda: len(watch.since(mark, "dev-2", "level")) >= 6, timeout=60, what="dev-2 values")
        stamps = [m.timestamp.timestamp() for m in watch.since(max(0, mark - 20), "dev-2", "level")]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert max(gaps) < 2.5 * POLL_S, f"dev-2 has a gap of {max(gaps):.2f} s around the hot change"

        # --- 2. redeploy: a window operator through the API -------------------------------------------
        r = api.get(f"/api/v1/flows/{FLOW}/versions/{platform.latest()}")
        assert r.status_code == 200, r.text
        current = r.json()["spec"]
        with_window = copy.deepcopy(current)
        with_window["operators"].insert(1, {"id": "agg", "type": "window", "windows": ["10s"]})
        r = api.put(
            f"/api/v1/flows/{FLOW}",
            json={"spec": with_window, "message": "add a window"},
            headers={"If-Match": f'"{platform.latest()}"'},
        )
        assert r.status_code == 200, r.text
        answer = platform.deploy()
        assert answer["path"] == "redeploy", answer
        window_version = answer["version"]
        s3 = wait_for(
            lambda: platform.running(window_version, other_than=[pid]),
            timeout=START_S,
            what="the redeployed version running",
        )
        (pid2,) = s3["pids"]
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        mark = watch.mark()
        wait_for(
            lambda: len(watch.since(mark, "dev-1", "level")) >= 4, timeout=60, what="values after redeploy"
        )
        assert republished(watch.since(0, "dev-1", "steady")) == 0, (
            "the deadband state did not resume: the unchanged tag was published again"
        )

        # --- 3. rollback to the version before the window, and the diff -----------------------------
        r = api.get(f"/api/v1/flows/{FLOW}/diff", params={"from": hot_version, "to": window_version})
        assert r.status_code == 200, r.text
        assert "agg" in json.dumps(r.json())
        r = api.post(
            f"/api/v1/flows/{FLOW}/rollback",
            json={"version": hot_version},
            headers={"If-Match": f'"{platform.latest()}"'},
        )
        assert r.status_code == 200, r.text
        rolled = r.json()
        assert rolled["path"] == "redeploy", rolled
        s4 = wait_for(
            lambda: platform.running(rolled["version"], other_than=[pid2]),
            timeout=START_S,
            what="rolled back",
        )
        r = api.get(f"/api/v1/flows/{FLOW}/versions/{rolled['version']}")
        assert [o["id"] for o in r.json()["spec"]["operators"]] == ["normalize", "deadband"]
        (pid3,) = s4["pids"]

        # --- 4. kill -9 of the flow: restarted ---------------------------------------------------------
        restarts = s4["restarts"]
        os.kill(pid3, signal.SIGKILL)
        s5 = wait_for(lambda: platform.running(other_than=[pid3]), timeout=START_S, what="restarted flow")
        assert s5["restarts"] == restarts + 1
        assert f'nexus_flow_restarts_total{{flow="{FLOW}"}} 1.0' in api.get("/metrics").text
        (pid4,) = s5["pids"]

        # --- 5. kill -9 of the supervisor (nexus up), then start again: one process per flow ----------
        assert platform.proc is not None
        platform.proc.kill()
        platform.proc.wait()
        assert [p[2] for p in flow_processes(platform.data, FLOW)] == [pid4]  # the flow outlives it
        platform.start()
        s6 = wait_for(lambda: platform.running(rolled["version"]), timeout=START_S, what="adopted")
        assert s6["pids"] == [pid4]
        assert flow_processes(platform.data) == [(FLOW, 0, pid4)]

        # --- 6. two clients update the same version: one 409 ------------------------------------------
        v = platform.latest()
        answers = [
            api.patch(
                f"/api/v1/flows/{FLOW}/devices/dev-2/tags/level",
                json={"scale": k},
                headers={"If-Match": f'"{v}"'},
            ).status_code
            for k in (3.0, 4.0)
        ]
        assert sorted(answers) == [200, 409]

        # --- Ctrl-C: everything stops, nothing is left ------------------------------------------------
        assert platform.stop() == 0, platform.logs()
        assert flow_processes(platform.data) == []
    except BaseException:
        print(platform.logs())
        raise
    finally:
        watch.stop()
