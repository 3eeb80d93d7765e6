"""The flow designer in a real browser (Debian's chromium through Playwright), as a user meets it.

``nexus up --simulate`` runs in its own process on the test's PostgreSQL and broker (API, supervisor,
simulated loopback devices); the browser builds a flow by dragging palette items onto the canvas and
connecting their handles, sees the API's validation error on the node it concerns, deploys, and the
flow's points arrive in the historian. Every shipped spec is imported into the designer and exported
again, and the export must equal the original as data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from nexus.embedded import free_port
from tests.conftest import wait_for
from tests.ui.conftest import START_S, UI, Platform

pytestmark = pytest.mark.integration

SPECS = Path(__file__).resolve().parents[2] / "dataflows" / "specs"


@pytest.fixture
def designer(ui: UI) -> Iterator[UI]:
    """A logged-in page; the API's 422 for an invalid document is an answer the designer expects."""
    ui.expected.append(ui.platform.url + "/api/v1/flows/validate")
    ui.login("engineer")
    yield ui


def stop_flow(platform: Platform, flow: str) -> None:
    """Stop a flow a test deployed, so it does not load the session's shared platform."""
    r = platform.api.post(f"/api/v1/flows/{flow}/stop")
    assert r.status_code == 200, r.text


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


def flow_position(pg: Any, node_id: str) -> str:
    """A node's position on the canvas in flow coordinates (its `translate(x, y)`)."""
    return str(pg.locator(f'.react-flow__node[data-id="{node_id}"]').evaluate("e => e.style.transform"))


def historian_points(db: str, flow_device: str) -> int:
    sql = "SELECT count(*) FROM nexus_points p JOIN nexus_tags t USING (tag_id) WHERE t.device_id = %s"
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(sql, (flow_device,)).fetchone()
    except psycopg.Error:
        return 0  # the historian's tables appear when the flow first writes
    return int(row[0]) if row else 0


def test_build_flow_by_dragging_and_connecting(designer: UI, ui_db: str) -> None:
    pg, platform = designer.page, designer.platform
    designer.goto("/flows/new")
    pg.get_by_test_id("canvas").wait_for()

    # the flow's id, in the flow settings form (nothing selected)
    pg.locator("#f-flow_id").fill("designer-line")

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

    # the device: its id, and a loopback port the simulator serves (the palette's template says 502)
    node(pg, "devices:modbus").click()
    pg.locator("input[id$='_0_id']").fill("designer-press")
    sim_port = free_port()
    pg.locator("input[id$='_0_connection_port']").fill(str(sim_port))

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
    assert "redeploy" in result.inner_text()
    pg.wait_for_url("**/flows/designer-line")

    try:
        # what was stored is what was drawn: the chain, the sinks' inputs and the layout
        version = platform.api.get("/api/v1/flows/designer-line/versions/1")
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
        wait_for(
            lambda: historian_points(ui_db, "designer-press") > 0,
            timeout=START_S,
            interval=1.0,
            what="points in the historian",
        )

        # reopened, the flow looks as it was left (node positions in flow coordinates, whatever the zoom)
        before = {n: flow_position(pg, n) for n in stored["layout"]["nodes"]}
        pg.reload()
        node(pg, "window").wait_for()
        assert {n: flow_position(pg, n) for n in before} == before
    finally:
        stop_flow(platform, "designer-line")


@pytest.mark.parametrize(
    "spec_file", sorted(p.name for p in SPECS.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
)
def test_import_export_round_trip(designer: UI, spec_file: str, tmp_path: Path) -> None:
    pg = designer.page
    designer.goto("/flows/new")
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


def connect_by_menu(pg: Any, source: str, target: str) -> None:
    node(pg, source).click()
    pg.get_by_label("connect to node").select_option(target)
    pg.get_by_role("button", name="Connect", exact=True).click()


def test_keyboard_connect_menu_delete_versions_diff_rollback(designer: UI) -> None:
    pg, platform = designer.page, designer.platform
    designer.goto("/flows/new")
    pg.get_by_test_id("canvas").wait_for()
    pg.locator("#f-flow_id").fill("kb-line")
    # palette items are buttons: Enter adds the node (and selects it)
    for item in ("modbus", "normalize", "deadband", "historian"):
        pg.get_by_test_id(f"palette-{item}").focus()
        pg.keyboard.press("Enter")
    pg.locator("input[id$='_0_connection_port']").wait_for(state="detached")  # the historian is selected
    node(pg, "devices:modbus").click()
    pg.locator("input[id$='_0_id']").fill("kb-press")
    pg.locator("input[id$='_0_connection_port']").fill(str(free_port()))
    # connect through the inspector's menu: select a node, pick the target, Connect
    for source, target in (
        ("devices:modbus", "normalize"),
        ("normalize", "deadband"),
        ("deadband", "historian"),
    ):
        connect_by_menu(pg, source, target)
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
    connect_by_menu(pg, "normalize", "deadband")
    pg.get_by_test_id("save").click()
    pg.get_by_test_id("notice").filter(has_text="Saved version 2").wait_for()

    v2 = platform.api.get("/api/v1/flows/kb-line/versions/2").json()["spec"]
    assert [o["id"] for o in v2["operators"]] == ["normalize", "deadband"]
    assert v2["sinks"] == [{"id": "historian", "type": "historian", "input": "normalize"}]

    # versions: compare 1 and 2 side by side, then roll back to 1 (which deploys it)
    pg.get_by_role("button", name="Versions").click()
    pg.get_by_label("compare version 1").check()
    pg.get_by_label("compare version 2").check()
    diff = pg.get_by_test_id("diff")
    diff.wait_for()
    assert any("deadband" in line for line in diff.locator(".diff-add").all_inner_texts())
    try:
        pg.once("dialog", lambda d: d.accept())
        pg.get_by_role("button", name="Roll back to 1").click()
        result = pg.get_by_test_id("deploy-result")
        result.wait_for()
        assert "Deployed version 3" in result.inner_text()
        v3 = platform.api.get("/api/v1/flows/kb-line/versions/3").json()["spec"]
        assert [o["id"] for o in v3["operators"]] == ["normalize"]
    finally:
        stop_flow(platform, "kb-line")


def test_viewer_sees_the_flow_but_no_edit_controls(ui: UI) -> None:
    if not ui.platform.auth:
        pytest.skip("an API without log-in has no viewer")
    ui.login("viewer")
    pg = ui.page
    ui.goto("/flows/ui-line")
    node(pg, "normalize").wait_for()
    for control in ("deploy", "save", "palette-normalize", "palette-historian"):
        assert pg.get_by_test_id(control).is_disabled(), control
    assert pg.get_by_role("button", name="Delete node").count() == 0  # nothing selected yet
    node(pg, "normalize").click()
    assert pg.get_by_role("button", name="Delete node").is_disabled()
