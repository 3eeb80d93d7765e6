"""The flows, devices and tags API over a real PostgreSQL config store (Litestar's real ASGI stack)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from control.store import ConfigStore
from control.types import FlowRuntime
from core.settings import Settings
from tests.auth_helpers import login, make_users

pytestmark = pytest.mark.integration

LOC = {"enterprise": "e", "site": "s", "area": "a", "line": "l"}


def spec(flow_id: str = "line1", port: int = 1502) -> dict[str, Any]:
    return {
        "version": 1,
        "id": flow_id,
        "devices": [
            {
                "id": "press-01",
                "connection": {"host": "127.0.0.1", "port": port, "timeout_s": 1.0},
                "location": LOC,
                "tags": [
                    {"name": "temp", "table": "holding", "address": 0, "data_type": "int16", "scale": 0.1},
                    {"name": "speed", "table": "holding", "address": 1, "access": "read_write"},
                ],
            }
        ],
        "operators": [{"id": "norm", "type": "normalize"}],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}],
    }


@dataclass
class StandInSupervisor:
    """Answers ``status()`` and counts ``wake()`` like the real supervisor's interface (which another branch builds)."""

    runtimes: dict[str, FlowRuntime] = field(default_factory=dict)
    wakes: int = 0

    def status(self) -> dict[str, FlowRuntime]:
        return dict(self.runtimes)

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
def store(db: str) -> Iterator[ConfigStore]:
    s = ConfigStore(db)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def client(store: ConfigStore, mqtt_url: str) -> Iterator[TestClient[Any]]:
    app = create_app(Settings(mqtt_url=mqtt_url), store=store)
    make_users(store)
    with TestClient(app=app) as c:
        c.headers.update(login(c, "admin"))
        yield c


def create(client: TestClient[Any], doc: dict[str, Any] | None = None) -> Any:
    r = client.post("/api/v1/flows", json={"spec": doc or spec(), "message": "first"})
    assert r.status_code == 201, r.text
    return r


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and "detail" in body
    return body


def test_flow_crud_and_etags(client: TestClient[Any]) -> None:
    r = create(client)
    assert r.headers["etag"] == '"1"'
    assert r.json()["number"] == 1 and r.json()["author"] == "admin"
    r = client.get("/api/v1/flows/line1")
    assert r.json()["latest_version"] == 1 and r.headers["etag"] == '"1"'
    assert [f["id"] for f in client.get("/api/v1/flows").json()] == ["line1"]
    changed = spec()
    changed["devices"][0]["tags"][0]["scale"] = 0.01
    r = client.put(
        "/api/v1/flows/line1", json={"spec": changed, "message": "finer"}, headers={"If-Match": '"1"'}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["number"], r.json()["parent_number"], r.headers["etag"]) == (2, 1, '"2"')
    versions = client.get("/api/v1/flows/line1/versions").json()
    assert [(v["number"], v["message"]) for v in versions] == [(2, "finer"), (1, "first")]
    assert client.get("/api/v1/flows/line1/versions/1").json()["spec"] == spec()
    assert client.get("/api/v1/flows/line1/spec").json() == changed
    assert_problem(create_raw(client, spec()), 409)
    r = client.patch("/api/v1/flows/line1", json={"processes": 2})
    assert r.json()["processes"] == 2
    r = client.delete("/api/v1/flows/line1")
    assert r.status_code == 204
    assert_problem(client.get("/api/v1/flows/line1"), 404)


def create_raw(client: TestClient[Any], doc: dict[str, Any]) -> Any:
    return client.post("/api/v1/flows", json={"spec": doc})


def test_two_clients_updating_the_same_version_one_gets_409(client: TestClient[Any]) -> None:
    create(client)
    etag = client.get("/api/v1/flows/line1").headers["etag"]
    first, second = spec(), spec()
    first["devices"][0]["tags"][0]["scale"] = 2
    second["devices"][0]["tags"][0]["scale"] = 3
    a = client.put("/api/v1/flows/line1", json={"spec": first}, headers={"If-Match": etag})
    b = client.put("/api/v1/flows/line1", json={"spec": second}, headers={"If-Match": etag})
    assert a.status_code == 200
    body = assert_problem(b, 409)
    assert "based on version 1" in body["detail"]
    # the same through the device and tag views
    c = client.patch(
        "/api/v1/flows/line1/devices/press-01/tags/temp", json={"scale": 5}, headers={"If-Match": etag}
    )
    assert_problem(c, 409)
    assert client.get("/api/v1/flows/line1/devices/press-01/tags/temp").json()["scale"] == 2


def test_concurrent_writers_through_the_api(client: TestClient[Any]) -> None:
    create(client)
    barrier = threading.Barrier(3)
    codes: list[int] = []

    def write(i: int) -> None:
        barrier.wait()
        r = client.patch(
            "/api/v1/flows/line1/devices/press-01/tags/temp",
            json={"scale": i + 2},
            headers={"If-Match": '"1"'},
        )
        codes.append(r.status_code)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409, 409]


def test_bad_input_is_problem_json_with_field_paths(client: TestClient[Any]) -> None:
    bad = spec()
    bad["devices"][0]["poll_interval_s"] = -1
    body = assert_problem(create_raw(client, bad), 422)
    assert {
        "path": "devices[0].poll_interval_s",
        "message": "Input should be greater than 0 (got -1)",
    } in body["problems"]
    body = assert_problem(client.post("/api/v1/flows", json={"spec": spec(), "processes": 0}), 422)
    assert any("processes" in p["path"] for p in body["problems"])
    body = assert_problem(client.post("/api/v1/flows", json={"nope": 1}), 422)
    assert body["problems"]
    assert_problem(
        client.post("/api/v1/flows", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert_problem(client.get("/api/v1/flows/ghost/versions"), 404)
    assert_problem(client.get("/api/v1/nothing-here"), 404)
    create(client)
    body = assert_problem(
        client.put("/api/v1/flows/line1", json={"spec": spec()}, headers={"If-Match": "yesterday"}), 422
    )
    assert body["problems"][0]["path"] == "header:If-Match"
    body = assert_problem(client.put("/api/v1/flows/line1", json={"spec": spec("other")}), 422)
    assert body["problems"][0]["path"] == "id"
    tag = {"name": "t2", "table": "holding", "address": 2, "data_type": "float128"}
    body = assert_problem(client.post("/api/v1/flows/line1/devices/press-01/tags", json=tag), 422)
    assert body["problems"][0]["path"] == "devices[0].tags[2].data_type"
    assert_problem(client.post("/api/v1/flows/line1/devices/press-01/tags", json=[1, 2]), 422)
    assert_problem(client.get("/api/v1/flows/line1/versions/99"), 404)
    assert_problem(client.get("/api/v1/flows/line1/diff", params={"from": 1, "to": 5}), 404)


def test_body_limit_is_413(client: TestClient[Any]) -> None:
    huge = {"spec": spec(), "message": "x" * 5_000_000}
    assert_problem(client.post("/api/v1/flows", json=huge), 413)


def test_devices_and_tags_are_views_over_the_newest_version(client: TestClient[Any]) -> None:
    create(client)
    devices = client.get("/api/v1/flows/line1/devices")
    assert [d["id"] for d in devices.json()] == ["press-01"] and devices.headers["etag"] == '"1"'
    new_device = {
        "id": "oven-01",
        "protocol": "opcua",
        "connection": {"endpoint": "opc.tcp://127.0.0.1:4840", "username": "op", "password": "s3cret"},
        "location": LOC,
        "tags": [{"name": "zone1", "node_id": "ns=2;s=zone1"}],
    }
    r = client.post("/api/v1/flows/line1/devices", json=new_device, headers={"If-Match": '"1"'})
    assert r.status_code == 201 and r.json()["version"] == 2 and r.headers["etag"] == '"2"'
    assert_problem(client.post("/api/v1/flows/line1/devices", json=new_device), 409)
    shown = client.get("/api/v1/flows/line1/devices/oven-01").json()
    assert shown["connection"]["password"] == "**********"  # never shown
    shown["tags"][0]["unit"] = "degC"
    r = client.put("/api/v1/flows/line1/devices/oven-01", json=shown, headers={"If-Match": '"2"'})
    assert r.status_code == 200, r.text
    stored = client.app.state.store.get_version("line1").spec["devices"][1]
    assert stored["connection"]["password"] == "s3cret"  # the mask kept the stored secret
    assert stored["tags"][0]["unit"] == "degC"
    r = client.post(
        "/api/v1/flows/line1/devices/oven-01/tags", json={"name": "zone2", "node_id": "ns=2;s=zone2"}
    )
    assert r.json()["version"] == 4
    assert [t["name"] for t in client.get("/api/v1/flows/line1/devices/oven-01/tags").json()] == [
        "zone1",
        "zone2",
    ]
    r = client.put(
        "/api/v1/flows/line1/devices/oven-01/tags/zone2", json={"name": "zone2", "node_id": "ns=2;s=z2"}
    )
    assert r.json()["version"] == 5
    assert client.get("/api/v1/flows/line1/devices/oven-01/tags/zone2").json()["node_id"] == "ns=2;s=z2"
    assert_problem(
        client.put("/api/v1/flows/line1/devices/oven-01/tags/zone2", json={"name": "other", "node_id": "x"}),
        422,
    )
    assert client.delete("/api/v1/flows/line1/devices/oven-01/tags/zone2").json()["version"] == 6
    assert_problem(client.get("/api/v1/flows/line1/devices/oven-01/tags/zone2"), 404)
    changed = client.get("/api/v1/flows/line1/devices/oven-01").json()
    changed["connection"]["password"] = "n3w-secret"
    client.put("/api/v1/flows/line1/devices/oven-01", json=changed)
    diff = client.get("/api/v1/flows/line1/diff", params={"from": 6, "to": 7}).json()
    assert diff["changes"] == [
        {
            "path": "devices[oven-01].connection.password",
            "op": "changed",
            "old": "**********",
            "new": "**********",
        }
    ]
    assert diff["plan"]["path"] == "redeploy" and "s3cret" not in str(diff) and "n3w" not in str(diff)
    assert client.delete("/api/v1/flows/line1/devices/oven-01").json()["version"] == 8
    assert_problem(client.delete("/api/v1/flows/line1/devices/press-01"), 422)  # a flow needs a device
    versions = client.get("/api/v1/flows/line1/versions").json()
    assert [v["number"] for v in versions] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert versions[0]["message"] == "removed device oven-01"


def test_deploy_plans_hot_redeploy_noop_and_rollback(client: TestClient[Any], store: ConfigStore) -> None:
    supervisor = StandInSupervisor()
    client.app.state.supervisor = supervisor
    create(client)
    r = client.post("/api/v1/flows/line1/deploy")
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["path"], first["version"], first["against"], first["desired_state"]) == (
        "redeploy",
        1,
        None,
        "running",
    )
    assert "not running" in first["reasons"][0]
    assert supervisor.wakes == 1
    supervisor.runtimes["line1"] = FlowRuntime("line1", "running", version=1, pids=(4242,))
    r = client.patch("/api/v1/flows/line1/devices/press-01/tags/temp", json={"scale": 0.5})
    assert r.json()["version"] == 2
    hot = client.post("/api/v1/flows/line1/deploy", json={"version": 2}).json()
    assert (hot["path"], hot["against"], hot["devices"]) == ("hot", 1, ["press-01"])
    assert hot["reasons"] == ["device press-01: tags[temp].scale changed"]
    supervisor.runtimes["line1"] = FlowRuntime("line1", "running", version=2, pids=(4242,))
    assert client.post("/api/v1/flows/line1/deploy").json()["path"] == "noop"
    windowed = copy.deepcopy(store.get_version("line1").spec)
    windowed["operators"].append({"id": "win", "type": "window", "windows": ["1m"]})
    client.put("/api/v1/flows/line1", json={"spec": windowed, "message": "add a window"})
    red = client.post("/api/v1/flows/line1/deploy", headers={"If-Match": '"3"'}).json()
    assert red["path"] == "redeploy" and red["reasons"] == ["operators: node win (window) added"]
    assert_problem(client.post("/api/v1/flows/line1/deploy", headers={"If-Match": '"2"'}), 409)
    # the diff endpoint shows the change; rollback writes version 2 again as version 4 and deploys it
    diff = client.get("/api/v1/flows/line1/diff", params={"from": 2, "to": 3}).json()
    assert diff["changes"][0]["path"] == "operators[win]" and diff["changes"][0]["op"] == "added"
    assert diff["plan"]["path"] == "redeploy"
    supervisor.runtimes["line1"] = FlowRuntime("line1", "running", version=3, pids=(4343,))
    back = client.post(
        "/api/v1/flows/line1/rollback", json={"version": 2}, headers={"If-Match": '"3"'}
    ).json()
    assert (back["version"], back["path"], back["against"]) == (4, "redeploy", 3)
    assert "operators: node win (window) removed" in back["reasons"]
    flow = client.get("/api/v1/flows/line1").json()
    assert (flow["deployed_version"], flow["latest_version"]) == (4, 4)
    assert store.get_version("line1", 4).spec == store.get_version("line1", 2).spec
    assert store.get_version("line1", 4).message == "rollback to version 2"
    status = client.get("/api/v1/flows/line1/status").json()
    assert (status["state"], status["version"], status["pids"], status["deployed_version"]) == (
        "running",
        3,
        [4343],
        4,
    )
    stopped = client.post("/api/v1/flows/line1/stop").json()
    assert stopped["desired_state"] == "stopped"
    assert client.post("/api/v1/flows/line1/start").json()["desired_state"] == "running"
    assert supervisor.wakes >= 7


def test_start_without_a_deployed_version_is_409(client: TestClient[Any]) -> None:
    create(client)
    assert_problem(client.post("/api/v1/flows/line1/start"), 409)
    status = client.get("/api/v1/flows/line1/status").json()
    assert status["state"] == "unknown" and status["deployed_version"] is None


def test_import_and_export_round_trip_the_text(client: TestClient[Any]) -> None:
    text = "# a comment that YAML parsing would lose\nversion: 1\nid: line1\n" + _yaml_rest()
    r = client.post("/api/v1/flows/import", json={"text": text})
    assert r.status_code == 201, r.text
    exported = client.get("/api/v1/flows/line1/export")
    assert exported.text == text and exported.headers["content-type"].startswith("text/plain")
    assert exported.headers["content-disposition"] == 'attachment; filename="line1.yaml"'
    again = client.post("/api/v1/flows/import", json={"text": text})
    assert again.status_code == 200 and again.json()["number"] == 1  # same text: no new version
    body = assert_problem(client.post("/api/v1/flows/import", json={"text": "version: [1\n"}), 422)
    assert "YAML" in body["detail"]
    assert exported.headers["x-nexus-secrets-masked"] == "false"
    secret = text.replace(
        "connection: {host: 127.0.0.1, port: 1502}", "connection: {host: 127.0.0.1, port: 1502}"
    ) + (
        "  - id: oven-01\n    protocol: opcua\n"
        "    connection: {endpoint: 'opc.tcp://127.0.0.1:4840', username: op, password: s3cret}\n"
        "    location: {enterprise: e, site: s, area: a, line: l}\n"
        "    tags: [{name: z, node_id: 'ns=2;s=z'}]\n"
    )
    secret = (
        secret.replace("sinks: [{id: uns, type: mqtt_uns}]\n", "") + "sinks: [{id: uns, type: mqtt_uns}]\n"
    )
    assert client.post("/api/v1/flows/import", json={"text": secret}).status_code == 201, secret
    masked = client.get("/api/v1/flows/line1/export")
    assert "s3cret" not in masked.text and "**********" in masked.text
    assert masked.headers["x-nexus-secrets-masked"] == "true"


def _yaml_rest() -> str:
    return (
        "devices:\n"
        "  - id: press-01\n"
        "    connection: {host: 127.0.0.1, port: 1502}\n"
        "    location: {enterprise: e, site: s, area: a, line: l}\n"
        "    tags:\n"
        "      - {name: temp, table: holding, address: 0}\n"
        "sinks: [{id: uns, type: mqtt_uns}]\n"
    )


def test_every_route_declares_a_permission(client: TestClient[Any]) -> None:
    missing = [
        f"{sorted(h.http_methods)} {route.path}"
        for route in client.app.routes
        for h in getattr(route, "route_handlers", [])
        if "permission" not in h.opt
        and not route.path.startswith("/schema")
        and h.http_methods != {"OPTIONS"}
    ]
    assert missing == []


def test_openapi_documents_every_route_with_examples(client: TestClient[Any]) -> None:
    doc = client.get("/schema/openapi.json").json()
    paths = doc["paths"]
    assert "/api/v1/flows/{flow_id}/deploy" in paths
    assert "/api/v1/flows/{flow_id}/devices/{device_id}/tags/{tag}/value" in paths
    post = paths["/api/v1/flows"]["post"]
    assert "application/problem+json" in post["responses"]["409"]["content"]
    schemas = doc["components"]["schemas"]
    for name in (
        "FlowCreate",
        "FlowOut",
        "DeployOut",
        "DiffOut",
        "StatusOut",
        "Problem",
        "TagValueIn",
        "AckOut",
    ):
        assert schemas[name].get("examples"), f"{name} has no examples"
    bodies = [
        (method, path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    ]
    for method, path in bodies:
        content = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        refs = [content, *content.get("oneOf", [])]
        ref = next((r["$ref"] for r in refs if "$ref" in r), "").rsplit("/", 1)[-1]
        assert content.get("examples") or schemas.get(ref, {}).get("examples"), f"{method} {path}: no example"


def test_out_of_range_numbers_and_nul_characters_are_not_500(client: TestClient[Any]) -> None:
    create(client)
    assert_problem(client.get("/api/v1/flows/line1/versions/99999999999"), 404)
    assert_problem(client.get("/api/v1/flows/line1/spec", params={"version": 2**40}), 404)
    assert_problem(client.post("/api/v1/flows/line1/deploy", json={"version": 2**40}), 422)
    assert_problem(client.post("/api/v1/flows/line1/rollback", json={"version": 0}), 422)
    doc = spec()
    doc["description"] = "nul \x00 inside"
    r = client.put("/api/v1/flows/line1", json={"spec": doc, "message": "m"})
    assert r.status_code == 422, r.text
