"""``simulators_for``: OPC UA and S7 servers populated from a flow spec, read by a compiled flow."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from connectors.opcua.simulator import OpcUaSimulator
from connectors.s7.simulator import S7Simulator
from core.batch import PointBatch, tag_id_for
from core.quality import Quality
from dataflows.compiler import Runtime, compile_flow
from dataflows.spec import SpecError, parse_spec
from nexus.demo import describe, simulated_devices, simulators_for
from nexus.embedded import free_port

pytestmark = pytest.mark.integration

LOCATION = {"enterprise": "acme", "site": "s1", "area": "a1", "line": "l1"}


class Collect(DynamicSink[PointBatch]):
    """Keeps the latest value per (device, tag); stops the flow once every tag was good twice."""

    def __init__(self, expected: set[tuple[str, str]], stop: threading.Event) -> None:
        self.names = {tag_id_for(d, t): (d, t) for d, t in expected}
        self.stop = stop
        self.latest: dict[tuple[str, str], tuple[float, int]] = {}
        self.good: dict[tuple[str, str], int] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[PointBatch]:
        sink = self

        class Part(StatelessSinkPartition[PointBatch]):
            def write_batch(self, items: list[PointBatch]) -> None:
                for b in items:
                    for tag_id, v, q in zip(
                        b.tag_ids.tolist(), b.values.tolist(), b.quality.tolist(), strict=True
                    ):
                        key = sink.names[tag_id]
                        sink.latest[key] = (v, q)
                        if q == Quality.GOOD:
                            sink.good[key] = sink.good.get(key, 0) + 1
                if len(sink.good) == len(sink.names) and min(sink.good.values()) >= 2:
                    sink.stop.set()

        return Part()


def spec_doc(opcua_port: int, s7_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "sims",
        "devices": [
            {
                "id": "oven",
                "protocol": "opcua",
                "connection": {"endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/plant/oven", "timeout_s": 4},
                "poll_interval_s": 0.2,
                "location": LOCATION,
                "tags": [
                    {
                        "name": "zone1",
                        "node_id": "ns=2;s=Zone1",
                        "simulate": {"kind": "constant", "offset": 180},
                    },
                    {
                        "name": "zone2",
                        "node_id": "ns=3;i=1001",
                        "simulate": {"kind": "constant", "offset": -42.5},
                    },
                    {
                        "name": "parts",
                        "node_id": "ns=2;s=Line1.Parts",
                        "simulate": {"kind": "counter", "offset": 7, "period_s": 3600},
                    },
                    {
                        "name": "fan",
                        "node_id": "ns=2;s=Fan",
                        "simulate": {"kind": "sine", "offset": 50, "amplitude": 10, "period_s": 5},
                    },
                    {"name": "idle", "node_id": "ns=2;s=Idle", "access": "read_write"},
                ],
            },
            {
                "id": "cell",
                "protocol": "s7",
                "connection": {"host": "127.0.0.1", "port": s7_port},
                "poll_interval_s": 0.2,
                "location": LOCATION,
                "tags": [
                    {
                        "name": "speed",
                        "address": "DB1.DBD0",
                        "data_type": "REAL",
                        "simulate": {"kind": "constant", "offset": 1.5},
                    },
                    {
                        "name": "count",
                        "address": "DB1.DBW4",
                        "data_type": "INT",
                        "simulate": {"kind": "counter", "offset": 32767, "period_s": 3600},
                    },
                    {
                        "name": "energy",
                        "address": "DB7.DBD120",
                        "data_type": "DINT",
                        "simulate": {"kind": "step", "step_values": [-100000], "period_s": 60},
                    },
                    {
                        "name": "running",
                        "address": "M300.1",
                        "data_type": "BOOL",
                        "simulate": {"kind": "constant", "offset": 1},
                    },
                    {
                        "name": "level",
                        "address": "DB1.DBD8",
                        "data_type": "REAL",
                        "simulate": {"kind": "ramp", "amplitude": 100, "period_s": 10},
                    },
                    {"name": "spare", "address": "DB1.DBW12", "data_type": "INT"},
                ],
            },
        ],
        "operators": [{"id": "normalize", "type": "normalize"}],
        "sinks": [{"id": "out", "type": "historian"}],
    }


def test_simulators_from_a_spec_serve_every_tag_to_a_compiled_flow() -> None:
    spec = parse_spec(spec_doc(free_port(), free_port()))
    sims = simulators_for(spec)
    assert [type(s) for s in sims] == [OpcUaSimulator, S7Simulator]
    opcua, s7 = sims
    assert isinstance(opcua, OpcUaSimulator) and isinstance(s7, S7Simulator)
    assert opcua.endpoint == spec.devices[0].connection.endpoint  # type: ignore[union-attr]
    assert s7.db_numbers == [1, 7]
    assert len(s7.raw("DB", 7)) == 128  # DB7.DBD120 ends at 124, rounded up to 16 bytes
    assert len(s7.raw("M")) >= 301

    expected = {(d.id, t.name) for d in spec.devices for t in d.tags}
    stop = threading.Event()
    sink = Collect(expected, stop)
    with simulated_devices(spec) as started:
        opcua, s7 = started  # type: ignore[assignment]
        assert isinstance(opcua, OpcUaSimulator) and isinstance(s7, S7Simulator)
        assert opcua.listening and s7.running
        # exactly the node ids of the spec, namespace 3 included
        assert {opcua.node_id(n) for n in opcua.variables} == {
            "ns=2;s=Zone1",
            "ns=3;i=1001",
            "ns=2;s=Line1.Parts",
            "ns=2;s=Fan",
            "ns=2;s=Idle",
        }
        assert "ns=3;i=1001" in describe(opcua) and "DB7 (128 B)" in describe(s7)
        timer = threading.Timer(30.0, stop.set)  # a hard deadline: never hang the suite
        timer.start()
        try:
            run_main(compile_flow(spec, Runtime(stop_event=stop, sinks={"out": sink})))
        finally:
            timer.cancel()

    assert set(sink.good) == expected, f"tags never good: {expected - set(sink.good)}"
    values = {k: v for k, (v, _) in sink.latest.items()}
    assert values[("oven", "zone1")] == 180.0
    assert values[("oven", "zone2")] == -42.5
    assert values[("oven", "parts")] == 7.0
    assert 40.0 <= values[("oven", "fan")] <= 60.0
    assert values[("oven", "idle")] == 0.0
    assert values[("cell", "speed")] == 1.5
    assert values[("cell", "count")] == 32767.0
    assert values[("cell", "energy")] == -100000.0
    assert values[("cell", "running")] == 1.0
    assert 0.0 <= values[("cell", "level")] < 100.0
    assert values[("cell", "spare")] == 0.0
    assert not any(math.isnan(v) for v in values.values())


def test_s7_counter_wraps_like_a_real_counter_and_opcua_counter_is_an_integer() -> None:
    spec = parse_spec(spec_doc(free_port(), free_port()))
    opcua, s7 = simulators_for(spec)
    assert isinstance(opcua, OpcUaSimulator) and isinstance(s7, S7Simulator)
    assert opcua.variables["Line1.Parts"].data_type == "Int32"
    assert opcua.variables["Idle"].writable and not opcua.variables["Zone1"].writable
    s7.update_signals(t=3600.0)  # the counter goes one past 32767
    assert s7.get_value("DB1.DBW4", "INT") == -32768.0


def test_nothing_to_simulate_for_remote_devices() -> None:
    doc = spec_doc(4840, 102)
    doc["devices"][0]["connection"]["endpoint"] = "opc.tcp://plc.example:4840"
    doc["devices"][1]["connection"]["host"] = "10.0.0.7"
    assert simulators_for(parse_spec(doc)) == []


def test_simulate_is_checked_on_opcua_and_s7_tags() -> None:
    doc = spec_doc(4840, 102)
    doc["devices"][0]["tags"][0]["simulate"] = {"kind": "square"}
    doc["devices"][1]["tags"][0]["simulate"] = {"kind": "step"}
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    paths = [p for p, _ in info.value.problems]
    assert "devices[0].tags[0].simulate.kind" in paths
    assert "devices[1].tags[0].simulate" in paths
