"""The calculated-tags adapter in a real (in-process) dataflow."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch, tag_id_for
from operators.analytics_bytewax import CalculatedLogic, calculated_tags
from operators.expressions import CalculatedTags

S = 1_000_000_000


def test_dataflow_appends_calculated_points_per_device() -> None:
    core = CalculatedTags("m1", {"power": "voltage * current / 1000"}, {"voltage": 1, "current": 2})
    items = [
        PointBatch.from_values("m1", [1, 2], [400.0, 10.0], ts_ns=S),
        PointBatch.from_values("m2", [1, 2], [1.0, 1.0], ts_ns=S),  # no calculations: passes through
        PointBatch.from_values("m1", [2], [20.0], ts_ns=2 * S),
    ]
    flow = Dataflow("calc_test")
    keyed = op.key_on(
        "by_device", op.input("inp", flow, TestingSource(items, batch_size=2)), lambda b: b.device_id
    )
    got: list[tuple[str, PointBatch]] = []
    op.output("out", calculated_tags("calc", keyed, core), TestingSink(got))
    run_main(flow)
    power = tag_id_for("m1", "power")
    rows = [(k, b.tag_ids.tolist(), b.values.tolist()) for k, b in got]
    assert rows == [
        ("m1", [1, 2, power], [400.0, 10.0, 4.0]),
        ("m2", [1, 2], [1.0, 1.0]),
        ("m1", [2, power], [20.0, 8.0]),
    ]


def test_logic_snapshot_is_the_state_and_resumes() -> None:
    core = CalculatedTags("m1", {"double": "x * 2"}, {"x": 1})
    logic = CalculatedLogic({"m1": core}, None)
    logic.on_item(PointBatch.from_values("m1", [1], [3.0], ts_ns=S))
    resumed = CalculatedLogic({"m1": core}, logic.snapshot())
    (out,), _ = resumed.on_item(PointBatch.from_values("m1", [7], [0.0], ts_ns=2 * S))
    assert out.values.tolist() == [0.0]  # unrelated tag: nothing triggered, but the state was kept
    assert resumed.snapshot().value.tolist() == [3.0]
