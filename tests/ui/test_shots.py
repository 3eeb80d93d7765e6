"""Screenshots of every page for review (``just ui-shots``): test-artifacts/shots/<page>-<size>.png."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui.conftest import ARTIFACTS, UI, _make_ui
from tests.ui.test_roles_and_layout import PAGES


@pytest.fixture(
    params=[{"width": 1280, "height": 800}, {"width": 800, "height": 1100}], ids=["desktop", "tablet"]
)
def shooter(browser: Any, platform: Any, request: pytest.FixtureRequest) -> Iterator[UI]:
    yield from _make_ui(browser, platform, request, request.param)


def test_screenshots_of_every_page(shooter: UI, request: pytest.FixtureRequest) -> None:
    folder = ARTIFACTS / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    size = request.node.callspec.id
    shooter.goto("/login")
    shooter.page.screenshot(path=str(folder / f"login-{size}.png"))
    shooter.login("admin")
    for path in PAGES:
        shooter.goto(path)
        shooter.page.locator("h1").first.wait_for()
        shooter.page.wait_for_load_state("networkidle")
        name = path.strip("/").split("?")[0] or "overview"
        target = folder / f"{name}-{size}.png"
        shooter.page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 0
