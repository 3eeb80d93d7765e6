"""The Bytewax adapter: a dataflow with TestingSource/TestingSink, and snapshot/resume of the logic."""

from __future__ import annotations

import pickle

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch
from core.records import Alert
from operators.anomaly import AnomalyDetector, MlCheck, RangeCheck, StuckCheck, TagChecks
from operators.anomaly_bytewax import AnomalyLogic, detect_anomalies

S = 1_000_000_000
CHECKS = {
    1: TagChecks(range=RangeCheck(high=100.0, hysteresis=5.0)),
    2: TagChecks(stuck=StuckCheck(samples=3)),
}


def _batches() -> list[PointBatch]:
    out = []
    for i, (v1, v2) in enumerate([(90, 1), (120, 1), (130, 1), (97, 2), (80, 3)]):
        for dev in ("press-01", "press-02"):
            bump = 0 if dev == "press-01" else -50  # press-02 never goes high
            out.append(PointBatch.from_values(dev, [1, 2], [v1 + bump, v2], ts_ns=i * S))
    return out


def test_detect_anomalies_dataflow_flattens_alerts_per_device() -> None:
    flow = Dataflow("anomaly_test")
    batches = op.input("in", flow, TestingSource(_batches(), batch_size=3))
    keyed = op.key_on("key", batches, lambda b: b.device_id)
    alerts = detect_anomalies("anomaly", keyed, AnomalyDetector(CHECKS))
    out: list[tuple[str, Alert]] = []
    op.output("out", alerts, TestingSink(out))
    run_main(flow)

    got = sorted((key, a.tag_id, a.kind, a.state, a.ts_ns // S) for key, a in out)
    assert got == [
        ("press-01", 1, "high", "cleared", 4),
        ("press-01", 1, "high", "raised", 1),
        ("press-01", 2, "stuck", "cleared", 3),
        ("press-01", 2, "stuck", "raised", 2),
        ("press-02", 2, "stuck", "cleared", 3),
        ("press-02", 2, "stuck", "raised", 2),
    ]
    assert all(isinstance(a, Alert) and a.device_id == key for key, a in out)


def test_logic_snapshot_is_bytes_and_resumes_identically() -> None:
    rng = np.random.default_rng(0)
    det = AnomalyDetector({1: TagChecks(ml=MlCheck(model="hst", window_size=10, warm_up=10))})
    batches = [
        PointBatch.from_values("d", [1], [float(v)], ts_ns=i * S) for i, v in enumerate(rng.normal(0, 1, 40))
    ]
    batches.append(PointBatch.from_values("d", [1], [50.0], ts_ns=41 * S))
    logic = AnomalyLogic.resume(det, None)
    for b in batches[:20]:
        logic.on_item(b)
    snap = logic.snapshot()
    assert isinstance(snap, bytes)
    resumed = AnomalyLogic.resume(pickle.loads(pickle.dumps(det)), snap)
    a = [list(logic.on_item(b)[0]) for b in batches[20:]]
    b = [list(resumed.on_item(b)[0]) for b in batches[20:]]
    assert a == b and any(a)
