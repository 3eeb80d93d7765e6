"""The flow designer in a real browser (Debian's chromium through Playwright), as a user meets it.

``nexus up --simulate`` runs in its own process on the test's PostgreSQL and broker (API, supervisor,
simulated loopback devices); the browser builds a flow by dragging palette items onto the canvas and
connecting their handles, sees the API's validation error on the node it concerns, deploys, and the
flow's points arrive in the historian. Every shipped spec is imported into the designer and exported
again, and the export must equal the original as data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import yaml

from control.supervisor import flow_processes
from nexus.embedded import free_port, port_accepts
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SPECS = Path(__file__).resolve().parents[2] / "dataflows" / "specs"
START_S = 150.0  # a flow's first start imports the whole project; slow on a busy shared machine
ADMIN_PASSWORD = "designer-test-password-1"


class Platform:
    """``nexus up --simulate`` as a subprocess, its API on a free port."""

    def __init__(self, tmp_path: Path, db: str, mqtt_url: str) -> None:
        self.tmp_path = tmp_path
        self.data = tmp_path / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "nexus-up.log"
        self.env = {
            **os.environ,
            "NEXUS_DATABASE_URL": db,
            "NEXUS_MQTT_URL": mqtt_url,
            "NEXUS_DATA_DIR": str(self.data),
            "NEXUS_API_PORT": str(self.port),
            "NEXUS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nexus.cli", "up", "--simulate"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: port_accepts("127.0.0.1", self.port), timeout=START_S, what="the API")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for _, _, pid in flow_processes(self.data):  # whatever a failed test left behind
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def platform(tmp_path: Path, db: str, mqtt_url: str) -> Iterator[Platform]:
    p = Platform(tmp_path, db, mqtt_url)
    try:
        p.start()
        yield p
    finally:
        p.stop()


EXPECTED_FAILURES = {
    ("POST", "/api/v1/flows/validate", 422),  # the designer asks the API about an invalid document
    ("GET", "/api/v1/auth/me", 404),  # an API without log-in: the app runs as an anonymous admin
}
"""Answers >= 400 a page may get; chromium logs each failed load as a console error too."""


@pytest.fixture
def page(platform: Platform, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A logged-in page at 1280x800; fails the test on any console error or unexpected failed
    request; saves a screenshot on failure."""
    errors: list[str] = []
    failed_before = request.session.testsfailed
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        pg = context.new_page()
        pg.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        pg.on(
            "response",
            lambda r: (
                errors.append(f"{r.request.method} {r.url} -> {r.status}")
                if r.status >= 400
                and (r.request.method, urlsplit(r.url).path, r.status) not in EXPECTED_FAILURES
                else None
            ),
        )
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(20_000)
        try:
            pg.goto(platform.url + "/flows")
            log_in_if_asked(pg)
            yield pg
            assert not errors, f"console errors: {errors}"
        finally:
            if request.session.testsfailed > failed_before or errors:
                ARTIFACTS.mkdir(exist_ok=True)
                pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            context.close()
            browser.close()


def log_in_if_asked(pg: Any) -> None:
    """Log in as the admin when the app asks (an API with log-in); nothing to do on one without."""
    pg.wait_for_load_state("networkidle")
    if "/login" not in pg.url:
        return
    pg.get_by_label("Username").fill("admin")
    pg.get_by_label("Password").fill(ADMIN_PASSWORD)
    pg.get_by_role("button", name="Log in").click()
    pg.wait_for_url(lambda u: "/login" not in u)


def node(pg: Any, node_id: str) -> Any:
    return pg.get_by_test_id(f"node-{node_id}")


def drop(pg: Any, palette_type: str, x: int, y: int) -> None:
    """Drag a palette item onto the canvas at (x, y) relative to the canvas (HTML5 drag and drop)."""
    pg.get_by_test_id(f"palette-{palette_type}").drag_to(
        pg.get_by_test_id("canvas"), target_position={"x": x, "y": y}
    )


def wire(pg: Any, source: str, target: str) -> None:
    """Drag from the source node's output handle to the target node's input handle."""
    node(pg, source).locator(".react-flow__handle.source").drag_to(
        node(pg, target).locator(".react-flow__handle.target")
    )


def historian_points(db: str, flow_device: str) -> int:
    sql = "SELECT count(*) FROM nexus_points p JOIN nexus_tags t USING (tag_id) WHERE t.device_id = %s"
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(sql, (flow_device,)).fetchone()
    except psycopg.Error:
        return 0  # the historian's tables appear when the flow first writes
    return int(row[0]) if row else 0


def test_build_flow_by_dragging_and_connecting(page: Any, platform: Platform, db: str) -> None:
    pg = page
    pg.goto(platform.url + "/flows/new")
    pg.get_by_test_id("canvas").wait_for()

    # the flow's id, in the flow settings form (nothing selected)
    pg.locator("#f-flow_id").fill("ui-line")

    drop(pg, "modbus", 30, 40)
    drop(pg, "normalize", 30, 200)
    drop(pg, "window", 30, 380)
    drop(pg, "historian", 330, 200)
    drop(pg, "mqtt_uns", 330, 420)
    for n in ("devices:modbus", "normalize", "window", "historian", "mqtt_uns"):
        node(pg, n).wait_for()

    wire(pg, "devices:modbus", "normalize")
    wire(pg, "normalize", "window")
    wire(pg, "window", "historian")
    wire(pg, "window", "mqtt_uns")
    edges = pg.locator(".react-flow__edge")
    wait_for(lambda: edges.count() == 4, timeout=10, what="four edges on the canvas")

    # the device: a loopback port the simulator serves (the palette's template says 502)
    node(pg, "devices:modbus").click()
    sim_port = free_port()
    port = pg.locator("input[id$='_0_connection_port']")
    port.fill(str(sim_port))

    # an invalid window length: the API's error is pinned on the window node
    node(pg, "window").click()
    windows = pg.locator("input[id$='_windows_0']")
    windows.fill("0s")
    errors = node(pg, "window").get_by_test_id("node-errors")
    errors.wait_for()
    assert "windows" in errors.inner_text()
    windows.fill("10s")
    errors.wait_for(state="detached")

    pg.get_by_test_id("deploy").click()
    result = pg.get_by_test_id("deploy-result")
    result.wait_for(timeout=60_000)
    assert "Deployed version 1" in result.inner_text()
    assert "redeploy" in result.inner_text() or "hot" in result.inner_text()
    pg.wait_for_url("**/flows/ui-line")

    # what was stored is what was drawn: the chain, the sinks' inputs and the layout
    api = httpx.Client(base_url=platform.url, timeout=30)
    version = api.get("/api/v1/flows/ui-line/versions/1")
    if version.status_code == 401:  # an API with log-in: the same request as the browser's
        cookies = {c["name"]: c["value"] for c in pg.context.cookies()}
        api.cookies.update(cookies)
        version = api.get("/api/v1/flows/ui-line/versions/1")
    assert version.status_code == 200, version.text
    stored = version.json()
    spec = stored["spec"]
    assert [(o["id"], o["type"]) for o in spec["operators"]] == [
        ("normalize", "normalize"),
        ("window", "window"),
    ]
    assert spec["operators"][1]["windows"] == ["10s"]
    assert {(s["type"], s.get("input")) for s in spec["sinks"]} == {
        ("historian", "window"),
        ("mqtt_uns", "window"),
    }
    assert spec["devices"][0]["connection"]["port"] == sim_port
    assert set(stored["layout"]["nodes"]) == {
        "devices:modbus",
        "normalize",
        "window",
        "historian",
        "mqtt_uns",
    }

    # the flow runs and its points arrive in the historian
    device = spec["devices"][0]["id"]
    wait_for(
        lambda: historian_points(db, device) > 0,
        timeout=START_S,
        interval=1.0,
        what="points in the historian",
    )

    # reopened, the flow looks as it was left
    positions = {n: node(pg, n).bounding_box() for n in ("normalize", "window")}
    pg.reload()
    node(pg, "window").wait_for()
    for n, box in positions.items():
        again = node(pg, n).bounding_box()
        assert box is not None and again is not None
        assert abs(again["x"] - box["x"]) < 2 and abs(again["y"] - box["y"]) < 2, n


@pytest.mark.parametrize(
    "spec_file", sorted(p.name for p in SPECS.glob("*.y*ml")) + sorted(p.name for p in SPECS.glob("*.json"))
)
def test_import_export_round_trip(page: Any, platform: Platform, spec_file: str, tmp_path: Path) -> None:
    pg = page
    pg.goto(platform.url + "/flows/new")
    pg.get_by_test_id("canvas").wait_for()
    pg.get_by_test_id("import-file").set_input_files(str(SPECS / spec_file))
    notice = pg.get_by_test_id("notice")
    notice.wait_for()
    assert "Imported" in notice.inner_text()
    original = yaml.safe_load((SPECS / spec_file).read_text())
    nodes = pg.locator(".react-flow__node")
    expected = len(original.get("operators", [])) + len(original.get("sinks", []))
    wait_for(lambda: nodes.count() >= expected + 1, timeout=10, what="the imported flow's nodes")
    with pg.expect_download() as download:
        pg.get_by_test_id("export").click()
    exported = tmp_path / "exported.yaml"
    download.value.save_as(exported)
    assert yaml.safe_load(exported.read_text()) == original


def api_client(platform: Platform, pg: Any) -> httpx.Client:
    """The API as the browser's user (its cookies and CSRF token when the API has log-in)."""
    cookies = {c["name"]: c["value"] for c in pg.context.cookies()}
    headers = {"X-CSRF-Token": cookies["nexus_csrf"]} if "nexus_csrf" in cookies else {}
    return httpx.Client(base_url=platform.url, timeout=30, cookies=cookies, headers=headers)


def test_keyboard_connect_menu_delete_versions_diff_rollback(page: Any, platform: Platform) -> None:
    pg = page
    pg.goto(platform.url + "/flows/new")
    pg.get_by_test_id("canvas").wait_for()
    pg.locator("#f-flow_id").fill("kb-line")
    # palette items are buttons: Enter adds the node (and selects it)
    for item in ("modbus", "normalize", "deadband", "historian"):
        pg.get_by_test_id(f"palette-{item}").focus()
        pg.keyboard.press("Enter")
    # connect through the inspector's menu: select a node, pick the target, Connect
    for source, target in (
        ("devices:modbus", "normalize"),
        ("normalize", "deadband"),
        ("deadband", "historian"),
    ):
        node(pg, source).click()
        pg.get_by_label("connect to node").select_option(target)
        pg.get_by_role("button", name="Connect", exact=True).click()
    wait_for(lambda: pg.locator(".react-flow__edge").count() == 3, timeout=10, what="three edges")
    # select with the keyboard (focus + Enter) and delete with the Delete key: the chain closes up
    node(pg, "deadband").locator("xpath=..").focus()
    pg.keyboard.press("Enter")
    pg.keyboard.press("Delete")
    node(pg, "deadband").wait_for(state="detached")
    wait_for(lambda: pg.locator(".react-flow__edge").count() == 2, timeout=10, what="two edges")
    pg.get_by_test_id("save").click()
    pg.wait_for_url("**/flows/kb-line")

    # a second version through the designer: a deadband again, after normalize
    node(pg, "normalize").wait_for()
    pg.get_by_test_id("palette-deadband").click()
    node(pg, "normalize").click()
    pg.get_by_label("connect to node").select_option("deadband")
    pg.get_by_role("button", name="Connect", exact=True).click()
    pg.get_by_test_id("save").click()
    pg.get_by_test_id("notice").filter(has_text="Saved version 2").wait_for()

    api = api_client(platform, pg)
    v2 = api.get("/api/v1/flows/kb-line/versions/2").json()["spec"]
    assert [o["id"] for o in v2["operators"]] == ["normalize", "deadband"]
    assert v2["sinks"] == [{"id": "historian", "type": "historian", "input": "normalize"}]

    # versions: compare 1 and 2 side by side, then roll back to 1
    pg.get_by_role("button", name="Versions").click()
    pg.get_by_label("compare version 1").check()
    pg.get_by_label("compare version 2").check()
    diff = pg.get_by_test_id("diff")
    diff.wait_for()
    assert any("deadband" in line for line in diff.locator(".diff-add").all_inner_texts())
    pg.once("dialog", lambda d: d.accept())
    pg.get_by_role("button", name="Roll back to 1").click()
    result = pg.get_by_test_id("deploy-result")
    result.wait_for()
    assert "Deployed version 3" in result.inner_text()
    v3 = api.get("/api/v1/flows/kb-line/versions/3").json()["spec"]
    assert [o["id"] for o in v3["operators"]] == ["normalize"]
