"""The fused chain as one Bytewax step gives what the four per-operator steps give."""

from __future__ import annotations

import pickle
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch
from operators import bytewax_ops
from operators.anomaly_bytewax import detect_anomalies
from operators.chain import OperatorChain
from operators.chain_bytewax import ChainLogic, operator_chain
from operators.window_bytewax import tumbling_aggregate
from tests.operators.test_fast_paths import T0, S, cores, polls, same_output

NOW = T0 + 10_000 * S  # the windows' clock: far ahead, so idle closing never interferes


def _device(b: PointBatch) -> str:
    return b.device_id


def run(batches: list[PointBatch], fused: bool) -> dict[str, list[Any]]:
    norm, db, win, det = cores()
    flow = Dataflow("chain_test")
    s = op.input("in", flow, TestingSource(batches, batch_size=7))
    got: dict[str, list[Any]] = {"points": [], "aggs": [], "alerts": []}
    if fused:
        out = operator_chain(
            "chain", op.key_on("key", s, _device), OperatorChain(norm, db, win, det), clock=lambda: NOW
        )
        points, aggs, alerts = out.points, out.aggs, out.alerts
    else:
        keyed = op.key_on("key", bytewax_ops.normalize("normalize", s, norm), _device)
        points = bytewax_ops.deadband("deadband", keyed, db)
        aggs, _late = tumbling_aggregate("window", points, win, clock=lambda: NOW)
        alerts = detect_anomalies("checks", points, det)
    for name, stream in (("points", points), ("aggs", aggs), ("alerts", alerts)):
        op.output(name, stream, TestingSink(got[name]))
    run_main(flow)
    return got


def test_one_step_equals_four_steps() -> None:
    batches = polls(2, n_polls=90)
    fused, separate = run(batches, True), run(batches, False)
    assert len(fused["points"]) > 100 and fused["alerts"] and fused["aggs"]
    for name in fused:
        by_key = sorted(fused[name], key=lambda kv: kv[0]), sorted(separate[name], key=lambda kv: kv[0])
        assert same_output(*by_key), name


def test_snapshot_resumes_the_same_chain() -> None:
    """A device's logic rebuilt from its snapshot continues exactly as the original."""
    chain = OperatorChain(*cores())
    batches = [b for b in polls(4, n_polls=40) if b.device_id == "d0"]
    a = ChainLogic(chain, lambda: NOW, None)
    for b in batches[:20]:
        a.on_item(b)
    b_logic = ChainLogic(chain, lambda: NOW, pickle.loads(a.snapshot()))
    for b in batches[20:]:
        assert same_output(list(a.on_item(b)[0]), list(b_logic.on_item(b)[0]))
    assert same_output(a.on_eof()[0], b_logic.on_eof()[0])
