"""Role-aware UI (a viewer sees no edit controls; a forced edit answers 403) and layouts without
horizontal overflow at 1280x800 and tablet width."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui.conftest import FLOW, UI, _make_ui

PAGES = ["/", "/devices?flow=ui-line", "/flows", "/historian", "/alerts", "/oee", "/audit"]


def test_a_viewer_sees_no_edit_controls_and_a_forced_edit_gets_403(ui: UI) -> None:
    if not ui.platform.auth:
        pytest.skip("this API has no log-in")
    ui.login("viewer")
    page = ui.page
    ui.goto(f"/devices?flow={FLOW}")
    page.locator('[data-tag="seed-1/temperature"]').wait_for()
    assert page.get_by_role("button", name="Add device").count() == 0
    assert page.get_by_role("button", name="Edit").count() == 0
    assert page.get_by_role("button", name="Add tag").count() == 0
    assert page.get_by_role("button", name="Write").count() == 0
    assert page.get_by_role("button", name="Test").count() == 0
    assert page.get_by_role("link", name="Audit log").count() == 0
    assert "viewer" in page.get_by_test_id("user-menu").inner_text()

    url = f"{ui.platform.url}/api/v1/flows/{FLOW}/devices/seed-1/tags/temperature"
    ui.expected.append(url)
    status = page.evaluate(
        """async (url) => {
            const csrf = document.cookie.split('; ').find((c) => c.startsWith('nexus_csrf='))?.split('=')[1];
            const r = await fetch(url, {method: 'PATCH', credentials: 'same-origin',
              headers: {'Content-Type': 'application/json', 'X-CSRF-Token': decodeURIComponent(csrf ?? '')},
              body: JSON.stringify({scale: 2})});
            return r.status;
        }""",
        url,
    )
    assert status == 403
    tag = ui.platform.api.get(f"/api/v1/flows/{FLOW}/devices/seed-1/tags/temperature").json()
    assert tag["scale"] == 0.1  # unchanged


@pytest.fixture(
    params=[{"width": 1280, "height": 800}, {"width": 800, "height": 1100}], ids=["1280x800", "tablet"]
)
def sized(browser: Any, platform: Any, request: pytest.FixtureRequest) -> Iterator[UI]:
    yield from _make_ui(browser, platform, request, request.param)


def test_pages_render_without_horizontal_overflow(sized: UI) -> None:
    sized.login("admin")
    for path in PAGES:
        sized.goto(path)
        sized.page.locator("h1").first.wait_for()
        sized.page.wait_for_load_state("networkidle")
        overflow = sized.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path}: {overflow}px of horizontal overflow"
