"""Swinging-door compression: the error bound, the heartbeat, a naive reference, the contract."""

from __future__ import annotations

import itertools
import math
import pickle
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.batch import PointBatch
from operators.swinging_door import SwingingDoor, SwingingDoorParams, SwingingDoorState
from tests.operators.operators_reference import copy_of, frozen, same_batch

S = 1_000_000_000
Point = tuple[int, int, float, int]  # (ts_ns, tag, value, quality)


class NaiveSDT:
    """Point-by-point SDT with the end-point door test, as the module docstring specifies."""

    def __init__(self, params: Mapping[int, SwingingDoorParams]) -> None:
        self.params = params
        self.tags: dict[int, dict[str, object]] = {}

    def point(self, ts: int, tag: int, v: float, q: int) -> list[Point]:
        p = self.params.get(tag)
        if p is None:
            return [(ts, tag, v, q)]
        s = self.tags.get(tag)
        new = (ts, tag, v, q)
        if s is None:
            self.tags[tag] = {"a": new, "held": None, "lo": -math.inf, "hi": math.inf}
            return [new]
        a, held = s["a"], s["held"]
        assert isinstance(a, tuple)
        last_t = held[0] if isinstance(held, tuple) else a[0]
        if q != a[3] or math.isnan(v) or math.isnan(a[2]) or ts <= last_t:
            s.update(a=new, held=None, lo=-math.inf, hi=math.inf)
            return ([held] if isinstance(held, tuple) else []) + [new]
        out: list[Point] = []
        slope = (v - a[2]) / ((ts - a[0]) / 1e9)
        lo, hi = s["lo"], s["hi"]
        assert isinstance(lo, float) and isinstance(hi, float)
        if not lo <= slope <= hi:
            assert isinstance(held, tuple)
            out.append(held)
            a, lo, hi = held, -math.inf, math.inf
        dt = (ts - a[0]) / 1e9
        lo = max(lo, (v - a[2] - p.deviation) / dt)
        hi = min(hi, (v - a[2] + p.deviation) / dt)
        if p.max_interval_s is not None and ts - a[0] >= round(p.max_interval_s * 1e9):
            out.append(new)
            s.update(a=new, held=None, lo=-math.inf, hi=math.inf)
        else:
            s.update(a=a, held=new, lo=lo, hi=hi)
        return out

    def flush(self) -> list[Point]:
        out = []
        for s in self.tags.values():
            if isinstance(s["held"], tuple):
                out.append(s["held"])
                s.update(a=s["held"], held=None, lo=-math.inf, hi=math.inf)
        return sorted(out, key=lambda p: p[0])


def points(batch: PointBatch) -> list[Point]:
    return [
        (int(batch.ts_ns[i]), int(batch.tag_ids[i]), float(batch.values[i]), int(batch.quality[i]))
        for i in range(len(batch))
    ]


def same_points(a: list[Point], b: list[Point]) -> bool:
    return len(a) == len(b) and all(
        x[:2] == y[:2] and x[3] == y[3] and (x[2] == y[2] or (math.isnan(x[2]) and math.isnan(y[2])))
        for x, y in zip(a, b, strict=True)
    )


def run_core(sdt: SwingingDoor, batches: list[PointBatch]) -> list[list[Point]]:
    state = sdt.initial_state()
    outs = []
    for b in batches:
        state, out = sdt.process(state, b)
        outs.append(points(out))
    state, out = sdt.flush(state, batches[0].device_id if batches else "d")
    outs.append(points(out))
    return outs


# -- properties ---------------------------------------------------------------------------------------

PARAMS = {
    1: SwingingDoorParams(deviation=0.5),
    2: SwingingDoorParams(deviation=2.0, max_interval_s=7.0),
    3: SwingingDoorParams(deviation=1e-3, max_interval_s=0.5),
}


@st.composite
def series(draw: st.DrawFn) -> list[PointBatch]:
    """Batches of tags 1..4 (4 unconfigured), strictly increasing time per tag, tags repeating."""
    n_batches = draw(st.integers(1, 12))
    t = 0
    out = []
    walk = {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    for _ in range(n_batches):
        tags = draw(st.lists(st.sampled_from([1, 2, 3, 4]), min_size=0, max_size=8))
        ts, vs = [], []
        for tag in tags:
            t += draw(st.integers(1, 3 * S))
            walk[tag] += draw(st.floats(-3, 3, allow_nan=False))
            ts.append(t)
            vs.append(walk[tag])
        out.append(PointBatch.from_values("d", tags, vs, ts_ns=np.array(ts, dtype=np.int64)))
    return out


@settings(max_examples=200, deadline=None)
@given(batches=series())
def test_error_bound_heartbeat_and_naive_reference(batches: list[PointBatch]) -> None:
    sdt = SwingingDoor(PARAMS)
    outs = run_core(sdt, batches)

    naive = NaiveSDT(PARAMS)
    want = [[o for p in points(b) for o in naive.point(*p)] for b in batches] + [naive.flush()]
    assert all(same_points(g, w) for g, w in zip(outs, want, strict=True))

    archived = [p for o in outs for p in o]
    inputs = [p for b in batches for p in points(b)]
    assert [p for p in archived if p[1] == 4] == [p for p in inputs if p[1] == 4]  # pass-through
    for tag, prm in PARAMS.items():
        arch = [p for p in archived if p[1] == tag]
        ins = [p for p in inputs if p[1] == tag]
        assert set(arch) <= set(ins)  # real points only, unchanged
        if not ins:
            continue
        assert arch[0] == ins[0] and arch[-1] == ins[-1]
        at = np.array([p[0] for p in arch])
        av = np.array([p[2] for p in arch])
        for ts, _, v, _ in ins:  # compression error bound
            j = int(np.searchsorted(at, ts, side="right")) - 1
            if at[j] == ts:
                continue
            interp = av[j] + (av[j + 1] - av[j]) * ((ts - at[j]) / (at[j + 1] - at[j]))
            assert abs(interp - v) <= prm.deviation * (1 + 1e-9) + 1e-9 * max(1.0, abs(v)), (tag, ts)
        if prm.max_interval_s is not None:  # no silence past the heartbeat but for its trigger
            m = round(prm.max_interval_s * S)
            for a, b in itertools.pairwise(arch):
                between = [p for p in ins if a[0] < p[0] < b[0]]
                assert all(p[0] - a[0] < m for p in between), (tag, a, b)


# -- behaviour ----------------------------------------------------------------------------------------


def pb(tags: list[int], values: list[float], ts_s: list[float], quality: list[int] | int = 0) -> PointBatch:
    return PointBatch.from_values(
        "d", tags, values, ts_ns=np.array([round(t * S) for t in ts_s]), quality=quality
    )


def test_the_classic_door_test_alone_would_break_the_bound() -> None:
    # doors still open at t=2 (some line from A fits), but the line A -> (2, 3) misses (1, 0) by 1.5
    sdt = SwingingDoor({1: SwingingDoorParams(deviation=1.0)})
    _, out = sdt.process(sdt.initial_state(), pb([1, 1, 1], [0.0, 0.0, 3.0], [0, 1, 2]))
    assert [p[2] for p in points(out)] == [0.0, 0.0]  # (1, 0) archived, so (2, 3) can be held


def test_quality_changes_nan_and_out_of_order_points_force_archives() -> None:
    sdt = SwingingDoor({1: SwingingDoorParams(deviation=10.0)})
    state = sdt.initial_state()
    state, out = sdt.process(state, pb([1, 1, 1], [1.0, 2.0, 3.0], [0, 1, 2]))
    assert [p[2] for p in points(out)] == [1.0]
    state, out = sdt.process(state, pb([1], [3.5], [3], quality=65))  # quality change
    assert [(p[2], p[3]) for p in points(out)] == [(3.0, 0), (3.5, 65)]
    state, out = sdt.process(state, pb([1, 1], [math.nan, 4.0], [4, 5], quality=65))
    assert [p[0] // S for p in points(out)] == [4, 5]  # NaN: archived, and so is the point after it
    state, out = sdt.process(state, pb([1], [4.0], [5], quality=65))  # not after the last point
    assert [p[0] // S for p in points(out)] == [5]


def test_held_points_come_right_before_the_point_that_archived_them() -> None:
    sdt = SwingingDoor({1: SwingingDoorParams(deviation=0.1), 2: SwingingDoorParams(deviation=0.1)})
    state = sdt.initial_state()
    state, _ = sdt.process(state, pb([1, 2, 9], [0.0, 0.0, 5.0], [0, 0, 0]))
    state, _ = sdt.process(state, pb([1, 2], [0.0, 0.0], [1, 1]))
    state, out = sdt.process(state, pb([9, 2, 1], [6.0, 5.0, 5.0], [2, 2, 2]))
    assert [(p[0] // S, p[1]) for p in points(out)] == [(2, 9), (1, 2), (1, 1)]
    assert state.held.tolist() == [True, True]


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="`deviation` must be a finite number > 0, got -1"):
        SwingingDoorParams(deviation=-1)
    with pytest.raises(ValueError, match="`max_interval_s` must be > 0, got 0"):
        SwingingDoorParams(deviation=1, max_interval_s=0)


# -- the operator contract ---------------------------------------------------------------------------


def scenario(seed: int) -> list[PointBatch]:
    rng = np.random.default_rng(seed)
    tag_sets = [[1, 2, 3], [1, 2, 3], [3, 1], [1, 2, 3, 4, 5], [5], [2, 2, 1, 9], [1, 2, 3, 4, 5], []]
    out = []
    for step, tags in enumerate(tag_sets * 4):
        n = len(tags)
        q = rng.choice(np.array([0, 0, 0, 0, 0, 0, 129], dtype=np.uint8), n)
        v = np.round(np.cumsum(rng.normal(0, 1, n)) + step, 2)
        out.append(PointBatch.from_values("d", tags, v, ts_ns=step * S + np.arange(n) * 1000, quality=q))
    return out


CONTRACT_PARAMS = {1: SwingingDoorParams(0.5), 2: SwingingDoorParams(1.0, 3.0), 5: SwingingDoorParams(0.1)}


def test_contract_pickles_repeats_and_does_not_mutate() -> None:
    batches = scenario(11)
    ref = run_core(SwingingDoor(CONTRACT_PARAMS), [copy_of(b) for b in batches])
    frozen_batches = [frozen(copy_of(b)) for b in batches]
    got = run_core(pickle.loads(pickle.dumps(SwingingDoor(CONTRACT_PARAMS))), frozen_batches)
    assert all(same_points(a, b) for a, b in zip(ref, got, strict=True))
    assert all(same_batch(a, b) for a, b in zip(batches, frozen_batches, strict=True))
    assert all(
        same_points(a, b)
        for a, b in zip(ref, run_core(SwingingDoor(CONTRACT_PARAMS), scenario(11)), strict=True)
    )
    n_in = sum(len(b) for b in batches)
    assert 0 < sum(len(o) for o in ref) < n_in  # it compressed


def test_contract_state_pickles_mid_stream_and_is_not_modified() -> None:
    sdt = SwingingDoor(CONTRACT_PARAMS)
    batches = scenario(5)
    state = sdt.initial_state()
    for b in batches[:9]:
        state, _ = sdt.process(state, b)
    before = pickle.dumps(state)
    resumed: SwingingDoorState = pickle.loads(before)
    for b in batches[9:]:
        state, x = sdt.process(state, b)
        resumed, y = sdt.process(resumed, b)
        assert same_batch(x, y)
    assert pickle.dumps(pickle.loads(before)) == before
    s0 = pickle.loads(before)
    sdt.process(s0, batches[9])
    assert pickle.dumps(s0) == before  # process() never modified the state it was given
    with pytest.raises(TypeError):
        sdt.params[1] = SwingingDoorParams(1.0)  # type: ignore[index]
