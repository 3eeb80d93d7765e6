"""The audit log through the API: config changes carry their diff, operations their outcome, and the
log is filterable (admin only)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from control.store import ConfigStore
from core.settings import Settings
from tests.api.test_flows_api import spec
from tests.auth_helpers import login, make_users

pytestmark = pytest.mark.integration


@pytest.fixture
def client(db: str, mqtt_url: str) -> Iterator[TestClient[Any]]:
    store = ConfigStore(db)
    store.migrate()
    make_users(store)
    with TestClient(app=create_app(Settings(mqtt_url=mqtt_url), store=store)) as c:
        yield c
    store.close()


def test_config_changes_and_operations_are_audited_with_diffs(client: TestClient[Any]) -> None:
    started = datetime.now(UTC)
    engineer, admin = login(client, "engineer"), login(client, "admin")
    assert (
        client.post("/api/v1/flows", json={"spec": spec(), "message": "first"}, headers=engineer).status_code
        == 201
    )
    changed = spec()
    changed["devices"][0]["tags"][0]["scale"] = 0.01
    r = client.put("/api/v1/flows/line1", json={"spec": changed}, headers={**engineer, "If-Match": '"1"'})
    assert r.status_code == 200, r.text
    tag = {"name": "pressure", "table": "holding", "address": 5}
    assert (
        client.post("/api/v1/flows/line1/devices/press-01/tags", json=tag, headers=engineer).status_code
        == 201
    )
    assert client.post("/api/v1/flows/line1/deploy", headers=engineer).status_code == 200
    assert client.post("/api/v1/flows/line1/stop", headers=login(client, "operator")).status_code == 200

    events = client.get("/api/v1/audit", params={"action": "flow.*"}, headers=admin).json()
    assert [e["action"] for e in events] == ["flow.stop", "flow.deploy", "flow.update", "flow.create"]
    update = events[2]
    assert update["actor"] == "engineer" and update["target"] == "line1" and update["source"] == "testclient"
    assert update["detail"]["version"] == 2 and update["detail"]["from_version"] == 1
    assert [(c["path"], c["old"], c["new"]) for c in update["detail"]["changes"]] == [
        ("devices[press-01].tags[temp].scale", 0.1, 0.01)
    ]
    assert events[1]["detail"]["version"] == 3 and events[0]["actor"] == "operator"
    (created,) = client.get("/api/v1/audit", params={"action": "tag.create"}, headers=admin).json()
    assert created["target"] == "line1/press-01/pressure" and created["detail"]["changes"]

    mine = client.get("/api/v1/audit", params={"actor": "operator", "action": "flow.*"}, headers=admin).json()
    assert [e["action"] for e in mine] == ["flow.stop"]
    since = {"since": started.isoformat(), "until": (datetime.now(UTC) + timedelta(seconds=5)).isoformat()}
    assert len(client.get("/api/v1/audit", params={**since, "limit": 2}, headers=admin).json()) == 2
    later = {"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    assert client.get("/api/v1/audit", params=later, headers=admin).json() == []
    naive = client.get("/api/v1/audit", params={"since": "2026-01-01T00:00:00"}, headers=admin)
    assert naive.status_code == 422 and naive.json()["problems"][0]["path"] == "query:since"
    assert client.get("/api/v1/audit", headers=engineer).status_code == 403


def test_a_tag_write_is_audited_with_its_value_and_result(client: TestClient[Any]) -> None:
    engineer = login(client, "engineer")
    assert client.post("/api/v1/flows", json={"spec": spec()}, headers=engineer).status_code == 201
    r = client.post(
        "/api/v1/flows/line1/devices/press-01/tags/speed/value",
        json={"value": 5},
        headers=login(client, "operator"),
    )
    assert r.status_code == 409  # not deployed: refused, and still on record
    (event,) = client.get(
        "/api/v1/audit", params={"action": "tag.write"}, headers=login(client, "admin")
    ).json()
    assert event["actor"] == "operator" and event["target"] == "line1/press-01/speed"
    assert event["outcome"] == "error" and event["detail"]["value"] == 5 and event["detail"]["error"]
