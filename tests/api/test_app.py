"""The control API answers through Litestar's real ASGI stack (no server process needed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from litestar.testing import TestClient

from api.app import create_app
from core.settings import Settings
from dataflows.spec import DEMO_SPEC
from tests.auth_helpers import login, prepare


@pytest.fixture
def client(db: str) -> Iterator[TestClient[Any]]:
    prepare(db)
    with TestClient(app=create_app(Settings(database_url=db))) as c:
        c.headers.update(login(c, "viewer"))
        yield c


def test_health() -> None:
    with TestClient(app=create_app(Settings())) as c:
        assert c.get("/health").json() == {"status": "ok"}


def test_schema_is_published(client: TestClient[Any]) -> None:
    c = client
    body = c.get("/api/v1/flow-specs/schema").json()
    assert body["title"] == "NEXUS Edge flow spec v1"
    assert "devices" in body["properties"]


def test_validate_accepts_the_demo_spec(client: TestClient[Any]) -> None:
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    c = client
    response = c.post("/api/v1/flow-specs/validate", json=spec)
    assert response.status_code == 200, response.text
    assert response.json()["devices"] == len(spec["devices"])


def test_validate_names_the_bad_field(client: TestClient[Any]) -> None:
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    spec["devices"][1]["tags"][0]["data_type"] = "float128"
    c = client
    response = c.post("/api/v1/flow-specs/validate", json=spec)
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert problems[0]["path"] == "devices[1].tags[0].data_type"
