"""Issue 12.6: hostile spec documents answer 422 with the field path, never 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from litestar.testing import TestClient

from api.app import create_app
from core.settings import Settings
from dataflows.spec import DEMO_SPEC
from tests.auth_helpers import login, prepare


def demo() -> dict[str, Any]:
    return yaml.safe_load(DEMO_SPEC.read_text())


@pytest.fixture
def client(db: str) -> Iterator[TestClient[Any]]:
    prepare(db)
    with TestClient(app=create_app(Settings(database_url=db))) as c:
        c.headers.update(login(c, "viewer"))
        yield c


def post(client: TestClient[Any], body: Any) -> Any:
    return client.post(
        "/api/v1/flow-specs/validate",
        content=json.dumps(body) if not isinstance(body, str) else body,
        headers={"content-type": "application/json"},
    )


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("-" * 5000 + "motor_power", "nested too deeply"),  # RecursionError in the compiler: was a 500
        ("(" * 250 + "motor_power" + ")" * 250, "too many nested parentheses"),
        ("+".join(["motor_power"] * 500), "nested too deeply"),
        ("motor_power+" * 2000 + "1", "the limit is"),
    ],
)
def test_a_deeply_nested_expression_is_a_422_naming_the_calculated_tag(
    client: TestClient[Any], expression: str, words: str
) -> None:
    spec = demo()
    device = next(d for d in spec["devices"] if d.get("calculated"))
    i = len(device["calculated"])
    device["calculated"].append({"name": "deep", "expression": expression})
    response = post(client, spec)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["problems"]
    assert f"calculated[{i}].expression" in problem["message"] and words in problem["message"]


def test_a_deeply_nested_body_is_a_422(client: TestClient[Any]) -> None:
    spec = demo()
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    spec["description"] = deep
    response = post(client, spec)
    assert response.status_code in (400, 422), response.text


def test_a_huge_refused_value_is_not_echoed_back(client: TestClient[Any]) -> None:
    spec = demo()
    spec["devices"][0]["tags"][0]["data_type"] = "x" * 1_000_000
    response = post(client, spec)
    assert response.status_code == 422
    assert len(response.text) < 2_000
