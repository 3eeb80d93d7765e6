"""Secrets never leak, and nothing listens beyond loopback, checked on the real platform.

``nexus up --simulate`` runs on a PostgreSQL role with a password, a mosquitto that requires a
password, a command key, an admin password and a flow whose OPC UA device logs in with a
password. The flow is deployed, read, written through the API and sent an unsigned command; then
every line the platform printed or logged, every status message and every message on the broker,
and every answer of every GET route of the API is searched for each secret. While it runs, every
listening socket of the platform's processes must be on a loopback address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from control.supervisor import flow_processes
from nexus.embedded import free_port, port_accepts
from tests.broker.mosquitto import broker_folder, mosquitto, needs_mosquitto, password_file
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, needs_mosquitto]

FLOW = "leak-line"
START_S = 150.0
SECRETS = {
    "database password": "db-pw-" + uuid.uuid4().hex,
    "broker password": "mqtt-pw-" + uuid.uuid4().hex,
    "device password": "opcua-pw-" + uuid.uuid4().hex,
    "command key": "cmd-key-" + uuid.uuid4().hex,
    "admin password": "admin-pw-" + uuid.uuid4().hex,
}


def spec_doc(modbus_port: int, opcua_port: int) -> dict[str, Any]:
    location = {"enterprise": "leak", "site": "s1", "area": "a1", "line": "l1"}
    return {
        "version": 1,
        "id": FLOW,
        "devices": [
            {
                "id": "press",
                "connection": {"host": "127.0.0.1", "port": modbus_port, "unit_id": 1, "timeout_s": 1.0},
                "poll_interval_s": 0.5,
                "location": location,
                "tags": [
                    {"name": "level", "table": "holding", "address": 0, "data_type": "int16",
                     "simulate": {"kind": "constant", "offset": 42}},
                    {"name": "setpoint", "table": "holding", "address": 1, "data_type": "int16",
                     "access": "read_write"},
                ],
            },
            {
                "id": "oven",
                "protocol": "opcua",
                "connection": {
                    "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/plant/oven",
                    "username": "operator",
                    "password": SECRETS["device password"],
                    "timeout_s": 4,
                },
                "poll_interval_s": 0.5,
                "location": location,
                "tags": [{"name": "zone1", "node_id": "ns=2;s=Zone1", "simulate": {"kind": "constant", "offset": 180}}],
            },
        ],
        "sinks": [{"id": "uns", "type": "mqtt_uns", "qos": 1}, {"id": "historian", "type": "historian"}],
    }  # fmt: skip


@pytest.fixture
def db_url(db: str) -> str:
    """The test database, owned by a role that logs in with a password."""
    info = conninfo_to_dict(db)
    role = f"leak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRETS['database password']}'")
        conn.execute(f'ALTER DATABASE "{info["dbname"]}" OWNER TO {role}')
        conn.execute(f"ALTER SCHEMA public OWNER TO {role}")
    return (
        f"postgresql://{role}:{SECRETS['database password']}@{info['host']}:{info['port']}/{info['dbname']}"
    )


@pytest.fixture
def broker_url() -> Iterator[str]:
    with broker_folder() as folder:
        pw = password_file(folder, {"nexus": SECRETS["broker password"]})
        conf = f"listener {{port}} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\npersistence false\n"
        with mosquitto(folder, conf) as port:
            yield f"mqtt://nexus:{SECRETS['broker password']}@127.0.0.1:{port}"


class Everything:
    """Every message on the broker (``#`` and ``$nexus/#``), as text."""

    def __init__(self, url: str) -> None:
        u = parse_mqtt_url(url)
        self.messages: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.client = make_client(u, unique_client_id("leak-watch"))
        self.client.on_connect = lambda c, *_: c.subscribe([("#", 1), ("$nexus/#", 1)])
        self.client.on_message = self._on_message
        self.client.connect(u.host, u.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload).decode("utf-8", "replace")))

    def on(self, prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            found = [p for t, p in self.messages if t.startswith(prefix)]
        return [json.loads(p) for p in found if p.startswith("{")]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def auth_headers(api: httpx.Client) -> dict[str, str]:
    """Bearer headers for the admin once log-in exists (sec-auth); none before."""
    r = api.post("/api/v1/auth/login", json={"username": "admin", "password": SECRETS["admin password"]})
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def listening(pids: list[int]) -> set[tuple[str, int, int]]:
    """(address, port, pid) of every listening TCP/UDP socket of these processes."""
    found = set()
    for pid in pids:
        try:
            for c in psutil.Process(pid).net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == 2 and c.laddr and not c.raddr):
                    found.add((c.laddr.ip, c.laddr.port, pid))
        except psutil.NoSuchProcess:
            continue
    return found


def get_every_route(api: httpx.Client, headers: dict[str, str]) -> list[str]:
    """The answers of every GET route of the OpenAPI document, path parameters filled in."""
    values = {"flow_id": FLOW, "device_id": "oven", "tag": "zone1", "number": "1", "a": "1", "b": "2"}
    doc = api.get("/schema/openapi.json", headers=headers).json()
    answers = []
    for path, ops in doc["paths"].items():
        if "get" not in ops or path.endswith("/ws"):
            continue
        names = [p["name"] for p in ops["get"].get("parameters", []) if p["in"] == "path"]
        if any(n not in values for n in names):
            continue
        r = api.get(path.format(**values), headers=headers)
        answers.append(f"GET {path} -> {r.status_code}\n{r.text}")
    return answers


@pytest.fixture
def platform_env(tmp_path: Path, db_url: str, broker_url: str) -> Iterator[dict[str, str]]:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "NEXUS_DATABASE_URL": db_url,
        "NEXUS_MQTT_URL": broker_url,
        "NEXUS_DATA_DIR": str(data),
        "NEXUS_API_PORT": str(free_port()),
        "NEXUS_COMMAND_KEY": SECRETS["command key"],
        "NEXUS_ADMIN_PASSWORD": SECRETS["admin password"],
        "NEXUS_LOG_LEVEL": "DEBUG",
    }
    yield env
    for _, _, pid in flow_processes(data):  # whatever a failed test left behind
        os.kill(pid, signal.SIGKILL)


def test_no_secret_in_logs_status_messages_or_answers_and_only_loopback_listeners(
    tmp_path: Path, platform_env: dict[str, str], broker_url: str
) -> None:
    env = platform_env
    out = tmp_path / "nexus-up.log"
    doc = spec_doc(free_port(), free_port())
    watch = Everything(broker_url)
    api = httpx.Client(base_url=f"http://127.0.0.1:{env['NEXUS_API_PORT']}", timeout=30)
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "up", "--simulate"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    answers: list[str] = []
    try:
        wait_for(
            lambda: port_accepts("127.0.0.1", int(env["NEXUS_API_PORT"])), timeout=START_S, what="the API"
        )
        headers = auth_headers(api)
        r = api.post("/api/v1/flows", json={"spec": doc, "message": "secrets inside"}, headers=headers)
        assert r.status_code == 201, r.text
        answers.append(r.text)
        r = api.post(f"/api/v1/flows/{FLOW}/deploy", headers=headers)
        assert r.status_code == 200, r.text
        wait_for(
            lambda: any(m.get("quality") == "good" for m in watch.on("leak/s1/a1/l1/oven/zone1")),
            timeout=START_S,
            what="a good value of the OPC UA device that logs in with the password",
        )

        # a write through the API (signed with the key) and one straight to the broker (unsigned)
        write = f"/api/v1/flows/{FLOW}/devices/press/tags/setpoint/value"
        r = api.post(write, json={"value": 7, "timeout_s": 20}, headers=headers)
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
        answers.append(r.text)
        watch.client.publish("$nexus/cmd/press/setpoint/set", '{"value": 8, "request_id": "nosig"}', qos=1)
        wait_for(
            lambda: any(a.get("request_id") == "nosig" for a in watch.on("$nexus/cmd/press/setpoint/ack")),
            timeout=20,
            what="the refusal of the unsigned command",
        )
        if headers:  # with log-in (sec-auth): the refusal is in the audit log
            wait_for(
                lambda: any(
                    e["detail"].get("request_id") == "nosig"
                    for e in api.get(
                        "/api/v1/audit", params={"action": "command.rejected"}, headers=headers
                    ).json()
                ),
                timeout=20,
                what="the command.rejected audit entry",
            )
        # the API keeps a secret sent back masked, and answers errors without the secret
        r = api.get(f"/api/v1/flows/{FLOW}/devices/oven", headers=headers)
        device = r.json()
        assert device["connection"]["password"] == "***", device
        r = api.put(
            f"/api/v1/flows/{FLOW}/devices/oven", json={**device, "poll_interval_s": 0.6}, headers=headers
        )
        assert r.status_code == 200, r.text
        answers.append(r.text)
        bad = {**device, "connection": {**device["connection"], "timeout_s": -1}}
        answers.append(api.put(f"/api/v1/flows/{FLOW}/devices/oven", json=bad, headers=headers).text)
        answers += get_every_route(api, headers)
        status = api.get(f"/api/v1/flows/{FLOW}/status", headers=headers).json()
        assert status["state"] == "running", status

        # nothing listens beyond loopback: the API, the flow processes, the simulators
        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        sockets = listening(tree)
        assert any(port == int(env["NEXUS_API_PORT"]) for _, port, _ in sockets)
        public = {s for s in sockets if not (s[0].startswith("127.") or s[0] == "::1")}
        assert not public, f"listening beyond loopback: {public}"
    finally:
        watch.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    stored = psycopg.connect(env["NEXUS_DATABASE_URL"], autocommit=True)
    with stored:
        spec = stored.execute(
            "SELECT spec FROM nexus_config.flow_version ORDER BY number DESC LIMIT 1"
        ).fetchone()
    assert spec is not None
    assert spec[0]["devices"][1]["connection"]["password"] == SECRETS["device password"]  # kept, not "***"

    texts = {"nexus up output": out.read_text(errors="replace")}
    for f in (Path(env["NEXUS_DATA_DIR"]) / "flows").glob("*/logs/*.log"):
        texts[f"flow log {f.name}"] = f.read_text(errors="replace")
    texts["broker messages"] = "\n".join(f"{t} {p}" for t, p in watch.messages)
    texts["API answers"] = "\n".join(answers)
    assert watch.on("$nexus/status/"), "no status message was seen"
    assert "DEBUG" in texts["nexus up output"] + "".join(v for k, v in texts.items() if k.startswith("flow"))
    leaks = [
        f"{what} in {where}" for where, text in texts.items() for what, s in SECRETS.items() if s in text
    ]
    assert not leaks, leaks


def test_the_embedded_database_and_broker_listen_on_loopback_only(tmp_path: Path) -> None:
    """``nexus services`` (what ``nexus up``/``nexus demo`` start when nothing is configured)."""
    pg_port, mqtt_port = free_port(), free_port()
    env = {
        **os.environ,
        "NEXUS_DATABASE_URL": "",
        "NEXUS_MQTT_URL": "",
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        "NEXUS_PG_PORT": str(pg_port),
        "NEXUS_MQTT_PORT": str(mqtt_port),
    }
    out = tmp_path / "services.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "services"], env=env, stdout=log, stderr=log
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or "Press Ctrl-C" in out.read_text(),
            timeout=START_S,
            what="the embedded services",
        )
        assert proc.poll() is None, out.read_text()
        sockets = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port in (pg_port, mqtt_port)
        }
        assert {p for _, p in sockets} == {pg_port, mqtt_port}, (sockets, out.read_text())
        public = {s for s in sockets if not (s[0].startswith("127.") or s[0] == "::1")}
        assert not public, f"listening beyond loopback: {public}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
