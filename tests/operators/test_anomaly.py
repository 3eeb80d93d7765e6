"""Anomaly detection core: checks, edge triggering, ML, a naive reference, the operator contract."""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.batch import PointBatch
from core.quality import Quality
from core.records import Alert
from operators.anomaly import (
    AnomalyDetector,
    AnomalyState,
    MlCheck,
    RangeCheck,
    RateCheck,
    StuckCheck,
    TagChecks,
)

DEV = "press-01"
S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S


def batch(
    tags: Sequence[int],
    values: Sequence[float],
    ts: Sequence[int] | int,
    quality: Sequence[int] | int = 0,
) -> PointBatch:
    return PointBatch.from_values(DEV, tags, values, ts_ns=np.asarray(ts, dtype=np.int64), quality=quality)


def run_series(
    det: AnomalyDetector, tag: int, values: Sequence[float], dt: int = S, state: AnomalyState | None = None
) -> tuple[AnomalyState | None, list[Alert]]:
    """One point per batch, ``dt`` apart, starting at T0."""
    out: list[Alert] = []
    for i, v in enumerate(values):
        state, alerts = det.process(state, batch([tag], [v], T0 + i * dt))
        out.extend(alerts)
    return state, out


def summary(alerts: Sequence[Alert]) -> list[tuple[Any, ...]]:
    return [(a.tag_id, a.kind, a.state, (a.ts_ns - T0) // S) for a in alerts]


# -------------------------------------------------------------------------------------------
# Range


def test_range_high_with_hysteresis_raises_once_and_clears_below_band() -> None:
    det = AnomalyDetector({1: TagChecks(range=RangeCheck(high=100.0, hysteresis=5.0, severity="critical"))})
    values = [90, 101, *range(102, 130), 97, 95, 95.0, 94.9, 94, 101, 100]
    _, alerts = run_series(det, 1, values)
    assert summary(alerts) == [
        (1, "high", "raised", 1),
        (1, "high", "cleared", 33),
        (1, "high", "raised", 35),
    ]
    first, cleared = alerts[0], alerts[1]
    assert (first.value, first.limit, first.severity, first.device_id) == (101.0, 100.0, "critical", DEV)
    assert first.message == "value 101 above high limit 100"
    assert cleared.value == 94.9 and cleared.limit == 100.0
    assert cleared.message == "value 94.9 back below high limit 100 (hysteresis 5)"


def test_range_equal_to_limit_neither_raises_nor_clears() -> None:
    det = AnomalyDetector({1: TagChecks(range=RangeCheck(high=100.0))})
    _, alerts = run_series(det, 1, [100, 100.5, 100, 100, 99.99])
    assert summary(alerts) == [(1, "high", "raised", 1), (1, "high", "cleared", 4)]


def test_range_low_limit() -> None:
    det = AnomalyDetector({1: TagChecks(range=RangeCheck(low=10.0, high=50.0, hysteresis=2.0))})
    _, alerts = run_series(det, 1, [20, 9, 5, 11, 12, 12.5, 60, 30])
    assert summary(alerts) == [
        (1, "low", "raised", 1),
        (1, "low", "cleared", 5),
        (1, "high", "raised", 6),
        (1, "high", "cleared", 7),
    ]
    assert alerts[0].message == "value 9 below low limit 10"
    assert alerts[0].limit == 10.0


def test_many_tags_in_one_batch_vectorized() -> None:
    checks = {t: TagChecks(range=RangeCheck(high=float(t))) for t in range(1, 101)}
    det = AnomalyDetector(checks)
    tags = np.arange(1, 101)
    state, alerts = det.process(None, batch(tags, tags + 0.5, T0))
    assert [a.tag_id for a in alerts] == list(range(1, 101))
    state, alerts = det.process(state, batch(tags, tags + 1.0, T0 + S))
    assert alerts == []


# -------------------------------------------------------------------------------------------
# Stuck


def test_stuck_by_samples_raises_once_and_clears_on_change() -> None:
    det = AnomalyDetector({1: TagChecks(stuck=StuckCheck(samples=3, epsilon=0.1))})
    _, alerts = run_series(det, 1, [5.0, 5.05, 4.95, 5.0, 5.1, 5.0, 5.2, 5.2, 5.2])
    assert summary(alerts) == [
        (1, "stuck", "raised", 2),
        (1, "stuck", "cleared", 6),
        (1, "stuck", "raised", 8),
    ]
    assert alerts[0].limit is None and alerts[0].value == 4.95
    assert alerts[0].message == "value 4.95 unchanged (±0.1) for 3 samples over 2 s"
    assert alerts[1].message == "value 5.2 changed after 6 samples"


def test_stuck_by_seconds() -> None:
    det = AnomalyDetector({1: TagChecks(stuck=StuckCheck(seconds=10.0))})
    _, alerts = run_series(det, 1, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0], dt=2 * S)
    # run starts at 0 s; 10 s reached by the sample at 10 s (index 5); 2.0 at 12 s clears
    assert summary(alerts) == [(1, "stuck", "raised", 10), (1, "stuck", "cleared", 12)]


def test_stuck_drift_anchored_to_run_start() -> None:
    """A slow ramp with steps under epsilon is not stuck: the band is around the run's first value."""
    det = AnomalyDetector({1: TagChecks(stuck=StuckCheck(samples=4, epsilon=0.5))})
    _, alerts = run_series(det, 1, [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8])
    assert alerts == []


# -------------------------------------------------------------------------------------------
# Rate


def test_rate_of_change_raise_and_clear() -> None:
    det = AnomalyDetector({1: TagChecks(rate=RateCheck(max_per_s=1.0))})
    _, alerts = run_series(det, 1, [0.0, 0.5, 3.0, 0.0, 1.0, 2.0], dt=S)
    assert summary(alerts) == [(1, "rate", "raised", 2), (1, "rate", "cleared", 4)]
    assert (alerts[0].value, alerts[0].limit) == (2.5, 1.0)
    assert alerts[0].message == "rate 2.5/s above limit 1/s (value 3)"


def test_rate_uses_timestamps_and_skips_non_advancing_points() -> None:
    det = AnomalyDetector({1: TagChecks(rate=RateCheck(max_per_s=1.0))})
    # 10 units in 20 s is fine; a duplicate timestamp is ignored, not a division by zero
    state, alerts = det.process(None, batch([1, 1, 1], [0.0, 10.0, 99.0], [T0, T0 + 20 * S, T0 + 20 * S]))
    assert alerts == []
    state, alerts = det.process(state, batch([1], [15.0], T0 + 21 * S))
    assert summary(alerts) == [(1, "rate", "raised", 21)]


# -------------------------------------------------------------------------------------------
# Quality


def test_bad_quality_and_non_finite_points_are_skipped_by_all_checks() -> None:
    det = AnomalyDetector(
        {
            1: TagChecks(
                range=RangeCheck(high=100.0),
                stuck=StuckCheck(samples=3),
                rate=RateCheck(max_per_s=1.0),
                ml=MlCheck(warm_up=2, threshold=0.5),
            )
        }
    )
    bad = [Quality.COMM_ERROR, Quality.BAD, Quality.OUT_OF_RANGE]
    state, alerts = det.process(
        None, batch([1, 1, 1, 1], [1.0, 1000.0, 5000.0, 1.0], [0, S, 2 * S, 3 * S], [0, *bad[:2], 0])
    )
    assert alerts == []  # 1000/5000 skipped: no high, no rate; the two 1.0 make a run of 2, not 3
    state, alerts = det.process(state, batch([1, 1], [math.nan, 1.0], [4 * S, 5 * S], [0, Quality.UNCERTAIN]))
    assert [(a.kind, a.state) for a in alerts] == [("stuck", "raised")]  # uncertain points count
    assert int(state.ml_n[0]) == 3


# -------------------------------------------------------------------------------------------
# ML


def test_zscore_spike_raises_once_after_warm_up_and_never_during_it() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(50.0, 1.0, 400)
    values[50] += 20.0  # during warm-up: must stay silent
    values[300] += 20.0
    det = AnomalyDetector({1: TagChecks(ml=MlCheck(model="zscore", threshold=4.5, warm_up=100))})
    # five points per batch (same tag repeated) exercises rounds too
    state: AnomalyState | None = None
    alerts: list[Alert] = []
    for i in range(0, 400, 5):
        state, out = det.process(state, batch([1] * 5, values[i : i + 5], T0 + np.arange(i, i + 5) * S))
        alerts.extend(out)
    assert summary(alerts) == [(1, "ml", "raised", 300), (1, "ml", "cleared", 301)]
    assert alerts[0].limit == 4.5 and alerts[0].value > 4.5
    assert alerts[0].message.startswith("zscore score ")


def test_zscore_warm_up_gate() -> None:
    det = AnomalyDetector({1: TagChecks(ml=MlCheck(warm_up=5))})
    _, alerts = run_series(det, 1, [1.0, 2.0, 1.0, 2.0, 100.0])  # 4 learned before the spike
    assert alerts == []
    _, alerts = run_series(det, 1, [1.0, 2.0, 1.0, 2.0, 1.5, 100.0])
    assert summary(alerts) == [(1, "ml", "raised", 5)]


def test_hst_outlier_raises() -> None:
    rng = np.random.default_rng(3)
    values = list(rng.normal(10.0, 1.0, 120))
    values.append(40.0)
    check = MlCheck(model="hst", window_size=30, warm_up=60, seed=1)
    assert check.limit == 0.9
    det = AnomalyDetector({1: TagChecks(ml=check)})
    state, alerts = run_series(det, 1, values)
    raised = [a for a in alerts if a.state == "raised"]
    assert raised and raised[-1].ts_ns == T0 + 120 * S and raised[-1].value > 0.9
    assert all(a.ts_ns >= T0 + 60 * S for a in alerts)  # no alerts during warm-up
    assert state is not None and set(state.hst) == {1}


# -------------------------------------------------------------------------------------------
# Naive per-point reference


@dataclass
class _RefTag:
    high_on: bool = False
    low_on: bool = False
    stuck_on: bool = False
    rate_on: bool = False
    ml_on: bool = False
    ref: float = math.nan
    start: int = 0
    count: int = 0
    last_v: float = math.nan
    last_t: int | None = None
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0


def reference(checks: dict[int, TagChecks], batches: Sequence[PointBatch]) -> list[tuple[Any, ...]]:
    """The semantics, one point at a time, no numpy."""
    tags: dict[int, _RefTag] = {}
    out: list[tuple[Any, ...]] = []
    for b in batches:
        for tag, v, t, q in zip(
            b.tag_ids.tolist(), b.values.tolist(), b.ts_ns.tolist(), b.quality.tolist(), strict=True
        ):
            if tag not in checks or q >= 128 or not math.isfinite(v):
                continue
            c, s = checks[tag], tags.setdefault(tag, _RefTag())

            def flip(kind: str, old: bool, new: bool, value: float, limit: float | None) -> bool:
                if old != new:
                    out.append((tag, kind, "raised" if new else "cleared", t, value, limit))  # noqa: B023
                return new

            r = c.range
            if r is not None and r.high is not None:
                new = not (v < r.high - r.hysteresis) if s.high_on else v > r.high
                s.high_on = flip("high", s.high_on, new, v, r.high)
            if r is not None and r.low is not None:
                new = not (v > r.low + r.hysteresis) if s.low_on else v < r.low
                s.low_on = flip("low", s.low_on, new, v, r.low)
            changed = s.count == 0 or not abs(v - s.ref) <= (c.stuck.epsilon if c.stuck else 0.0)
            if c.stuck is not None:
                n_lim = c.stuck.samples or 2**63 - 1
                t_lim = round(c.stuck.seconds * 1e9) if c.stuck.seconds else 2**63 - 1
                new = not changed and (s.stuck_on or s.count + 1 >= n_lim or t - s.start >= t_lim)
                s.stuck_on = flip("stuck", s.stuck_on, new, v, None)
            if changed:
                s.ref, s.start, s.count = v, t, 1
            else:
                s.count += 1
            if s.last_t is None or t > s.last_t:
                if c.rate is not None and s.last_t is not None:
                    rate = abs(v - s.last_v) / ((t - s.last_t) / 1e9)
                    s.rate_on = flip("rate", s.rate_on, rate > c.rate.max_per_s, rate, c.rate.max_per_s)
                s.last_v, s.last_t = v, t
            if c.ml is not None:
                std = math.sqrt(s.m2 / (s.n - 1)) if s.n > 1 else 0.0
                z = abs(v - s.mean) / std if std > 0 else 0.0
                new = z > c.ml.limit and s.n >= c.ml.warm_up
                s.ml_on = flip("ml", s.ml_on, new, z, c.ml.limit)
                s.n += 1
                delta = v - s.mean
                s.mean += delta / s.n
                s.m2 += delta * (v - s.mean)
    return out


def as_tuples(alerts: Sequence[Alert]) -> list[tuple[Any, ...]]:
    return [(a.tag_id, a.kind, a.state, a.ts_ns, a.value, a.limit) for a in alerts]


def _close(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x[:4] != y[:4] or x[5] != y[5] or not math.isclose(x[4], y[4], rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True


VALUES = st.one_of(
    st.sampled_from([0.0, 0.25, 1.0, 1.5, 2.0, 5.0, 10.0, -3.0, math.nan]),
    st.floats(-20, 20, allow_nan=False),
)


@st.composite
def tag_checks(draw: st.DrawFn) -> TagChecks:
    hi, lo = draw(st.sampled_from([None, 2.0, 5.0])), draw(st.sampled_from([None, -1.0, 0.5]))
    rng = (
        None
        if hi is None and lo is None
        else RangeCheck(high=hi, low=lo, hysteresis=draw(st.sampled_from([0, 0.5, 2])))
    )
    samples, seconds = draw(st.sampled_from([None, 2, 3])), draw(st.sampled_from([None, 1.5, 3.0]))
    stuck = None
    if samples is not None or seconds is not None:
        stuck = StuckCheck(epsilon=draw(st.sampled_from([0.0, 0.3])), samples=samples, seconds=seconds)
    rate = draw(st.sampled_from([None, RateCheck(max_per_s=1.0), RateCheck(max_per_s=4.0)]))
    ml = draw(st.sampled_from([None, MlCheck(warm_up=3, threshold=1.5)]))
    return TagChecks(range=rng, stuck=stuck, rate=rate, ml=ml)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[int, TagChecks], list[PointBatch]]:
    n_tags = draw(st.integers(1, 4))
    checks = {10 + i: draw(tag_checks()) for i in range(n_tags)}
    tag_pool = [*checks, 99]  # 99: not configured
    batches = []
    t = T0
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(0, 10))
        tags = draw(st.lists(st.sampled_from(tag_pool), min_size=n, max_size=n))
        values = draw(st.lists(VALUES, min_size=n, max_size=n))
        steps = draw(st.lists(st.sampled_from([0, S // 2, S, 2 * S, -S]), min_size=n, max_size=n))
        ts = []
        for step in steps:
            t += step
            ts.append(t)
        quality = draw(st.lists(st.sampled_from([0, 0, 0, 64, 129]), min_size=n, max_size=n))
        batches.append(batch(tags, values, ts, quality))
    return checks, batches


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_vectorized_equals_naive_reference(scenario: tuple[dict[int, TagChecks], list[PointBatch]]) -> None:
    checks, batches = scenario
    det = AnomalyDetector(checks)
    state: AnomalyState | None = None
    got: list[Alert] = []
    for b in batches:
        state, alerts = det.process(state, b)
        got.extend(alerts)
    assert _close(as_tuples(got), reference(checks, batches))


# -------------------------------------------------------------------------------------------
# Contract


def _stream(n_batches: int = 60, seed: int = 0) -> list[PointBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        tags = np.array([1, 2, 3, 1])
        values = np.round(rng.normal(5.0, 2.0, 4), 1)
        if i % 17 == 0:
            values[2] = 60.0
        ts = T0 + i * S + np.array([0, 0, 0, S // 2])
        out.append(batch(tags, values, ts))
    return out


CONTRACT_CHECKS = {
    1: TagChecks(range=RangeCheck(high=8.0, hysteresis=1.0), stuck=StuckCheck(samples=3, epsilon=0.5)),
    2: TagChecks(rate=RateCheck(max_per_s=3.0), ml=MlCheck(warm_up=10)),
    3: TagChecks(range=RangeCheck(low=0.0), ml=MlCheck(model="hst", window_size=16, warm_up=20, seed=5)),
}


def _run(
    det: AnomalyDetector, state: AnomalyState | None, batches: Sequence[PointBatch]
) -> tuple[AnomalyState | None, list[Alert]]:
    out: list[Alert] = []
    for b in batches:
        state, alerts = det.process(state, b)
        out.extend(alerts)
    return state, out


def _arrays(state: AnomalyState | None) -> dict[str, Any]:
    assert state is not None
    d = state.__getstate__()
    hst = d.pop("hst")
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()} | {"hst": sorted(hst)}


def test_pickle_round_trip_continues_identically() -> None:
    stream = _stream()
    det = AnomalyDetector(CONTRACT_CHECKS)
    state, first = _run(det, None, stream[:30])
    det2, state2 = pickle.loads(pickle.dumps((det, state)))
    state_a, rest_a = _run(det, state, stream[30:])
    state_b, rest_b = _run(det2, state2, stream[30:])
    assert rest_a == rest_b and first
    assert _arrays(state_a) == _arrays(state_b)
    assert any(a.kind == "ml" for a in first + rest_a)


def test_seeded_runs_repeat() -> None:
    stream = _stream(seed=4)
    _, a = _run(AnomalyDetector(CONTRACT_CHECKS), None, stream)
    _, b = _run(AnomalyDetector(CONTRACT_CHECKS), None, stream)
    assert a == b and a


def test_input_not_mutated() -> None:
    stream = _stream(10)
    copies = [(b.ts_ns.copy(), b.tag_ids.copy(), b.values.copy(), b.quality.copy()) for b in stream]
    for b in stream:
        for arr in (b.ts_ns, b.tag_ids, b.values, b.quality):
            arr.flags.writeable = False
    _run(AnomalyDetector(CONTRACT_CHECKS), None, stream)
    for b, (ts, tags, values, quality) in zip(stream, copies, strict=True):
        assert np.array_equal(b.ts_ns, ts) and np.array_equal(b.tag_ids, tags)
        assert np.array_equal(b.values, values) and np.array_equal(b.quality, quality)


def test_defaults_and_config_immutable() -> None:
    check = RangeCheck(high=1.0)
    with pytest.raises(FrozenInstanceError):
        check.high = 2.0  # type: ignore[misc]
    det = AnomalyDetector({1: TagChecks(range=check)})
    with pytest.raises(TypeError):
        det.checks[2] = TagChecks()  # type: ignore[index]
    assert MlCheck().limit == 3.0 and MlCheck(model="hst").limit == 0.9
    assert TagChecks() == TagChecks()


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (RangeCheck, "`high`, `low`"),
        (lambda: RangeCheck(high=1.0, hysteresis=-1.0), "`hysteresis`"),
        (lambda: RangeCheck(high=1.0, low=2.0), "`low`"),
        (StuckCheck, "`samples`, `seconds`"),
        (lambda: StuckCheck(samples=1), "`samples`"),
        (lambda: RateCheck(max_per_s=0.0), "`max_per_s`"),
        (lambda: MlCheck(model="iforest"), "`model`"),  # type: ignore[arg-type]
        (lambda: RangeCheck(high=1.0, severity="fatal"), "`severity`"),  # type: ignore[arg-type]
    ],
)
def test_bad_config_names_the_field(make: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_tags_appear_and_disappear() -> None:
    checks = {t: TagChecks(range=RangeCheck(high=10.0), stuck=StuckCheck(samples=2)) for t in (1, 2, 3)}
    det = AnomalyDetector(checks)
    state, alerts = det.process(None, batch([2, 1], [11.0, 1.0], T0))
    assert state.tag_ids.tolist() == [1, 2]
    assert summary(alerts) == [(2, "high", "raised", 0)]
    state, alerts = det.process(state, batch([3, 2, 42], [1.0, 12.0, 1e9], T0 + S))  # 3 appears, 1 absent
    assert state.tag_ids.tolist() == [1, 2, 3] and alerts == []
    state, alerts = det.process(state, batch([1], [1.0], T0 + 2 * S))  # 1 kept its run while absent
    assert summary(alerts) == [(1, "stuck", "raised", 2)]
    # Resume with a configuration that dropped tag 2: its row goes, the others keep their state.
    det2 = AnomalyDetector({1: checks[1], 3: checks[3]})
    state, alerts = det2.process(state, batch([1, 3], [5.0, 1.0], T0 + 3 * S))
    assert state.tag_ids.tolist() == [1, 3]
    assert summary(alerts) == [(1, "stuck", "cleared", 3), (3, "stuck", "raised", 3)]


def test_empty_batch_and_unknown_tags() -> None:
    det = AnomalyDetector({1: TagChecks(range=RangeCheck(high=1.0))})
    state, alerts = det.process(None, PointBatch.empty(DEV))
    assert alerts == [] and len(state) == 0
    state, alerts = det.process(state, batch([5, 6], [100.0, 100.0], T0))
    assert alerts == [] and len(state) == 0


def test_state_snapshot_is_versioned() -> None:
    det = AnomalyDetector(CONTRACT_CHECKS)
    state, _ = _run(det, None, _stream(5))
    data = state.__getstate__()  # type: ignore[union-attr]
    assert data["version"] == 1
    data["version"] = 99
    with pytest.raises(ValueError, match="version"):
        AnomalyState.__new__(AnomalyState).__setstate__(data)


@pytest.mark.parametrize("height", [4, 8])
def test_hst_compact_snapshot_rebuilds_the_same_model(height: int) -> None:
    det = AnomalyDetector(
        {1: TagChecks(ml=MlCheck(model="hst", window_size=16, height=height, n_trees=3, seed=9))}
    )
    rng = np.random.default_rng(1)
    state, _ = run_series(det, 1, rng.normal(0.0, 1.0, 45).tolist())
    assert state is not None
    blob = pickle.dumps(state)
    assert len(blob) * 3 < len(pickle.dumps(state.hst[1]))
    restored = pickle.loads(blob)
    a, b = state.hst[1], restored.hst[1]
    probes = [{"x": float(v)} for v in np.linspace(-5.0, 5.0, 21)]
    for x in [*probes, *probes]:
        assert a.score_one(x) == b.score_one(x)
        a.learn_one(x)
        b.learn_one(x)
