"""A config item through a whole compiled flow: every step passes it on in order, each swaps its
parameters for the device, and the sinks (points and derived) receive it before the new points."""

from __future__ import annotations

import copy
import time
from typing import Any

from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch, tag_id_for
from core.device_config import DeviceConfig
from core.records import AggBatch, Alert
from dataflows.compiler import DERIVED_STEP, Runtime, compile_flow, device_config_for
from dataflows.spec import parse_spec

LOC = {"enterprise": "e", "site": "s", "area": "a", "line": "l"}
DOC: dict[str, Any] = {
    "version": 1,
    "id": "hotc",
    "devices": [
        {
            "id": "d1",
            "connection": {"host": "127.0.0.1"},
            "location": LOC,
            "tags": [
                {"name": "a", "table": "holding", "address": 0, "scale": 0.1, "alarms": {"high": 50}},
                {"name": "b", "table": "holding", "address": 1, "deadband": {"absolute": 10}},
            ],
            "calculated": [{"name": "c", "expression": "a + b"}],
        },
        {
            "id": "d2",
            "connection": {"host": "127.0.0.1"},
            "location": LOC,
            "tags": [{"name": "x", "table": "holding", "address": 0, "scale": 0.1}],
        },
    ],
    "operators": [
        {"id": "normalize", "type": "normalize"},
        {"id": "calculate", "type": "calculate"},
        {"id": "deadband", "type": "deadband"},
        {"id": "window", "type": "window", "windows": ["1m"]},
        {"id": "anomaly", "type": "anomaly"},
    ],
    "sinks": [{"id": "uns", "type": "mqtt_uns"}],
}


def tid(device: str, name: str) -> int:
    return tag_id_for(device, name)


def test_a_config_item_reaches_every_step_and_sink_in_order() -> None:
    spec = parse_spec(DOC)
    doc = copy.deepcopy(DOC)
    d1 = doc["devices"][0]
    d1["tags"][0]["scale"] = 1.0  # a: scale 0.1 -> 1
    d1["tags"].append({"name": "e", "table": "holding", "address": 2})  # e: new
    d1["calculated"] = [{"name": "c", "expression": "a + b"}, {"name": "f", "expression": "e * 2"}]
    item = device_config_for(parse_spec(doc), "d1", 2)
    now = time.time_ns()
    batches: list[Any] = [
        PointBatch.from_values("d1", [tid("d1", "a"), tid("d1", "b")], [100.0, 1.0], ts_ns=now),
        PointBatch.from_values("d2", [tid("d2", "x")], [100.0], ts_ns=now),
        item,
        PointBatch.from_values(
            "d1", [tid("d1", "a"), tid("d1", "b"), tid("d1", "e")], [100.0, 2.0, 5.0], ts_ns=now + 1
        ),
        PointBatch.from_values("d2", [tid("d2", "x")], [200.0], ts_ns=now + 1),
    ]
    published: list[Any] = []
    derived: list[Any] = []
    flow = compile_flow(
        spec,
        Runtime(
            source=TestingSource(batches),
            sinks={"uns": TestingSink(published), DERIVED_STEP: TestingSink(derived)},
        ),
    )
    run_main(flow)
    d1_items = [i for i in published if i.device_id == "d1"]
    assert [type(i) for i in d1_items] == [PointBatch, DeviceConfig, PointBatch]
    assert d1_items[1] is item
    before = dict(zip(d1_items[0].tag_ids.tolist(), d1_items[0].values.tolist(), strict=True))
    after = dict(zip(d1_items[2].tag_ids.tolist(), d1_items[2].values.tolist(), strict=True))
    assert before == {tid("d1", "a"): 10.0, tid("d1", "b"): 1.0, tid("d1", "c"): 11.0}
    # New scale; b (within its deadband of the kept 1.0) dropped; c from the kept calculation;
    # f is a new calculation over the new tag.
    assert after == {tid("d1", "a"): 100.0, tid("d1", "c"): 102.0, tid("d1", "e"): 5.0, tid("d1", "f"): 10.0}
    # The other device's parameters are untouched.
    xs = [b.values.tolist() for b in published if b.device_id == "d2"]
    assert xs == [[10.0], [20.0]]
    # The derived sink learns the device's tags (from the window and anomaly taps) before the
    # alert the new scale raises (100 > 50).
    kinds = [type(i).__name__ for i in derived if not isinstance(i, AggBatch)]
    assert "DeviceConfig" in kinds
    alerts = [i for i in derived if isinstance(i, Alert)]
    assert [(a.tag_id, a.state) for a in alerts] == [(tid("d1", "a"), "raised")]
    assert kinds.index("DeviceConfig") < kinds.index("Alert")
