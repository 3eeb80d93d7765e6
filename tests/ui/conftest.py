"""Browser tests of the web UI: the real platform (``nexus up --simulate`` on the test PostgreSQL and broker)
and Debian's chromium driven by Playwright.

- ``platform`` (session): ``nexus up --simulate`` in its own process on a fresh database, with a seeded
  flow (``ui-line``: one simulated Modbus device, UNS and historian sinks) deployed through the API.
- ``browser`` (session): headless ``/usr/bin/chromium`` (no browser download: Playwright's own builds
  are never installed).
- ``page`` (per test): a fresh context; every console error and uncaught page error fails the test,
  and a failing test leaves a screenshot in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from nexus.embedded import free_port, port_accepts
from tests.conftest import wait_for

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLOW = "ui-line"
START_S = 180.0
"""A flow's first start imports the whole project: slow on a busy shared machine."""
ADMIN_PASSWORD = secrets.token_urlsafe(16)

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.integration

if not CHROMIUM.exists():  # pragma: no cover - CI installs it (.ci/run)
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)


def seed_spec(sim_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "id": FLOW,
        "description": "seeded by the UI tests",
        "devices": [
            {
                "id": "seed-1",
                "connection": {"host": "127.0.0.1", "port": sim_port, "unit_id": 1, "timeout_s": 1.0},
                "poll_interval_s": 1.0,
                "location": {"enterprise": "uitest", "site": "s1", "area": "a1", "line": "l1"},
                "tags": [
                    {
                        "name": "temperature",
                        "table": "holding",
                        "address": 0,
                        "data_type": "int16",
                        "scale": 0.1,
                        "unit": "degC",
                        "simulate": {"kind": "sine", "offset": 500, "amplitude": 100, "period_s": 60},
                    },
                    {
                        "name": "setpoint",
                        "table": "holding",
                        "address": 1,
                        "data_type": "int16",
                        "access": "read_write",
                        "simulate": {"kind": "constant", "offset": 7},
                    },
                ],
            }
        ],
        "operators": [{"id": "normalize", "type": "normalize"}],
        "sinks": [
            {"id": "uns", "type": "mqtt_uns", "qos": 1, "retain": False},
            {"id": "historian", "type": "historian", "max_delay_s": 0.5},
        ],
    }


@dataclass
class Platform:
    """The running platform: its URL, an API client (admin once log-in exists) and its process."""

    url: str
    api: httpx.Client
    proc: subprocess.Popen[bytes]
    log: Path
    data: Path
    auth: bool = False
    passwords: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def login_headers(self, username: str) -> dict[str, str]:
        if not self.auth:
            return {}
        r = self.api.post(
            "/api/v1/auth/login", json={"username": username, "password": self.passwords[username]}
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def user(self, role: str) -> str:
        """A user with ``role`` (created once; ``admin`` is the first one); its name."""
        name = "admin" if role == "admin" else f"ui-{role}"
        if name in self.passwords or not self.auth:
            return name
        password = secrets.token_urlsafe(16)
        r = self.api.post("/api/v1/users", json={"username": name, "password": password, "role": role})
        assert r.status_code in (200, 201), r.text
        self.passwords[name] = password
        return name

    def flow_running(self) -> bool:
        r = self.api.get(f"/api/v1/flows/{FLOW}/status")
        return r.status_code == 200 and r.json().get("state") == "running"


@pytest.fixture(scope="session")
def ui_db(postgres_url: str) -> Iterator[str]:
    """A database for the session's platform (the per-test ``db`` fixture is function-scoped)."""
    name = f"ui_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def platform(ui_db: str, mqtt_url: str) -> Iterator[Platform]:
    folder = Path(tempfile.mkdtemp(prefix="nexus-ui-"))
    port = free_port()
    env = {
        **os.environ,
        "NEXUS_DATABASE_URL": ui_db,
        "NEXUS_MQTT_URL": mqtt_url,
        "NEXUS_DATA_DIR": str(folder / "data"),
        "NEXUS_API_PORT": str(port),
        "NEXUS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "NEXUS_SNAPSHOT_INTERVAL_S": "1",
    }
    log = folder / "nexus-up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus.cli", "up", "--simulate"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    p = Platform(url, httpx.Client(base_url=url, timeout=30), proc, log, folder / "data")
    try:
        wait_for(
            lambda: port_accepts("127.0.0.1", port) or proc.poll() is not None,
            timeout=START_S,
            what="the API",
        )
        assert proc.poll() is None, p.logs()
        probe = p.api.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        if probe.status_code != 404:
            assert probe.status_code == 200, probe.text
            p.auth = True
            p.passwords["admin"] = ADMIN_PASSWORD
            p.api.headers.update({"Authorization": f"Bearer {probe.json()['access_token']}"})
            # the session outlives an access token (15 min): the tests' own client uses an API key
            key = p.api.post("/api/v1/keys", json={"name": "ui-tests", "role": "admin"})
            assert key.status_code == 201, key.text
            p.api.headers.update({"Authorization": f"Bearer {key.json()['key']}"})
        r = p.api.post("/api/v1/flows", json={"spec": seed_spec(free_port()), "message": "UI test seed"})
        assert r.status_code == 201, r.text
        r = p.api.post(f"/api/v1/flows/{FLOW}/deploy", json={})
        assert r.status_code == 200, r.text
        yield p
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        from control.supervisor import flow_processes

        for _, _, pid in flow_processes(folder / "data"):  # whatever a failed stop left behind
            os.kill(pid, signal.SIGKILL)
        p.api.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# Network answers the UI expects and handles (Chromium logs each failed request as a console error):
# the "who am I" probe before log-in (401) and on an API without log-in (404).
EXPECTED_NETWORK = re.compile(r"/api/v1/auth/(me|refresh|ws-ticket)$")


@dataclass
class UI:
    page: Any
    platform: Platform
    errors: list[str]
    expected: list[str] = field(default_factory=list)
    """URLs whose failed answer the test provokes on purpose (a forced 403)."""

    def goto(self, path: str) -> None:
        self.page.goto(self.platform.url + path)

    def login(self, role: str = "admin") -> None:
        """Log in through the login page (no-op on an API without log-in)."""
        self.goto("/")
        if not self.platform.auth:
            self.page.get_by_test_id("user-menu").wait_for()
            return
        name = self.platform.user(role)
        self.page.wait_for_url(re.compile(r"/login"))
        self.page.fill("input[name=username]", name)
        self.page.fill("input[name=password]", self.platform.passwords[name])
        self.page.get_by_role("button", name="Log in").click()
        self.page.get_by_test_id("user-menu").wait_for()


def _make_ui(
    browser: Any, platform: Platform, request: pytest.FixtureRequest, size: dict[str, int]
) -> Iterator[UI]:
    context = browser.new_context(viewport=size)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    ui = UI(page, platform, errors)

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        where = msg.location.get("url", "") if isinstance(msg.location, dict) else ""
        if "Failed to load resource" in msg.text and (EXPECTED_NETWORK.search(where) or where in ui.expected):
            return
        errors.append(f"console: {msg.text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    try:
        yield ui
    finally:
        failed = any(
            getattr(request.node, f"rep_{w}", None) and getattr(request.node, f"rep_{w}").failed
            for w in ("setup", "call")
        )
        if failed:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()
    assert not errors, "the browser logged errors:\n" + "\n".join(errors)


@pytest.fixture
def ui(browser: Any, platform: Platform, request: pytest.FixtureRequest) -> Iterator[UI]:
    yield from _make_ui(browser, platform, request, {"width": 1280, "height": 800})
