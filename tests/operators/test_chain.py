"""The fused chain (:class:`operators.chain.OperatorChain`, one compiled call per poll) gives exactly
what the four cores give one by one: the same points, aggregates, late points, alerts and states,
on scenario loads and on random polls; and its compiled path is really taken.
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
from operators.chain import ChainState, OperatorChain
from operators.chain_bytewax import ChainLogic
from operators.deadband import Deadband, DeadbandParams
from operators.normalize import NormalizeParams, Normalizer
from operators.window import WindowAggregator
from tests.operators.operators_reference import copy_of, frozen, same_batch
from tests.operators.test_fast_paths import T0, S, cores, polls, same_output


def clock(batch: PointBatch) -> int:
    """The windows' clock: a second after the poll's earliest point (a point from the future stays ahead)."""
    return int(batch.ts_ns.min()) + S


def one_by_one(
    parts: tuple[Normalizer, Deadband, WindowAggregator, AnomalyDetector], batches: list[PointBatch]
) -> tuple[list[Any], dict[str, list[Any]]]:
    """The cores one by one, as the Bytewax adapters chain them (an empty pass skips windows and checks)."""
    norm, db, win, det = parts
    states: dict[str, list[Any]] = {}
    out: list[Any] = []
    for batch in batches:
        s = states.setdefault(batch.device_id, [db.initial_state(), None, None])
        now = clock(batch)
        b = norm.apply(batch)
        s[0], b = db.process(s[0], b)
        if not len(b):
            out.append((b, [], PointBatch.empty(batch.device_id), []))
            continue
        s[1], aggs, late = win.process(s[1], b, now)
        s[2], alerts = det.process(s[2], b)
        out.append((b, aggs, late, alerts))
    return out, states


def fused(
    parts: tuple[Normalizer, Deadband, WindowAggregator, AnomalyDetector], batches: list[PointBatch]
) -> tuple[list[Any], dict[str, list[Any]], int]:
    """The same batches through one :class:`OperatorChain`; also how many took its compiled path."""
    chain = OperatorChain(*parts)
    hits = 0
    original = chain._process_fast

    def counted(*args: Any) -> Any:
        nonlocal hits
        result = original(*args)
        hits += result is not None
        return result

    chain._process_fast = counted  # type: ignore[method-assign]
    states: dict[str, ChainState] = {}
    out: list[Any] = []
    for batch in batches:
        before = copy_of(batch)
        state, points, aggs, late, alerts = chain.process(
            states.get(batch.device_id), frozen(batch), clock(batch)
        )
        assert same_batch(batch, before)
        states[batch.device_id] = state
        out.append((points, aggs, late, alerts))
    return out, {d: [s.deadband, s.window, s.anomaly] for d, s in states.items()}, hits


def comparable(states: dict[str, list[Any]]) -> dict[str, Any]:
    return {
        d: (
            [db.tag_ids, db.value, db.ts_ns, db.quality],
            win,
            None if det is None else det.__getstate__(),
        )
        for d, (db, win, det) in states.items()
    }


@pytest.mark.parametrize("seed", range(6))
def test_fused_chain_equals_the_cores_one_by_one(seed: int) -> None:
    batches = polls(seed)
    want, want_states = one_by_one(cores(), batches)
    got, got_states, hits = fused(cores(), batches)
    assert same_output(got, want)
    assert same_output(comparable(got_states), comparable(want_states))
    # Most polls took the compiled path; alerts and aggregates were exercised.
    assert hits > len(batches) // 3, hits
    assert sum(len(o[3]) for o in got) > 0
    assert sum(len(a) for o in got for a in o[1]) > 0


def sparse_cores(checks: bool) -> tuple[Normalizer, Deadband, WindowAggregator, AnomalyDetector]:
    """:func:`cores` with a third of the tags without a deadband, and half of them (or all) without checks."""
    norm, db, win, det = cores()
    return (
        norm,
        Deadband({t: p for t, p in db.params.items() if t % 3}),
        win,
        AnomalyDetector({t: c for t, c in det.checks.items() if t % 2} if checks else {}),
    )


@pytest.mark.parametrize("checks", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_tags_without_deadband_or_checks_stay_on_the_compiled_path(seed: int, checks: bool) -> None:
    """Such tags pass the deadband and skip the checks inside the compiled call, with the cores'
    results; a detector without checks is skipped altogether (the chain keeps no anomaly state)."""
    batches = polls(seed)
    want, want_states = one_by_one(sparse_cores(checks), batches)
    got, got_states, hits = fused(sparse_cores(checks), batches)
    assert same_output(got, want)
    if not checks:
        assert all(s[2] is None for s in got_states.values())
        want_states = {d: [*s[:2], None] for d, s in want_states.items()}
    assert same_output(comparable(got_states), comparable(want_states))
    assert hits > len(batches) // 3, hits
    assert (sum(len(o[3]) for o in got) > 0) == checks


def test_regular_polls_take_the_compiled_path_after_the_first() -> None:
    """Every poll of a regular device after its first (which makes the state) is one compiled call,
    the polls right after a minute boundary (tags new to the open bucket) included; only the poll
    that closes a minute goes one by one."""
    batches = [b for b in polls(3, irregular=False, n_polls=130) if b.device_id == "d0"]
    got, _, hits = fused(cores(), batches)
    closing = sum(1 for o in got if o[1])
    assert closing == 2
    assert hits == len(batches) - 1 - closing


def test_chain_state_and_chain_pickle() -> None:
    parts = cores()
    chain = OperatorChain(*parts)
    batches = [b for b in polls(1, irregular=False, n_polls=20) if b.device_id == "d1"]
    state = None
    for b in batches[:10]:
        state, *_ = chain.process(state, b, int(b.ts_ns.max()))
    chain2 = pickle.loads(pickle.dumps(chain))
    state2 = pickle.loads(pickle.dumps(state))
    for b in batches[10:]:
        state, *out1 = chain.process(state, b, int(b.ts_ns.max()))
        state2, *out2 = chain2.process(state2, b, int(b.ts_ns.max()))
        assert same_output(out1, out2)
    assert same_output(comparable({"d": [state.deadband, state.window, state.anomaly]}),
                       comparable({"d": [state2.deadband, state2.window, state2.anomaly]}))  # fmt: skip


def test_deadband_and_window_states_handed_out_stay_unchanged() -> None:
    """The compiled path updates the deadband and window arrays it made in place, poll after poll;
    a state handed out (a snapshot) is never written again: the next poll makes new arrays."""
    chain = OperatorChain(*cores())
    batches = [b for b in polls(5, irregular=False, n_polls=40) if b.device_id == "d0"]
    state = None
    kept = []
    in_place = 0
    for k, b in enumerate(batches):
        before = None if state is None or state.window is None else state.window.windows[0].open
        state, *_ = chain.process(state, b, int(b.ts_ns.max()))
        after = state.window.windows[0].open
        in_place += before is not None and len(before) == len(after) == 1 and before[0] is after[0]
        if k % 3 == 0:
            chain.hand_out(state)
            kept.append(
                (state.deadband, pickle.dumps(state.deadband), state.window, pickle.dumps(state.window))
            )
    assert in_place >= len(batches) // 2  # the polls between two hand-outs
    for db_s, db_blob, win_s, win_blob in kept:
        assert pickle.dumps(db_s) == db_blob
        assert pickle.dumps(win_s) == win_blob


def test_a_snapshot_of_the_chain_logic_stays_as_taken() -> None:
    """``ChainLogic.snapshot`` keeps the state objects (no pickle without checks): the polls after
    it must not write into them, or a resume would start from a later state than the snapshot's."""
    norm, db, win, _ = cores()
    chain = OperatorChain(norm, db, win, AnomalyDetector({}))
    batches = [b for b in polls(5, irregular=False, n_polls=30) if b.device_id == "d0"]
    clock = [0]
    logic = ChainLogic(chain, lambda: clock[0], None, ("normalize", "deadband"))
    taken = []
    for k, b in enumerate(batches):
        clock[0] = int(b.ts_ns.max())
        logic.on_batch([b])
        if k % 4 == 2:
            snap = logic.snapshot()
            taken.append((snap, pickle.dumps(snap)))
    for snap, blob in taken:
        assert pickle.dumps(snap) == blob


TAGS = [3, 11, 12, 40, 2**62 + 7]


@st.composite
def device_polls(draw: st.DrawFn) -> list[PointBatch]:
    """One device's polls: tag subsets that grow and shrink, raw values around the clamp and range
    limits and repeated (deadband, stuck runs), now and then a bad or NaN point, timestamps that
    advance, repeat or cross minute boundaries."""
    pool = np.array(TAGS, dtype=np.int64)
    out = []
    ts = T0 + 50 * S
    for _ in range(draw(st.integers(1, 14))):
        keep = draw(st.lists(st.booleans(), min_size=len(pool), max_size=len(pool)))
        tags = pool[np.array(keep, dtype=bool)]
        if not len(tags):
            continue
        n = len(tags)
        raw = draw(
            st.lists(
                st.sampled_from([0.0, 40.0, 60.0, 500.0, 940.0, 960.0, 990.0, 2000.0]), min_size=n, max_size=n
            )
        )
        values = np.array(raw)
        quality = np.zeros(n, np.uint8)
        odd = draw(st.sampled_from(["none"] * 6 + ["bad", "nan", "uncertain"]))
        at = draw(st.integers(0, n - 1))
        if odd == "bad":
            quality[at] = Quality.COMM_ERROR
        elif odd == "nan":
            values[at] = np.nan
        elif odd == "uncertain":
            quality[at] = Quality.UNCERTAIN
        ts += draw(st.sampled_from([0, S // 2, S, S, 5 * S, 30 * S]))
        out.append(PointBatch.from_values("d", tags, values, ts_ns=ts, quality=quality))
    return out


def random_cores() -> tuple[Normalizer, Deadband, WindowAggregator, AnomalyDetector]:
    checks = TagChecks(
        range=RangeCheck(low=5.0, high=95.0, hysteresis=2.0),
        stuck=StuckCheck(samples=3, seconds=20.0),
        rate=RateCheck(max_per_s=60.0),
    )
    return (
        Normalizer({t: NormalizeParams(scale=0.1, clamp_low=1.0, clamp_high=98.0) for t in TAGS}),
        Deadband({t: DeadbandParams(absolute=1.0 if t % 2 else 0.0, heartbeat_s=20.0) for t in TAGS}),
        WindowAggregator([60.0], lateness_s=0.0, max_future_s=0.0),
        AnomalyDetector(dict.fromkeys(TAGS, checks)),
    )


@given(batches=device_polls())
@settings(max_examples=300, deadline=None)
def test_fused_chain_equals_the_cores_on_random_polls(batches: list[PointBatch]) -> None:
    want, want_states = one_by_one(random_cores(), batches)
    got, got_states, _ = fused(random_cores(), batches)
    assert same_output(got, want)
    assert same_output(comparable(got_states), comparable(want_states))


def test_a_tag_twice_in_a_poll_goes_one_by_one_with_the_cores_results() -> None:
    """The compiled path caches each point's state rows per tag array, which needs unique tags: a
    poll that repeats a tag is declined and gets the cores' results (the polls around it compiled)."""
    regular = [b for b in polls(2, irregular=False, n_polls=12) if b.device_id == "d0"]
    doubled = []
    for k, b in enumerate(regular):
        if k in (4, 5, 9):  # the first tag again at the end, with another value
            doubled.append(
                PointBatch(
                    b.device_id,
                    np.append(b.ts_ns, b.ts_ns[0]),
                    np.append(b.tag_ids, b.tag_ids[0]),
                    np.append(b.values, b.values[0] + 333.0),
                    np.append(b.quality, b.quality[0]),
                )
            )
        else:
            doubled.append(b)
    want, want_states = one_by_one(cores(), doubled)
    got, got_states, hits = fused(cores(), doubled)
    assert same_output(got, want)
    assert same_output(comparable(got_states), comparable(want_states))
    assert hits == len(doubled) - 1 - 3
