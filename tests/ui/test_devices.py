"""Devices and tags through the browser: a Modbus device with three tags made in the forms, its live
values, and a tag's scale changed and applied hot (the flow keeps running, the value follows)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from dataflows.spec import parse_spec
from nexus.demo import simulators_for
from nexus.embedded import free_port
from tests.ui.conftest import FLOW, START_S, UI

RAW = {"alpha": 100, "beta": 200, "gamma": 300}


@pytest.fixture
def plc() -> Iterator[int]:
    """A real Modbus TCP server (pymodbus) holding 100, 200, 300 in registers 0..2 of unit 3; its port."""
    port = free_port()
    doc = {
        "version": 1,
        "id": "plc",
        "devices": [
            {
                "id": "plc",
                "connection": {"host": "127.0.0.1", "port": port, "unit_id": 3},
                "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
                "tags": [
                    {
                        "name": name,
                        "table": "holding",
                        "address": i,
                        "data_type": "int16",
                        "simulate": {"kind": "constant", "offset": raw},
                    }
                    for i, (name, raw) in enumerate(RAW.items())
                ],
            }
        ],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}],
    }
    sims = simulators_for(parse_spec(doc))
    for sim in sims:
        sim.start()
    try:
        yield port
    finally:
        for sim in sims:
            sim.stop()


def value_cell(ui: UI, key: str) -> Any:
    return ui.page.locator(f'[data-tag="{key}"] [data-testid=value]')


def save_and_wait_applied(ui: UI) -> None:
    ui.page.get_by_role("button", name=re.compile(r"and apply")).click()
    ui.page.get_by_test_id("apply-result").wait_for()
    ui.page.get_by_test_id("apply-result").get_by_role("button", name="OK").click()


def test_create_a_modbus_device_with_three_tags_and_change_a_scale_hot(ui: UI, plc: int) -> None:
    ui.login("engineer")
    ui.goto(f"/devices?flow={FLOW}")
    page = ui.page
    page.get_by_role("button", name="Add device").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=id]").fill("press-7")
    dialog.locator('input[name="connection.host"]').fill("127.0.0.1")
    dialog.locator('input[name="connection.port"]').fill(str(plc))
    dialog.locator('input[name="connection.unit_id"]').fill("3")
    # the form checks against the flow-spec schema before sending: a bad tag name is named on its field
    dialog.locator('input[name="tag.name"]').fill("bad name!")
    dialog.locator('select[name="tag.table"]').select_option("holding")
    dialog.locator('input[name="tag.address"]').fill("0")
    dialog.locator('select[name="tag.data_type"]').select_option("int16")
    dialog.get_by_role("button", name="Create and apply").click()
    assert "must match pattern" in dialog.locator('[data-field-error="tag.name"]').inner_text()
    dialog.locator('input[name="tag.name"]').fill("alpha")
    save_and_wait_applied(ui)

    for address, name in ((1, "beta"), (2, "gamma")):
        page.locator('tr[data-device="press-7"]').get_by_role("button", name="Add tag").click()
        dialog = page.get_by_role("dialog")
        dialog.locator("input[name=name]").fill(name)
        dialog.locator("select[name=table]").select_option("holding")
        dialog.locator("input[name=address]").fill(str(address))
        dialog.locator("select[name=data_type]").select_option("int16")
        save_and_wait_applied(ui)

    # live values: the device was added (a redeploy: the flow restarts), then each tag hot
    for name, raw in RAW.items():
        cell = value_cell(ui, f"press-7/{name}")
        cell.wait_for()
        page.wait_for_function(
            "([sel, want]) => document.querySelector(sel)?.textContent === want",
            arg=[f'[data-tag="press-7/{name}"] [data-testid=value]', str(raw)],
            timeout=START_S * 1000,
        )
    pid_before = ui.platform.api.get(f"/api/v1/flows/{FLOW}/status").json()["pids"]

    page.get_by_role("button", name="edit press-7/alpha").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=scale]").fill("0.5")
    dialog.get_by_role("button", name="Save and apply").click()
    result = page.get_by_test_id("apply-result")
    result.wait_for()
    assert "hot" in result.inner_text(), result.inner_text()
    page.wait_for_function(
        "sel => document.querySelector(sel)?.textContent === '50'",
        arg='[data-tag="press-7/alpha"] [data-testid=value]',
        timeout=30_000,
    )
    assert value_cell(ui, "press-7/beta").inner_text() == "200"
    assert ui.platform.api.get(f"/api/v1/flows/{FLOW}/status").json()["pids"] == pid_before, (
        "not hot: restarted"
    )
