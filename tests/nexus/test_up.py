"""``nexus up`` / ``nexus demo`` as a user runs them: a subprocess on the test's PostgreSQL and broker,
stopped with Ctrl-C (SIGINT) — everything it started must be gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from control.store import ConfigStore
from control.supervisor import flow_processes
from nexus.embedded import free_port, port_accepts
from nexus.up import simulation_key
from tests.control.desired import small_spec

pytestmark = pytest.mark.integration

START_S = 120.0


def _up(tmp_path: Path, db: str, mqtt_url: str, api_port: int, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NEXUS_DATABASE_URL": db,
        "NEXUS_MQTT_URL": mqtt_url,
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        "NEXUS_API_PORT": str(api_port),
        "NEXUS_SNAPSHOT_INTERVAL_S": "1",
    }
    out = (tmp_path / f"nexus-{len(list(tmp_path.glob('nexus-*.log')))}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "nexus.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=120)


def test_demo_imports_once_serves_simulators_and_ctrl_c_stops_everything(
    tmp_path: Path, db: str, mqtt_url: str, wait_for: Any
) -> None:
    sim_port = free_port()
    spec_file = tmp_path / "line.json"
    spec_file.write_text(json.dumps(small_spec("line", sim_port)))
    api_port = free_port()
    proc = _up(tmp_path, db, mqtt_url, api_port, "demo", "--spec", str(spec_file))
    data = tmp_path / "data"
    try:
        wait_for(lambda: port_accepts("127.0.0.1", api_port), timeout=START_S, what="API")
        assert _get(f"http://127.0.0.1:{api_port}/health") == {"status": "ok"}
        wait_for(lambda: port_accepts("127.0.0.1", sim_port), timeout=30, what="simulator")
        procs = wait_for(lambda: flow_processes(data, "line"), timeout=START_S, what="flow process")
        assert [(f, i) for f, i, _ in procs] == [("line", 0)]
        log = (tmp_path / "nexus-0.log").read_text()
        assert f"http://127.0.0.1:{api_port}" in log
        # the first start made an admin: its random password printed once and kept in a 0600 file
        password_file = data / "admin-password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 20 and log.count(password) == 1
    finally:
        rc = _stop(proc)
    assert rc == 0, (tmp_path / "nexus-0.log").read_text()[-3000:]
    assert flow_processes(data) == []
    assert not port_accepts("127.0.0.1", api_port)
    assert not port_accepts("127.0.0.1", sim_port)

    # a second start keeps the store as it was (no second import) and runs the flow again
    store = ConfigStore(db)
    try:
        assert [v.number for v in store.list_versions("line")] == [1]
    finally:
        store.close()
    proc = _up(tmp_path, db, mqtt_url, api_port, "demo", "--spec", str(spec_file))
    try:
        wait_for(lambda: flow_processes(data, "line"), timeout=START_S, what="flow process again")
    finally:
        assert _stop(proc) == 0
    assert flow_processes(data) == []
    assert "created user" not in (tmp_path / "nexus-1.log").read_text()  # the admin exists: made once


def test_simulation_key_ignores_what_simulators_do_not_serve() -> None:
    a = small_spec("f", 1)
    b = small_spec("f", 1, scale=3.0, window=True)
    c = small_spec("f", 2)
    assert simulation_key(a) == simulation_key(b)
    assert simulation_key(a) != simulation_key(c)
