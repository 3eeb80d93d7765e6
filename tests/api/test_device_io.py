"""The API routes that reach devices: test read (real pymodbus server), OPC UA browse (real asyncua server),
tag write through a real command router and broker into the Modbus simulator (ack, or 504)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from connectors.commands import CommandRouter
from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.modbus.source import ModbusSource
from connectors.opcua.simulator import OpcUaSimulator, SimVariable
from control.store import ConfigStore
from core.batch import tag_id_for
from core.settings import Settings
from dataflows.compiler import writable_tags
from dataflows.spec import parse_spec
from nexus.embedded import free_port
from tests.auth_helpers import login, make_users

pytestmark = pytest.mark.integration

LOC = {"enterprise": "e", "site": "s", "area": "a", "line": "l"}
TEMP = ModbusTagAddress(table="holding", address=0, data_type="int16")
SETPOINT = ModbusTagAddress(table="holding", address=1, data_type="uint16")


def spec(port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "line1",
        "devices": [
            {
                "id": "press-01",
                "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout_s": 1.0},
                "location": LOC,
                "tags": [
                    {
                        "name": "temp",
                        "table": "holding",
                        "address": 0,
                        "data_type": "int16",
                        "scale": 0.1,
                        "unit": "degC",
                    },
                    {
                        "name": "setpoint",
                        "table": "holding",
                        "address": 1,
                        "access": "read_write",
                        "scale": 0.5,
                        "clamp": {"low": 0, "high": 1000},
                    },
                ],
            }
        ],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}],
    }


@pytest.fixture
def sim() -> Iterator[ModbusSimulator]:
    device = SimulatedDevice("press-01", unit_id=1, tags=[SimTag(TEMP), SimTag(SETPOINT)])
    with ModbusSimulator(devices=[device]) as s:
        s.set_value("press-01", TEMP, 551)
        yield s


@pytest.fixture
def client(db: str, mqtt_url: str, sim: ModbusSimulator) -> Iterator[TestClient[Any]]:
    store = ConfigStore(db)
    store.migrate()
    store.create_flow(spec(sim.port), author="test")
    make_users(store)
    with TestClient(app=create_app(Settings(mqtt_url=mqtt_url), store=store)) as c:
        c.headers.update(login(c, "admin"))
        yield c
    store.close()


def test_device_test_reads_the_tags_once(client: TestClient[Any]) -> None:
    r = client.post("/api/v1/flows/line1/devices/press-01/test", json={"timeout_s": 10})
    assert r.status_code == 200, r.text
    values = {v["tag"]: v for v in r.json()["values"]}
    assert values["temp"]["quality"] == "good"
    assert values["temp"]["raw"] == 551 and values["temp"]["value"] == pytest.approx(55.1)
    assert values["temp"]["unit"] == "degC"
    assert set(values) == {"temp", "setpoint"}


def test_device_test_with_another_connection_reports_bad_quality(client: TestClient[Any]) -> None:
    dead = {"host": "127.0.0.1", "port": free_port(), "unit_id": 1, "timeout_s": 0.5}
    r = client.post("/api/v1/flows/line1/devices/press-01/test", json={"connection": dead, "timeout_s": 10})
    assert r.status_code == 200, r.text
    qualities = {v["quality"] for v in r.json()["values"]}
    assert qualities and "good" not in qualities
    # the stored spec is untouched by a test read
    assert client.get("/api/v1/flows/line1").json()["latest_version"] == 1
    bad = client.post(
        "/api/v1/flows/line1/devices/press-01/test", json={"connection": {"host": "h", "port": 0}}
    )
    assert bad.status_code == 422
    assert bad.json()["problems"][0]["path"].startswith("connection.port")
    assert client.post("/api/v1/flows/line1/devices/ghost/test", json={}).status_code == 404


def test_opcua_browse_through_the_api(client: TestClient[Any]) -> None:
    variables = [
        SimVariable("Temp", "Double", 180.5),
        SimVariable("Setpoint", "Double", 175.0, writable=True),
    ]
    with OpcUaSimulator(variables) as server:
        r = client.post(
            "/api/v1/opcua/browse", json={"connection": {"endpoint": server.endpoint}, "max_depth": 3}
        )
        assert r.status_code == 200, r.text
        found = {v["browse_path"]: v for v in r.json()}
        temp = next(v for path, v in found.items() if path.endswith("Temp"))
        assert temp["node_id"] == server.node_id("Temp") and temp["data_type"] == "Double"
        assert next(v for p, v in found.items() if p.endswith("Setpoint"))["writable"] is True
        device = {
            "id": "oven-01",
            "protocol": "opcua",
            "connection": {"endpoint": server.endpoint},
            "location": LOC,
            "tags": [{"name": "temp", "node_id": server.node_id("Temp")}],
        }
        assert client.post("/api/v1/flows/line1/devices", json=device).status_code == 201
        r = client.get("/api/v1/flows/line1/devices/oven-01/browse", params={"max_depth": 3})
        assert r.status_code == 200 and any(v["node_id"] == server.node_id("Temp") for v in r.json())
        r = client.post("/api/v1/flows/line1/devices/oven-01/test", json={"timeout_s": 20})
        assert r.json()["values"][0]["value"] == pytest.approx(180.5)
    assert client.get("/api/v1/flows/line1/devices/press-01/browse").status_code == 422  # not OPC UA
    r = client.post(
        "/api/v1/opcua/browse",
        json={"connection": {"endpoint": f"opc.tcp://127.0.0.1:{free_port()}", "timeout_s": 1}},
    )
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")


class PartitionWriter:
    """The real write path of a flow: a Modbus source partition's ``submit_write``."""

    def __init__(self, port: int) -> None:
        plan = ModbusDevicePlan(
            "press-01",
            ModbusConnection(host="127.0.0.1", port=port, unit_id=1),
            60.0,
            ((tag_id_for("press-01", "temp"), TEMP), (tag_id_for("press-01", "setpoint"), SETPOINT)),
        )
        self.part = ModbusSource([plan]).build_part("in", "modbus:press-01", None)

    def __call__(self, tag_id: int, raw: Any) -> concurrent.futures.Future[None]:
        return self.part.submit_write(tag_id, raw)

    def close(self) -> None:
        self.part.close()


def test_tag_write_goes_through_the_command_router(
    client: TestClient[Any], sim: ModbusSimulator, mqtt_url: str
) -> None:
    client.post("/api/v1/flows/line1/deploy")
    writer = PartitionWriter(sim.port)
    router = CommandRouter(mqtt_url, writable_tags(parse_spec(spec(sim.port))), timeout_s=5.0).start()
    try:
        router.register("press-01", writer)
        r = client.post(
            "/api/v1/flows/line1/devices/press-01/tags/setpoint/value", json={"value": 210, "timeout_s": 10}
        )
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is True
        assert sim.get_registers("press-01", "holding", 1, 1) == [420]  # 210 / scale 0.5
        refused = client.post(
            "/api/v1/flows/line1/devices/press-01/tags/temp/value", json={"value": 1, "timeout_s": 10}
        )
        assert refused.status_code == 200 and refused.json()["ok"] is False
        assert "read-only" in refused.json()["error"]
        over = client.post("/api/v1/flows/line1/devices/press-01/tags/setpoint/value", json={"value": 5000})
        assert over.json()["ok"] is False and "high limit" in over.json()["error"]
    finally:
        router.close()
        writer.close()
    missing = client.post("/api/v1/flows/line1/devices/press-01/tags/ghost/value", json={"value": 1})
    assert missing.status_code == 404


def test_tag_write_without_an_answer_is_504(client: TestClient[Any]) -> None:
    client.post("/api/v1/flows/line1/deploy")
    r = client.post(
        "/api/v1/flows/line1/devices/press-01/tags/setpoint/value", json={"value": 1, "timeout_s": 0.5}
    )
    assert r.status_code == 504, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_tag_write_on_an_undeployed_flow_is_409(client: TestClient[Any]) -> None:
    r = client.post("/api/v1/flows/line1/devices/press-01/tags/setpoint/value", json={"value": 1})
    assert r.status_code == 409


def test_device_test_reads_an_s7_plc(client: TestClient[Any]) -> None:
    from connectors.s7.simulator import S7Simulator

    plc = S7Simulator("127.0.0.1", 0, dbs={1: 64})
    plc.start()
    try:
        plc.set_value("DB1.DBD20", 21.5, "REAL")
        device = {
            "id": "cell-3",
            "protocol": "s7",
            "connection": {"host": "127.0.0.1", "port": plc.port, "timeout_s": 2.0},
            "location": LOC,
            "tags": [{"name": "temp", "address": "DB1.DBD20", "data_type": "REAL", "scale": 2.0}],
        }
        assert client.post("/api/v1/flows/line1/devices", json=device).status_code == 201
        r = client.post("/api/v1/flows/line1/devices/cell-3/test", json={"timeout_s": 20})
        assert r.status_code == 200, r.text
        (value,) = r.json()["values"]
        assert (
            value["quality"] == "good"
            and value["raw"] == pytest.approx(21.5)
            and value["value"] == pytest.approx(43.0)
        )
    finally:
        plc.stop()
