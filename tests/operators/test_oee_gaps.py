"""Issue 12.2: a long gap (one point stamped years back, a machine quiet for days) resets the
machine instead of emitting one OEE period per window across the whole gap."""

from __future__ import annotations

import pickle

import pytest

from core.batch import PointBatch
from operators.oee import OeeCalculator, OeeMachine
from tests.operators.test_oee import PRESS, S, at, poll

YEAR = 365 * 86_400 * S
HOUR = 3600 * S


def test_a_point_years_in_the_past_then_current_ones_is_bounded() -> None:
    calc = OeeCalculator([PRESS], window_s=60, max_hold_s=3600)
    now = at("12:00")
    state = calc.initial_state()
    old = PointBatch.from_values("plc1", [10, 11], [1, 0], ts_ns=now - YEAR)
    state, res = calc.process(state, old, now_ns=now)
    # before: 525,600 one-minute periods here; now: at most the hour the state is held, plus one partial
    assert len(res) <= 61
    assert state.machines["press"].resets == 1
    assert state.machines["press"].until_ns is None  # quiet for a year: started over
    state, res = calc.process(state, poll("12:00", state=1, count=0), now_ns=now)
    state, res = calc.process(state, poll("12:02", state=1, count=10), now_ns=at("12:02"))
    assert [(r.start_ns, r.run_s, r.total_count) for r in res] == [
        (at("12:00"), 60.0, 0.0),
        (at("12:01"), 60.0, 0.0),
    ]
    assert calc.flush(state)[0].total_count == 10  # the increment belongs to the open 12:02 window


def test_a_gap_inside_one_batch_resets_the_machine() -> None:
    calc = OeeCalculator([PRESS], window_s=60, max_hold_s=600)
    now = at("12:00")
    batch = PointBatch.from_values(
        "plc1",
        [10, 11, 10, 11],
        [1, 100, 1, 5],
        ts_ns=[now - 2 * YEAR, now - 2 * YEAR, now - 60 * S, now - 60 * S],
    )
    state, res = calc.process(calc.initial_state(), batch, now_ns=now)
    ms = state.machines["press"]
    assert ms.resets == 1 and len(res) <= 12
    # the counter baseline was reset: 100 -> 5 is not a wrap across the gap
    assert sum(r.total_count for r in res) == 0
    assert ms.counters == {11: 5.0}


def test_a_machine_quiet_longer_than_the_hold_is_closed_once_and_reset() -> None:
    calc = OeeCalculator([PRESS], window_s=60, lateness_s=5, max_hold_s=1800)
    state, _ = calc.process(calc.initial_state(), poll("06:00", state=1, count=0), now_ns=at("06:00"))
    state, res = calc.close_idle(state, at("06:00") + 3 * 86_400 * S)
    assert len(res) == 30  # the held half hour, minute by minute; not 4,320 minutes
    assert all(r.run_s == 60.0 for r in res)
    assert state.machines["press"].resets == 1 and calc.next_deadline(state) is None
    again, more = calc.close_idle(state, at("06:00") + 4 * 86_400 * S)
    assert more == [] and again is state


def test_gaps_within_the_hold_are_accounted_as_before() -> None:
    held = OeeCalculator([PRESS], window_s=600, max_hold_s=8 * 3600)
    state = held.initial_state()
    out = []
    for b in (
        poll("06:00", state=1, count=0),
        poll("07:00", state=2, count=100),
        poll("08:00", state=1, count=100),
    ):
        state, res = held.process(state, b, now_ns=int(b.ts_ns.max()))
        out += res
    assert len(out) == 12 and state.machines["press"].resets == 0
    assert (
        sum(r.run_s for r in out) == 3600.0
        and sum(r.planned_stop_s + r.unplanned_stop_s for r in out) == 3600.0
    )


def test_max_hold_is_checked_and_survives_pickling() -> None:
    with pytest.raises(ValueError, match="`max_hold_s` must be > 0"):
        OeeCalculator([PRESS], window_s=60, max_hold_s=0)
    calc = pickle.loads(pickle.dumps(OeeCalculator([PRESS], window_s=60, max_hold_s=123)))
    assert calc.max_hold_s == 123
    assert isinstance(calc.machines[0], OeeMachine)
