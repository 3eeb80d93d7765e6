"""The ``sparkplug_b`` sink node: what the spec validator refuses, and the plan the compiler builds."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from connectors.sparkplug.config import DataType, EdgeNodePlan
from dataflows.compiler import Runtime, compile_flow, sparkplug_plan
from dataflows.spec import SparkplugNode, SpecError, parse_spec

DOC: dict[str, Any] = {
    "version": 1,
    "id": "t",
    "devices": [
        {
            "id": "press-01",
            "connection": {"host": "127.0.0.1", "port": 5020, "breaker_failures": 4},
            "location": {"enterprise": "acme", "site": "s1", "area": "pressing", "line": "l1"},
            "tags": [
                {"name": "temp", "table": "holding", "address": 0, "data_type": "int16", "scale": 0.1},
                {"name": "count", "table": "holding", "address": 1, "data_type": "uint32"},
                {
                    "name": "Count2",
                    "table": "holding",
                    "address": 3,
                    "data_type": "float32",
                    "convert_to": "degF",
                    "unit": "degC",
                },
                {"name": "run", "table": "coil", "address": 0, "data_type": "bool", "access": "read_write"},
                {"name": "recipe", "table": "holding", "address": 5, "data_type": "string", "length": 4},
            ],
            "calculated": [{"name": "double_count", "expression": "count * 2"}],
        },
        {
            "id": "press-02",
            "connection": {"host": "127.0.0.1", "port": 5021},
            "location": {"enterprise": "acme", "site": "s1", "area": "pressing", "line": "l2"},
            "tags": [{"name": "temp", "table": "holding", "address": 0, "data_type": "int16"}],
        },
    ],
    "sinks": [{"id": "scada", "type": "sparkplug_b", "group_id": "plant1", "edge_node_id": "edge-1"}],
}


def doc(**sink: Any) -> dict[str, Any]:
    d = copy.deepcopy(DOC)
    d["sinks"][0].update(sink)
    return d


def problems(d: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(d)
    return str(info.value)


def test_plan_datatypes_aliases_and_breaker_thresholds() -> None:
    spec = parse_spec(doc(metrics={"press-01/temp": "Oil/Temperature"}, device_ids="location"))
    node = spec.sinks[0]
    assert isinstance(node, SparkplugNode)
    plan = sparkplug_plan(spec, node, "mqtt://127.0.0.1:1883")
    d1, d2 = plan.devices
    assert (d1.sparkplug_id, d2.sparkplug_id) == ("pressing.l1.press-01", "pressing.l2.press-02")
    assert [(m.name, m.datatype) for m in d1.metrics] == [
        ("Oil/Temperature", DataType.Double),  # scaled: a real number
        ("count", DataType.UInt32),
        ("Count2", DataType.Double),  # converted unit
        ("run", DataType.Boolean),
        ("recipe", DataType.String),
        ("double_count", DataType.Double),  # calculated
    ]
    assert [m.writable for m in d1.metrics] == [False, False, False, True, False, False]
    assert d1.metrics[0].tag_name == "temp" and d1.metrics[0].unit == ""
    assert (d1.death_after_failures, d2.death_after_failures) == (4, 5)  # the devices' breaker thresholds


def test_explicit_device_ids_win() -> None:
    spec = parse_spec(doc(devices={"press-02": "Press 2"}))
    node = spec.sinks[0]
    assert isinstance(node, SparkplugNode)
    assert [d.sparkplug_id for d in sparkplug_plan(spec, node, "mqtt://h").devices] == ["press-01", "Press 2"]


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"group_id": "plant/1"}, "sinks[0].group_id: String should match pattern"),
        ({"edge_node_id": "edge#1"}, "sinks[0].edge_node_id: String should match pattern"),
        ({"primary_host_id": ""}, "sinks[0].primary_host_id: String should have at least 1 character"),
        ({"devices": {"press-09": "P9"}}, "sinks[0].devices: unknown device 'press-09'"),
        (
            {"metrics": {"press-01/nope": "x"}},
            "sinks[0].metrics: 'press-01/nope' is not a `device/tag` of the flow",
        ),
        (
            {"devices": {"press-02": "PRESS-01"}},
            "sinks[0]: devices 'press-01' and 'press-02' get the same Sparkplug device id 'PRESS-01'",
        ),
        (
            {"metrics": {"press-01/temp": "COUNT"}},
            "tags 'temp' and 'count' of device 'press-01' get the same metric name 'count'",
        ),
        ({"backlog_points": -1}, "sinks[0].backlog_points: Input should be greater than or equal to 0"),
    ],
)
def test_bad_sparkplug_nodes_are_refused_with_their_path(sink: dict[str, Any], message: str) -> None:
    assert message in problems(doc(**sink))


def test_tags_differing_only_in_case_are_refused_as_metric_names() -> None:
    d = doc()
    d["devices"][0]["tags"][2]["name"] = "COUNT"
    assert "get the same metric name 'COUNT'" in problems(d)


def test_compiling_needs_a_broker() -> None:
    spec = parse_spec(doc())
    with pytest.raises(ValueError, match=r"sink 'scada' \(sparkplug_b\) needs a broker"):
        compile_flow(spec, Runtime())


def test_edge_node_plan_checks_ids() -> None:
    with pytest.raises(ValueError, match="edge_node_id 'a\\+b' must not contain"):
        EdgeNodePlan(url="mqtt://h", group_id="g", edge_node_id="a+b")


def test_spool_folder_from_the_node_or_the_platform() -> None:
    """The node's own `spool_dir` wins; otherwise the platform's spool folder (per flow and sink)."""
    spec = parse_spec(doc())
    node = spec.sinks[0]
    assert isinstance(node, SparkplugNode)
    assert sparkplug_plan(spec, node, "mqtt://h").spool_dir is None  # in memory
    assert (
        sparkplug_plan(spec, node, "mqtt://h", "/var/spool/nexus/t/scada").spool_dir
        == "/var/spool/nexus/t/scada"
    )
    own = parse_spec(doc(spool_dir="/data/spb"))
    own_node = own.sinks[0]
    assert isinstance(own_node, SparkplugNode)
    assert sparkplug_plan(own, own_node, "mqtt://h", "/var/spool/nexus").spool_dir == "/data/spb"
