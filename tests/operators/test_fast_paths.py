"""The fast paths of the chain's cores (a device poll: unique tags, one timestamp, the same tag_ids
array every poll) give exactly what the general paths give, state included, and are really taken.

Each scenario runs the whole chain twice: as is, and with every ``_process_fast`` / ``_apply_fast``
patched to decline, which forces the general path. Scenarios mix the common case with everything
that must leave it: bad and NaN points, repeated and new tags, timestamps going back, a point from
the future, minute boundaries, values around the range limits, stuck runs and rate steps.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.batch import PointBatch
from core.quality import Quality
from operators.anomaly import AnomalyDetector, RangeCheck, RateCheck, StuckCheck, TagChecks
from operators.deadband import Deadband, DeadbandParams
from operators.normalize import NormalizeParams, Normalizer
from operators.window import WindowAggregator
from tests.operators.operators_reference import copy_of, frozen, same_batch

S = 1_000_000_000
T0 = 1_700_000_040 * S  # a minute boundary
FAST = (
    (Normalizer, "_apply_fast"),
    (Deadband, "_process_fast"),
    (WindowAggregator, "_process_fast"),
    (AnomalyDetector, "_process_fast"),
)


def polls(seed: int, *, n_polls: int = 150, n_tags: int = 12, irregular: bool = True) -> list[PointBatch]:
    """Two devices polled every second; each device reuses one tag_ids array object."""
    rng = np.random.default_rng(seed)
    ids = {d: np.arange(1, n_tags + 1, dtype=np.int64) * 7 + k for k, d in enumerate(("d0", "d1"))}
    raw = {d: rng.integers(0, 1000, n_tags).astype(np.float64) for d in ids}
    out: list[PointBatch] = []
    for k in range(n_polls):
        for d, tags in ids.items():
            change = rng.random(n_tags) < 0.4
            raw[d] = np.where(change, rng.integers(0, 1000, n_tags), raw[d])
            values = raw[d].copy()
            ts: Any = T0 + k * S + 3 * S // 10
            quality = np.zeros(n_tags, np.uint8)
            tag_ids = tags
            roll = rng.random() if irregular else 1.0
            if roll < 0.04:
                quality[rng.integers(n_tags)] = Quality.COMM_ERROR
            elif roll < 0.07:
                values[rng.integers(n_tags)] = np.nan
            elif roll < 0.09:
                quality[rng.integers(n_tags)] = Quality.UNCERTAIN
            elif roll < 0.11:
                tag_ids = tags.copy()
                tag_ids[-1] = tag_ids[0]  # a repeated tag
            elif roll < 0.13:
                tag_ids = np.append(tags, 10_000 + k)  # a tag never seen (and unconfigured)
                values = np.append(values, 1.0)
                quality = np.append(quality, np.uint8(0))
            elif roll < 0.15:
                ts = T0 + (k - 3) * S  # back in time
            elif roll < 0.17:
                ts = np.full(n_tags, T0 + k * S)
                ts[0] += 3600 * S  # one point from the future
            elif roll < 0.19:
                ts = T0 + k * S + np.arange(n_tags) * (S // 20)  # spread inside the second
            out.append(PointBatch.from_values(d, tag_ids, values, ts_ns=ts, quality=quality))
    return out


def cores() -> tuple[Normalizer, Deadband, WindowAggregator, AnomalyDetector]:
    tags = [t * 7 + k for k in (0, 1) for t in range(1, 13)]
    checks = TagChecks(
        range=RangeCheck(low=5.0, high=95.0, hysteresis=2.0),
        stuck=StuckCheck(samples=4, seconds=20.0),
        rate=RateCheck(max_per_s=60.0),
    )
    return (
        Normalizer({t: NormalizeParams(scale=0.1, clamp_low=1.0, clamp_high=98.0) for t in tags}),
        Deadband(
            {
                t: DeadbandParams(absolute=0.5 if t % 2 else 0.0, heartbeat_s=1.0 if t % 3 == 0 else 5.0)
                for t in tags
            }
        ),
        WindowAggregator([60.0], lateness_s=0.0, max_future_s=30.0),
        AnomalyDetector(dict.fromkeys(tags, checks)),
    )


def run_chain(batches: list[PointBatch]) -> tuple[list[Any], dict[str, Any]]:
    norm, db, win, det = cores()
    states: dict[str, list[Any]] = {}
    outputs: list[Any] = []
    for batch in batches:
        st = states.setdefault(batch.device_id, [db.initial_state(), None, None])
        before = copy_of(batch)
        b = norm.apply(frozen(batch))
        assert same_batch(batch, before)
        st[0], b = db.process(st[0], frozen(b))
        now = int(b.ts_ns.min()) + S if len(b) else 0  # one future point stays ahead of now
        st[1], aggs, late = win.process(st[1], frozen(b), now)
        st[2], alerts = det.process(st[2], b)
        outputs.append((b, aggs, late, alerts))
    for st in states.values():
        outputs.append(win.flush(st[1]))
    return outputs, states


def same_output(a: Any, b: Any) -> bool:
    if isinstance(a, PointBatch):
        return isinstance(b, PointBatch) and same_batch(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_output(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_output(x, y) for x, y in zip(a, b, strict=True))
        )
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(
            same_output(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    return bool(a == b)


def state_columns(states: dict[str, list[Any]]) -> dict[str, Any]:
    """Every device's three states as comparable columns (NaN equal to NaN)."""
    out = {}
    for device, (db_state, win_state, det_state) in states.items():
        out[device] = (
            [db_state.tag_ids, db_state.value, db_state.ts_ns, db_state.quality],
            win_state,
            det_state.__getstate__(),
        )
    return out


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the fast paths that did the work (returned something)."""
    hits: dict[str, int] = {}
    for cls, name in FAST:
        original = getattr(cls, name)

        def wrapper(*args: Any, _orig: Any = original, _key: str = cls.__name__) -> Any:
            result = _orig(*args)
            if result is not None:
                hits[_key] = hits.get(_key, 0) + 1
            return result

        monkeypatch.setattr(cls, name, staticmethod(wrapper) if name == "_apply_fast" else wrapper)
    return hits


@pytest.mark.parametrize("seed", range(6))
def test_fast_paths_equal_the_general_path(seed: int, counted: dict[str, int]) -> None:
    batches = polls(seed)
    fast_out, fast_states = run_chain(batches)
    # Every fast path did most of the work of this mostly regular load.
    for cls, _ in FAST:
        assert counted.get(cls.__name__, 0) > len(batches) // 3, (cls.__name__, counted)
    with pytest.MonkeyPatch.context() as mp:
        for cls, name in FAST:
            mp.setattr(cls, name, staticmethod(lambda *args: None))
        slow_out, slow_states = run_chain(batches)
    assert same_output(fast_out, slow_out)
    assert same_output(state_columns(fast_states), state_columns(slow_states))
    # Alerts, aggregates and late points were all exercised.
    assert sum(len(o[3]) for o in fast_out[: len(batches)]) > 0
    assert sum(len(a) for o in fast_out[: len(batches)] for a in o[1]) > 0


def test_fast_path_states_stay_immutable_and_pickle() -> None:
    """Deadband and window states handed out earlier are never changed by later fast-path calls."""
    norm, db, win, _ = cores()
    batches = [b for b in polls(7, irregular=False, n_polls=40) if b.device_id == "d0"]
    db_state = db.initial_state()
    win_state = None
    kept: list[tuple[Any, bytes, Any, bytes]] = []
    for batch in batches:
        b = norm.apply(batch)
        db_state, b = db.process(db_state, b)
        if len(b):
            win_state, _, _ = win.process(win_state, b, int(b.ts_ns.max()))
        kept.append((db_state, pickle.dumps(db_state), win_state, pickle.dumps(win_state)))
    for db_s, db_blob, win_s, win_blob in kept:
        assert pickle.dumps(db_s) == db_blob
        assert pickle.dumps(win_s) == win_blob
    # A pickled aggregator drops its derived caches and behaves the same.
    win2 = pickle.loads(pickle.dumps(win))
    assert len(win2._empty) == 0
    b = PointBatch.from_values("d0", [7], [1.0], ts_ns=T0 + 3600 * S)
    got1 = win.process(win_state, b, T0 + 3600 * S)
    got2 = win2.process(win_state, b, T0 + 3600 * S)
    assert same_output(got1, got2)


_GENERAL = {
    "anomaly": (AnomalyDetector, "_process_fast"),
    "deadband": (Deadband, "_process_fast"),
    "window": (WindowAggregator, "_process_fast"),
}


@st.composite
def device_polls(draw: st.DrawFn) -> list[PointBatch]:
    """One device's polls: tag subsets that grow and shrink (first samples mid-stream), values
    around the limits, repeated values (stuck runs), timestamps that advance or repeat."""
    pool = np.array([3, 11, 12, 40, 2**62 + 7], dtype=np.int64)
    out = []
    ts = T0
    for _ in range(draw(st.integers(1, 12))):
        keep = draw(st.lists(st.booleans(), min_size=len(pool), max_size=len(pool)))
        tags = pool[np.array(keep, dtype=bool)]
        if not len(tags):
            continue
        values = draw(
            st.lists(
                st.sampled_from([0.0, 4.0, 6.0, 50.0, 94.0, 96.0, 99.0]),
                min_size=len(tags),
                max_size=len(tags),
            )
        )
        ts += draw(st.sampled_from([0, S // 2, S, 30 * S]))
        out.append(PointBatch.from_values("d", tags, values, ts_ns=ts))
    return out


@pytest.mark.parametrize("core", sorted(_GENERAL))
@given(batches=device_polls())
@settings(max_examples=150, deadline=None)
def test_fast_path_equals_general_path_on_random_polls(core: str, batches: list[PointBatch]) -> None:
    """Deadband (the kernel gathers the passing points), anomaly checks (the kernel also takes a
    tag's first sample and a device's first batch) and windows (the kernel also inserts tags new
    to the open bucket): fast and general paths agree on every output and state, whatever the
    sequence of tag subsets, values and timestamps (some cross minute boundaries)."""
    tags = [3, 11, 12, 40, 2**62 + 7]
    checks = TagChecks(
        range=RangeCheck(low=5.0, high=95.0, hysteresis=2.0),
        stuck=StuckCheck(samples=3, seconds=20.0),
        rate=RateCheck(max_per_s=60.0),
    )

    def run() -> tuple[list[Any], Any]:
        det = AnomalyDetector(dict.fromkeys(tags, checks))
        db = Deadband({t: DeadbandParams(absolute=1.0 if t % 2 else 0.0, heartbeat_s=20.0) for t in tags})
        win = WindowAggregator([60.0], lateness_s=0.0, max_future_s=0.0)
        state: Any = db.initial_state() if core == "deadband" else None
        outs: list[Any] = []
        for b in batches:
            if core == "anomaly":
                state, alerts = det.process(state, b)
                outs.append(alerts)
            elif core == "window":
                state, aggs, late = win.process(state, b, int(b.ts_ns.max()))
                outs.append((aggs, late))
            else:
                state, passed = db.process(state, b)
                outs.append(passed)
        if core == "window":
            outs.append(win.flush(state))
        return outs, state.__getstate__() if core == "anomaly" else state

    fast_out, fast_state = run()
    cls, name = _GENERAL[core]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, name, lambda *args: None)
        slow_out, slow_state = run()
    assert same_output(fast_out, slow_out)
    assert same_output(fast_state, slow_state)


def test_a_devices_first_batch_takes_the_anomaly_fast_path(counted: dict[str, int]) -> None:
    """A device's first batch (no state rows yet, every tag's first sample) is the compiled case."""
    det = AnomalyDetector(
        {1: TagChecks(range=RangeCheck(high=10.0)), 2: TagChecks(rate=RateCheck(max_per_s=1.0))}
    )
    state, alerts = det.process(None, PointBatch.from_values("d", [1, 2], [12.0, 5.0], ts_ns=T0))
    assert counted == {"AnomalyDetector": 1}
    assert [(a.tag_id, a.kind, a.state) for a in alerts] == [(1, "high", "raised")]
    assert state.rate_ns.tolist() == [T0, T0]


def test_alerts_built_without_init_are_alerts() -> None:
    """The hot path's alert constructor gives the same frozen, picklable Alert as ``Alert(...)``."""
    import dataclasses

    from core.records import Alert
    from operators.anomaly import _new_alert

    assert _new_alert is not Alert  # the fast constructor is in use
    args = ("press-01", 7, "high", "raised", "warning", 212.5, 200.0, T0, "value 212.5 above high limit 200")
    a, b = _new_alert(*args), Alert(*args)
    assert type(a) is Alert and a == b and pickle.loads(pickle.dumps(a)) == b
    assert dataclasses.astuple(a) == args
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.value = 1.0  # type: ignore[misc]
