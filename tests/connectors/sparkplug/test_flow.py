"""The ``sparkplug_b`` sink in a running flow: a pymodbus simulator → Bytewax → mosquitto → a pysparkplug host.

Values and datatypes in the births are what the simulator serves; DCMD writes go through the
command router's checks (``$nexus/cmd``'s) into the simulator, and the value read back arrives in DDATA.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from bytewax.testing import run_main

from connectors.commands import CommandRouter
from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from dataflows.compiler import Runtime, compile_flow, writable_tags
from dataflows.spec import FlowSpec, parse_spec
from tests.conftest import wait_for
from tests.connectors.sparkplug.host import Host, pysparkplug

pytestmark = pytest.mark.integration

DT = pysparkplug.DataType
TAGS: list[dict[str, Any]] = [
    {"name": "temp", "table": "holding", "address": 0, "data_type": "int16", "unit": "degC"},
    {"name": "pressure", "table": "holding", "address": 1, "data_type": "float32", "unit": "bar"},
    {"name": "count", "table": "input", "address": 0, "data_type": "uint32", "unit": "parts"},
    {"name": "speed", "table": "holding", "address": 3, "data_type": "uint16", "scale": 0.5, "unit": "rpm"},
    {"name": "running", "table": "coil", "address": 0, "data_type": "bool"},
    {
        "name": "setpoint",
        "table": "holding",
        "address": 5,
        "data_type": "int16",
        "unit": "degC",
        "clamp": {"low": 0, "high": 1000},
        "access": "read_write",
    },
]
RAW = {"temp": -123, "pressure": 7.25, "count": 70_000, "speed": 100, "running": 1, "setpoint": 10}
EXPECTED = {
    "temp": (DT.INT16, -123),
    "pressure": (DT.FLOAT, 7.25),
    "count": (DT.UINT32, 70_000),
    "speed": (DT.DOUBLE, 50.0),
    "running": (DT.BOOLEAN, True),
    "setpoint": (DT.INT16, 10),
}


def address(tag: dict[str, Any]) -> ModbusTagAddress:
    return ModbusTagAddress(**{k: tag[k] for k in ("table", "address", "data_type")})


@pytest.fixture
def sim() -> Iterator[ModbusSimulator]:
    device = SimulatedDevice("press-07", 1, [SimTag(address=address(t)) for t in TAGS])
    with ModbusSimulator(host="127.0.0.1", port=0, devices=[device]) as s:
        for t in TAGS:
            s.set_value("press-07", address(t), RAW[t["name"]])
        yield s


def spec_for(port: int, group: str, *, deadband: bool = False, **connection: Any) -> FlowSpec:
    tags = (
        [{**t, "deadband": {"absolute": 0.5}} for t in TAGS if t["data_type"] != "bool"] if deadband else TAGS
    )
    tags += [t for t in TAGS if deadband and t["data_type"] == "bool"]
    return parse_spec(
        {
            "version": 1,
            "id": "spb",
            "devices": [
                {
                    "id": "press-07",
                    "connection": {
                        "host": "127.0.0.1",
                        "port": port,
                        "unit_id": 1,
                        "timeout_s": 0.5,
                        **connection,
                    },
                    "poll_interval_s": 0.2,
                    "location": {"enterprise": "acme", "site": "plant9", "area": "pressing", "line": "line3"},
                    "tags": tags,
                }
            ],
            "operators": [{"id": "normalize", "type": "normalize"}]
            + ([{"id": "deadband", "type": "deadband"}] if deadband else []),
            "sinks": [
                {
                    "id": "scada",
                    "type": "sparkplug_b",
                    "group_id": group,
                    "edge_node_id": "nexus-edge",
                    "device_ids": "location",
                    "metrics": {"press-07/setpoint": "Setpoints/Temperature"},
                }
            ],
        }
    )


@contextmanager
def running(spec: FlowSpec, mqtt_url: str) -> Iterator[CommandRouter]:
    router = CommandRouter(
        mqtt_url, writable_tags(spec), answer_unowned=True, require_signature=False
    ).start()
    stop = threading.Event()
    flow = compile_flow(spec, Runtime(mqtt_url=mqtt_url, stop_event=stop, write_registry=router))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_main(flow)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield router
    finally:
        stop.set()
        worker.join(30)
        router.close()
    assert not worker.is_alive(), "the flow drains when asked"
    assert not errors, errors


@pytest.fixture
def group() -> str:
    return f"g{uuid.uuid4().hex[:8]}"


@pytest.fixture
def host(mqtt_url: str, group: str) -> Iterator[Host]:
    h = Host(mqtt_url, group)
    yield h
    h.close()


DEVICE = "pressing.line3.press-07"  # device_ids: location


def test_topics_dbirth_metrics_values_and_types_equal_the_simulator(
    sim: ModbusSimulator, mqtt_url: str, group: str, host: Host
) -> None:
    """tck-id-topics-dbirth-metrics, tck-id-operational-behavior-data-publish-dbirth-values,
    tck-id-payloads-metric-datatype-value, tck-id-topics-dbirth-topic; then DDATA of a changed register."""
    with running(spec_for(sim.port, group), mqtt_url):
        [nb] = host.wait("NBIRTH")
        assert nb.edge_node == "nexus-edge"
        [db] = host.wait("DBIRTH", device=DEVICE)
        got = {k: (v.datatype, v.value) for k, v in db.metrics().items()}
        assert got == {("Setpoints/Temperature" if k == "setpoint" else k): v for k, v in EXPECTED.items()}
        assert db.properties("speed") == {"engUnit": "rpm", "Quality": 192}
        sim.set_value("press-07", address(TAGS[0]), -124)
        data = host.wait("DDATA", device=DEVICE)
        assert data[0].metrics()["temp"].value == -124 and len(data[0].payload.metrics) == 1
    assert not host.seq_errors
    [death] = host.wait("NDEATH")  # the drained flow closed the node: NDEATH before DISCONNECT
    assert death.payload.bd_seq_metric.value == 0


def test_operational_behavior_data_commands_dcmd_through_the_validated_write_path(
    sim: ModbusSimulator, mqtt_url: str, group: str, host: Host
) -> None:
    """tck-id-operational-behavior-data-commands-dcmd-verb, -dcmd-metric-name, -dcmd-metric-value,
    tck-id-message-flow-device-dcmd-subscribe: a DCMD by alias writes the register and the value read
    back comes in DDATA; values the clamp or the tag's access refuse never reach the device."""
    with running(spec_for(sim.port, group), mqtt_url):
        [db] = host.wait("DBIRTH", device=DEVICE)
        alias = db.metrics()["Setpoints/Temperature"].alias
        host.dcmd("nexus-edge", DEVICE, 42, alias=alias, datatype=DT.INT16)
        wait_for(lambda: sim.get_registers("press-07", "holding", 5, 1) == [42], what="the DCMD write")
        wait_for(
            lambda: any(
                d.metrics().get("Setpoints/Temperature") is not None
                and d.metrics()["Setpoints/Temperature"].value == 42
                for d in host.of("DDATA", device=DEVICE)
            ),
            what="DDATA with the written setpoint",
        )
        host.dcmd(
            "nexus-edge", DEVICE, 5000, name="Setpoints/Temperature", datatype=DT.INT16
        )  # above the clamp
        host.dcmd("nexus-edge", DEVICE, 7, name="temp", datatype=DT.INT16)  # read-only tag
        host.dcmd("nexus-edge", DEVICE, 43, name="Setpoints/Temperature", datatype=DT.INT16)  # by name
        wait_for(lambda: sim.get_registers("press-07", "holding", 5, 1) == [43], what="the DCMD by name")
        assert sim.get_registers("press-07", "holding", 0, 1) == [(-123) & 0xFFFF]


def test_operational_behavior_device_ddeath_when_the_breaker_opens_and_dbirth_on_return(
    sim: ModbusSimulator, mqtt_url: str, group: str, host: Host
) -> None:
    """tck-id-operational-behavior-device-ddeath with a real device loss: the simulator stops, the
    polls fail until the breaker opens (2 failures here) and the device gets a DDEATH; the simulator
    comes back on the same port, the probe poll succeeds and a DBIRTH carries its values. With a
    deadband before the sink, which lets only the first failed poll through."""
    spec = spec_for(
        sim.port, group, deadband=True, breaker_failures=2, breaker_reset_s=0.5, reconnect_max_s=0.5
    )
    with running(spec, mqtt_url):
        host.wait("DBIRTH", device=DEVICE)
        sim.stop()
        [death] = host.wait("DDEATH", device=DEVICE, timeout=30)
        assert death.raw.HasField("seq")
        back = ModbusSimulator(host="127.0.0.1", port=sim.port, devices=sim.devices)
        with back:
            for t in TAGS:
                back.set_value("press-07", address(t), RAW[t["name"]] if t["name"] != "temp" else 55)
            births = host.wait("DBIRTH", 2, device=DEVICE, timeout=30)
            assert births[1].metrics()["temp"].value == 55
    kinds = [m.kind for m in host.messages if m.device == DEVICE]
    assert kinds[kinds.index("DDEATH") + 1] == "DBIRTH", kinds  # nothing of the dead device in between
    assert not host.seq_errors
