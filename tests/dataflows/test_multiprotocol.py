"""One flow spec reading a Modbus, an OPC UA and an S7 device through their real servers on loopback."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.opcua.simulator import OpcUaSimulator, SimVariable
from connectors.s7.simulator import S7Simulator
from core.batch import PointBatch, tag_id_for
from core.quality import Quality
from dataflows.compiler import Runtime, compile_flow
from dataflows.routing import WorkerLocalSource
from dataflows.spec import SpecError, parse_spec

pytestmark = pytest.mark.integration

LOCATION = {"enterprise": "acme", "site": "s1", "area": "a1", "line": "l1"}


class Collect(DynamicSink[PointBatch]):
    """Keeps the latest value per (device, tag) and stops the flow once every expected tag is good."""

    def __init__(self, expected: set[tuple[str, str]], stop: threading.Event) -> None:
        self.expected = {tag_id_for(d, t): (d, t) for d, t in expected}
        self.stop = stop
        self.latest: dict[tuple[str, str], tuple[float, int]] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[PointBatch]:
        sink = self

        class Part(StatelessSinkPartition[PointBatch]):
            def write_batch(self, items: list[PointBatch]) -> None:
                for b in items:
                    for tag_id, v, q in zip(
                        b.tag_ids.tolist(), b.values.tolist(), b.quality.tolist(), strict=True
                    ):
                        sink.latest[sink.expected[tag_id]] = (v, q)
                good = {k for k, (_, q) in sink.latest.items() if q == Quality.GOOD}
                if good == set(sink.expected.values()):
                    sink.stop.set()

        return Part()


def spec_doc(modbus_port: int, opcua_endpoint: str, zone1_node: str, s7_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "multi",
        "devices": [
            {
                "id": "press",
                "connection": {"host": "127.0.0.1", "port": modbus_port, "timeout_s": 1},
                "poll_interval_s": 0.2,
                "location": LOCATION,
                "tags": [
                    {"name": "temp", "table": "holding", "address": 0, "data_type": "int16", "scale": 0.1},
                    {
                        "name": "energy",
                        "table": "holding",
                        "address": 2,
                        "data_type": "float64",
                        "byte_order": "DCBA",
                    },
                ],
            },
            {
                "id": "oven",
                "protocol": "opcua",
                "connection": {"endpoint": opcua_endpoint, "timeout_s": 4},
                "poll_interval_s": 0.2,
                "location": LOCATION,
                "tags": [{"name": "zone1", "node_id": zone1_node, "unit": "degC", "convert_to": "degF"}],
            },
            {
                "id": "cell",
                "protocol": "s7",
                "connection": {"host": "127.0.0.1", "port": s7_port, "rack": 0, "slot": 1},
                "poll_interval_s": 0.2,
                "location": LOCATION,
                "tags": [
                    {"name": "speed", "address": "DB1.DBD0", "data_type": "REAL"},
                    {"name": "count", "address": "DB1.DBW4", "data_type": "INT", "scale": 2},
                ],
            },
        ],
        "operators": [{"id": "normalize", "type": "normalize"}],
        "sinks": [{"id": "out", "type": "historian"}],
    }


def test_one_flow_reads_modbus_opcua_and_s7() -> None:
    temp = ModbusTagAddress(table="holding", address=0, data_type="int16")
    energy = ModbusTagAddress(table="holding", address=2, data_type="float64", byte_order="DCBA")
    modbus = ModbusSimulator(port=0, devices=[SimulatedDevice("press", 1, [SimTag(temp), SimTag(energy)])])
    opcua = OpcUaSimulator([SimVariable("Zone1", "Double", 180.0)])
    s7 = S7Simulator(port=0, dbs={1: 16})
    with modbus, opcua, s7:
        modbus.set_value("press", temp, -42)
        modbus.set_value("press", energy, 12345.678)
        s7.set_value("DB1.DBD0", 1.5, data_type="REAL")
        s7.set_value("DB1.DBW4", -7, data_type="INT")
        spec = parse_spec(spec_doc(modbus.port, opcua.endpoint, opcua.node_id("Zone1"), s7.port))
        stop = threading.Event()
        sink = Collect(
            {("press", "temp"), ("press", "energy"), ("oven", "zone1"), ("cell", "speed"), ("cell", "count")},
            stop,
        )
        run_main(compile_flow(spec, Runtime(stop_event=stop, sinks={"out": sink})))
    values = {k: v for k, (v, _) in sink.latest.items()}
    assert values[("press", "temp")] == pytest.approx(-4.2)
    assert values[("press", "energy")] == pytest.approx(12345.678)
    assert values[("oven", "zone1")] == pytest.approx(180.0 * 9 / 5 + 32)
    assert values[("cell", "speed")] == pytest.approx(1.5)
    assert values[("cell", "count")] == pytest.approx(-14.0)
    assert not np.isnan(list(values.values())).any()


def test_protocol_specific_fields_are_checked() -> None:
    doc = spec_doc(502, "opc.tcp://127.0.0.1:4840", "ns=2;s=Zone1", 102)
    doc["devices"][2]["tags"][0]["address"] = "DB1.DBX0.9"
    doc["devices"][1]["tags"][0]["node_id"] = "not a node id"
    doc["devices"][0]["protocol"] = "profinet"
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    paths = [p for p, _ in info.value.problems]
    assert "devices[0]" in paths
    assert "devices[1].tags[0].node_id" in paths
    assert any(p.startswith("devices[2].tags[0]") for p in paths)
    assert "bit must be 0..7" in str(info.value)


def _device_input(flow: Any) -> WorkerLocalSource[Any]:
    (source,) = [s.source for s in flow.substeps if isinstance(getattr(s, "source", None), WorkerLocalSource)]
    return source


def test_polled_devices_alone_are_the_flows_sole_input_and_mqtt_devices_end_that() -> None:
    """Without MQTT devices no item crosses workers, so a napping worker may wait for its own polls
    (``connectors.nap``); an MQTT source's partitions are placed by Bytewax, their items keyed over."""
    doc = spec_doc(502, "opc.tcp://127.0.0.1:4840", "ns=2;s=Zone1", 102)
    runtime = Runtime(stop_event=threading.Event(), sinks={"out": Collect(set(), threading.Event())})
    assert _device_input(compile_flow(parse_spec(doc), runtime)).sole_input
    gateway = {
        "id": "gw-01",
        "protocol": "mqtt",
        "location": LOCATION,
        "tags": [{"name": "ambient", "topic": "sensors/gw-01/ambient", "value_path": "v"}],
    }
    doc["devices"].append(gateway)
    runtime = Runtime(
        stop_event=threading.Event(),
        sinks={"out": Collect(set(), threading.Event())},
        mqtt_url="mqtt://127.0.0.1:1883",  # (compiling connects nowhere)
    )
    assert not _device_input(compile_flow(parse_spec(doc), runtime)).sole_input
