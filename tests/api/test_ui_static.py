"""The API serves the built web UI at ``/`` with a single-page-app fallback that never shadows the API."""

from __future__ import annotations

import re

from litestar.testing import TestClient

from api.app import create_app
from api.ui import DIST
from core.settings import Settings


def client() -> TestClient:  # type: ignore[type-arg]
    return TestClient(app=create_app(Settings()))


def test_the_bundle_is_shipped_and_served_at_the_root() -> None:
    with client() as c:
        root = c.get("/")
        assert root.status_code == 200
        assert root.headers["content-type"].startswith("text/html")
        assert root.headers["cache-control"] == "no-cache"
        scripts = re.findall(r'src="(/assets/[^"]+\.js)"', root.text)
        assert scripts, "index.html references no script"
        script = c.get(scripts[0])
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "immutable" in script.headers["cache-control"]
        assert script.content == (DIST / scripts[0].lstrip("/")).read_bytes()


def test_client_side_routes_fall_back_to_the_app() -> None:
    with client() as c:
        index = c.get("/").text
        for path in ("/devices", "/flows/demo", "/historian?tag=7", "/login", "/audit"):
            answer = c.get(path)
            assert answer.status_code == 200, path
            assert answer.text == index, path


def test_the_fallback_never_shadows_the_api() -> None:
    with client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/schema/openapi.json").json()["info"]["title"] == "NEXUS Edge control API"
        for path in ("/api/v1/nope", "/api", "/schema/nope/deeper", "/metrics/x", "/health/x"):
            answer = c.get(path)
            assert answer.status_code == 404, path
            assert "<html" not in answer.text.lower(), path


def test_missing_or_escaping_assets_are_404() -> None:
    with client() as c:
        for path in (
            "/assets/missing.js",
            "/assets/..%2Fapp.py",
            "/assets/.hidden",
            "/assets/%2E%2E%2Fapp.py",
        ):
            assert c.get(path).status_code == 404, path
