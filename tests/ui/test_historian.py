"""The historian explorer: find a tag by its UNS path, plot the last 5 minutes, export CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.conftest import wait_for
from tests.ui.conftest import FLOW, START_S, UI


def test_plot_a_tag_over_the_last_5_minutes_and_export_csv(ui: UI, tmp_path: Path) -> None:
    api = ui.platform.api

    def stored() -> bool:  # the seeded flow has written points of its temperature
        tags = api.get("/api/v1/historian/tags", params={"search": "temperature"}).json()
        return any(t["device_id"] == "seed-1" for t in tags) and bool(
            api.get("/api/v1/historian/latest").json()
        )

    wait_for(ui.platform.flow_running, timeout=START_S, what=f"flow {FLOW} running")
    wait_for(stored, timeout=START_S, what="stored points of seed-1/temperature")
    ui.login("viewer")
    ui.goto("/historian")
    page = ui.page
    page.fill("input[name=tag-search]", "uitest/s1/a1/l1/seed-1/temp")
    page.get_by_role("button", name="add uitest/s1/a1/l1/seed-1/temperature").click()
    page.get_by_role("button", name="Last 5 min").click()
    count = page.get_by_test_id("point-count")
    count.wait_for()
    points = int(count.inner_text().split()[0])
    assert points > 0, count.inner_text()
    assert page.locator("[data-testid=chart] canvas").count() == 1

    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    path = tmp_path / "points.csv"
    download.value.save_as(path)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert len(rows) >= 2, rows[:3]
    header = [c.lower() for c in rows[0]]
    assert "value" in header, header
    assert len(rows) - 1 >= points, (len(rows) - 1, points)  # the export is at least what was plotted
