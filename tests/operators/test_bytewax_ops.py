"""The Bytewax adapters: normalize -> key by device -> deadband, run with the testing harness."""

from __future__ import annotations

import pickle

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch
from core.quality import Quality
from operators.bytewax_ops import DeadbandLogic, deadband, normalize
from operators.deadband import Deadband, DeadbandParams, DeadbandState
from operators.normalize import NormalizeParams, Normalizer
from tests.operators.operators_reference import same_batch

S = 1_000_000_000
NORM = {
    1: NormalizeParams(scale=0.1, clamp_low=0.0, clamp_high=100.0),
    2: NormalizeParams.for_units("bar", "kPa"),
}
BAND = {1: DeadbandParams(absolute=1.0, heartbeat_s=5.0), 2: DeadbandParams(absolute=10.0)}


def polls() -> list[PointBatch]:
    raw = [
        # (t, press-01 raw [tag1, tag2], press-02 raw [tag1, tag2])
        (0, [200.0, 1.0], [500.0, 2.0]),
        (1, [205.0, 1.05], [500.0, 2.0]),  # press-01 tag1 moves 0.5: held
        (2, [215.0, 1.2], [2000.0, 2.0]),  # press-01 tag1 +1.5 and tag2 +20 kPa; press-02 tag1 clamped
        (3, [215.0, 1.2], [2000.0, 2.0]),
        (7, [215.0, 1.2], [2000.0, 2.0]),  # heartbeat of tag1 on both (5 s since last publication)
    ]
    out = []
    for t, a, b in raw:
        out.append(PointBatch.from_values("press-01", [1, 2], a, ts_ns=t * S))
        out.append(PointBatch.from_values("press-02", [1, 2], b, ts_ns=t * S))
    return out


def run_flow(batches: list[PointBatch], batch_size: int = 1) -> list[tuple[str, PointBatch]]:
    flow = Dataflow("telemetry_test")
    s = op.input("devices", flow, TestingSource(batches, batch_size=batch_size))
    s = normalize("normalize", s, Normalizer(NORM))
    keyed = op.key_on("deadband_key", s, lambda b: b.device_id)
    published = deadband("deadband", keyed, Deadband(BAND))
    got: list[tuple[str, PointBatch]] = []
    op.output("out", published, TestingSink(got))
    run_main(flow)
    return got


def summary(got: list[tuple[str, PointBatch]]) -> list[tuple[str, int, list[tuple[int, float, int]]]]:
    return [
        (
            key,
            int(b.ts_ns[0]) // S,
            list(
                zip(
                    b.tag_ids.tolist(),
                    [round(v, 6) for v in b.values.tolist()],
                    b.quality.tolist(),
                    strict=True,
                )
            ),
        )
        for key, b in got
    ]


def test_normalize_then_deadband_per_device() -> None:
    got = run_flow(polls())
    assert all(key == b.device_id for key, b in got)
    assert all(len(b) for _, b in got), "empty batches are dropped"
    clamped = int(Quality.CLAMPED)
    assert sorted(summary(got)) == sorted(
        [
            ("press-01", 0, [(1, 20.0, 0), (2, 100.0, 0)]),
            ("press-02", 0, [(1, 50.0, 0), (2, 200.0, 0)]),
            ("press-01", 2, [(1, 21.5, 0), (2, 120.0, 0)]),
            ("press-02", 2, [(1, 100.0, clamped)]),
            ("press-01", 7, [(1, 21.5, 0)]),
            ("press-02", 7, [(1, 100.0, clamped)]),
        ]
    )


def test_dataflow_equals_the_cores_and_source_batching_does_not_matter() -> None:
    batches = polls()
    norm, band = Normalizer(NORM), Deadband(BAND)
    states: dict[str, DeadbandState] = {}
    expected = []
    for b in batches:
        states[b.device_id], out = band.process(states.get(b.device_id, DeadbandState.empty()), norm.apply(b))
        if len(out):
            expected.append((b.device_id, out))
    for size in (1, 3, 10):
        got = run_flow(batches, batch_size=size)
        for device in ("press-01", "press-02"):
            mine = [o for k, o in got if k == device]
            want = [o for k, o in expected if k == device]
            assert len(mine) == len(want) and all(same_batch(x, y) for x, y in zip(mine, want, strict=True))


def test_logic_snapshot_is_the_small_picklable_state_and_resumes() -> None:
    core = Deadband(BAND)
    logic = DeadbandLogic(core)
    first = PointBatch.from_values("d", [1, 2], [1.0, 1.0], ts_ns=0)
    out, discard = logic.on_item(first)
    assert [len(b) for b in out] == [2] and discard is False
    snap = logic.snapshot()
    assert isinstance(snap, DeadbandState) and len(pickle.dumps(snap)) < 2000
    resumed = DeadbandLogic(core, pickle.loads(pickle.dumps(snap)))
    same = PointBatch.from_values("d", [1, 2], [1.5, 1.0], ts_ns=S)
    assert list(resumed.on_item(same)[0]) == []  # held: the resumed state remembers the published values
    moved = resumed.on_item(PointBatch.from_values("d", [1, 2], [2.5, 1.0], ts_ns=2 * S))[0]
    assert [b.values.tolist() for b in moved] == [[2.5]]
    np.testing.assert_array_equal(snap.value, [1.0, 1.0])  # an earlier snapshot is never modified
