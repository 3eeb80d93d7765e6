"""OEE: a hand-computed 8-hour shift, counters, periods, the clock, and the operator contract."""

from __future__ import annotations

import math
import pickle
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from core.batch import PointBatch
from core.quality import Quality
from core.records import OeeResult
from operators.oee import (
    Category,
    MachineState,
    OeeCalculator,
    OeeMachine,
    OeeState,
    Shift,
    ShiftCalendar,
    counter_increments,
)
from tests.operators.operators_reference import copy_of, frozen, same_batch

S = 1_000_000_000
STATE, COUNT, REJECT, GOOD = 10, 11, 12, 13
STATE_MAP: dict[int, Category | tuple[Category, str]] = {
    1: "running",
    2: ("planned_stop", "break"),
    3: ("unplanned_stop", "jam"),
    4: ("unplanned_stop", "no material"),
    5: "planned_stop",
}
PRESS = OeeMachine("press", "plc1", STATE, STATE_MAP, COUNT, ideal_cycle_s=4.0, reject_tag=REJECT)
DAY = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
CAL = ShiftCalendar([Shift("early", "06:00", "14:00"), Shift("late", "14:00", "22:00")])


def at(hhmmss: str) -> int:
    h, m, *s = (int(x) for x in hhmmss.split(":"))
    return int(DAY.timestamp()) * S + (h * 3600 + m * 60 + (s[0] if s else 0)) * S


def poll(
    hhmmss: str,
    state: float | None = None,
    count: float | None = None,
    reject: float | None = None,
    quality: int = 0,
) -> PointBatch:
    tags, values = [], []
    for tag, v in ((STATE, state), (COUNT, count), (REJECT, reject)):
        if v is not None:
            tags.append(tag)
            values.append(v)
    tags.append(99)  # an unrelated tag of the same device
    values.append(1.0)
    return PointBatch.from_values("plc1", tags, values, ts_ns=at(hhmmss), quality=quality)


SHIFT_DAY = [
    poll("05:59", state=1, count=1000, reject=10),  # baselines; the minute before the shift is not in it
    poll("08:00", state=2, count=2440, reject=25),  # +1440, +15; break
    poll("08:15", state=1, count=2440, reject=25),
    poll("09:00", state=3, quality=Quality.COMM_ERROR),  # bad sample: ignored, running holds
    poll("09:30", state=3, count=3340, reject=40),  # +900, +15; jam
    poll("10:00", state=1),
    poll("10:59", state=1, count=4000, reject=50),  # +660, +10
    poll("11:00", state=1, count=30, reject=2),  # both counters reset: +30, +2
    poll("12:00", state=5, count=1200, reject=20),  # +1170, +18; planned stop without a reason label
    poll("12:30", state=1),
    poll("13:10", state=4, count=1680, reject=26),  # +480, +6; no material
    poll("13:30", state=1),
    poll("13:59:30", count=2040, reject=30),  # +360, +4
    poll("14:00", state=1, count=2040, reject=30),  # event time reaches the shift end
]


def run(
    calc: OeeCalculator, batches: list[PointBatch], state: OeeState | None = None, now: int | None = None
) -> tuple[OeeState, list[OeeResult]]:
    state = state or calc.initial_state()
    out: list[OeeResult] = []
    clock = 0
    for b in batches:
        clock = max(clock, int(b.ts_ns.max()) if len(b) else clock)
        state, results = calc.process(state, b, now_ns=clock if now is None else now)
        out += results
    return state, out


def test_hand_computed_shift() -> None:
    calc = OeeCalculator([PRESS], window_s=3600, calendar=CAL)
    _, results = run(calc, SHIFT_DAY)
    (early,) = [r for r in results if r.period == "shift:early"]
    assert (early.start_ns, early.end_ns) == (at("06:00"), at("14:00"))

    # run: 06:00-08:00 120, 08:15-09:30 75, 10:00-12:00 120, 12:30-13:10 40, 13:30-14:00 30 = 385 min
    run_s = (120 + 75 + 120 + 40 + 30) * 60.0
    planned_s = (15 + 30) * 60.0  # break 08:00-08:15, state 5 12:00-12:30
    unplanned_s = (30 + 20) * 60.0  # jam 09:30-10:00, no material 13:10-13:30
    assert run_s + planned_s + unplanned_s == 8 * 3600
    total = 1440 + 900 + 660 + 30 + 1170 + 480 + 360  # = 5040, the reset counts its new value (30)
    reject = 15 + 15 + 10 + 2 + 18 + 6 + 4  # = 70
    good = total - reject  # only a reject counter: good = total - reject
    availability = run_s / (8 * 3600 - planned_s)  # 23100 / 26100
    performance = 4.0 * total / run_s  # 20160 / 23100
    quality = good / total  # 4970 / 5040
    oee = availability * performance * quality

    assert (
        early.run_s == run_s and early.planned_stop_s == planned_s and early.unplanned_stop_s == unplanned_s
    )
    assert (early.total_count, early.good_count, early.reject_count) == (total, good, reject)
    assert early.availability == pytest.approx(availability, abs=1e-9)
    assert early.performance == pytest.approx(performance, abs=1e-9)
    assert early.quality == pytest.approx(quality, abs=1e-9)
    assert early.oee == pytest.approx(oee, abs=1e-9)
    assert early.oee == pytest.approx(0.7616858237547893, abs=1e-9)  # = 4 * 4970 / 26100
    assert early.downtime_s == {"break": 900.0, "jam": 1800.0, "no material": 1200.0, "state 5": 1800.0}

    # the hour 13:00-14:00: run 13:00-13:10 and 13:30-14:00, no material 13:10-13:30
    (h13,) = [r for r in results if r.period == "window:1h" and r.start_ns == at("13:00")]
    assert (h13.run_s, h13.unplanned_stop_s, h13.total_count, h13.reject_count) == (
        2400.0,
        1200.0,
        840.0,
        10.0,
    )
    assert h13.availability == pytest.approx(2400 / 3600, abs=1e-9)
    assert h13.performance == pytest.approx(4.0 * 840 / 2400, abs=1e-9)
    assert h13.quality == pytest.approx(830 / 840, abs=1e-9)
    # the minute before the shift is in the 05:00 window only
    (h5,) = [r for r in results if r.start_ns == at("05:00")]
    assert h5.run_s == 60.0 and h5.total_count == 0.0 and math.isnan(h5.quality)
    assert [r.period for r in results].count("window:1h") == 9  # 05:00 .. 13:00 closed by event time
    assert not any(r.period == "shift:late" for r in results)  # still open


def test_division_by_zero_gives_nan_and_oee_stays_defined_when_possible() -> None:
    calc = OeeCalculator([PRESS], window_s=3600)
    _, res = run(
        calc, [poll("06:00", state=2, count=0), poll("07:00", state=1, count=0), poll("08:00", state=1)]
    )
    r6, r7 = res
    # only planned stop: no planned production time
    assert r6.planned_stop_s == 3600 and math.isnan(r6.availability) and math.isnan(r6.oee)
    assert math.isnan(r6.performance) and math.isnan(r6.quality)
    # ran an hour, made nothing: performance 0, quality undefined, OEE 0 (= ideal * good / planned time)
    assert r7.availability == 1.0 and r7.performance == 0.0 and math.isnan(r7.quality) and r7.oee == 0.0


def test_counter_rules() -> None:
    assert counter_increments(None, [10, 12, 3, 8], 100).tolist() == [0, 2, 3, 5]  # reset counts 3
    assert counter_increments(95, [2, 4], 100).tolist() == [7, 2]  # wrap: 100 - 95 + 2
    assert counter_increments(50, [2], 100).tolist() == [2]  # from mid-range: a reset
    assert counter_increments(95, [50], 100).tolist() == [50]  # to mid-range: a reset
    assert counter_increments(7, [], 100).tolist() == []


def test_good_counter_only_and_wrap_in_a_period() -> None:
    m = OeeMachine("m", "plc1", STATE, {1: "running"}, COUNT, 1.0, good_tag=GOOD, counter_max=1000)
    calc = OeeCalculator([m], window_s=600)
    b = [
        PointBatch.from_values("plc1", [STATE, COUNT, GOOD], [1, 990, 500], ts_ns=at("06:00")),
        PointBatch.from_values("plc1", [COUNT, GOOD], [190, 660], ts_ns=at("06:05")),  # 990 -> 190: reset
        PointBatch.from_values("plc1", [COUNT, GOOD], [995, 800], ts_ns=at("06:08")),
        PointBatch.from_values("plc1", [COUNT, GOOD], [15, 819], ts_ns=at("06:09")),  # wrap: +20
        PointBatch.from_values("plc1", [STATE], [1], ts_ns=at("06:10")),
    ]
    _, (r,) = run(calc, b)
    assert (r.total_count, r.good_count, r.reject_count) == (190 + 805 + 20, 160 + 140 + 19, 1015 - 319)
    assert r.quality == pytest.approx(319 / 1015, abs=1e-12)


def test_neither_good_nor_reject_counter_means_every_part_is_good() -> None:
    m = OeeMachine("m", "plc1", STATE, {1: "running"}, COUNT, 1.0)
    _, (r,) = run(
        OeeCalculator([m], window_s=60),
        [
            PointBatch.from_values("plc1", [STATE, COUNT], [1, 0], ts_ns=at("06:00")),
            PointBatch.from_values("plc1", [COUNT], [30], ts_ns=at("06:01")),
        ],
    )
    assert (r.total_count, r.good_count, r.reject_count, r.quality) == (0, 0, 0, r.quality)  # 06:01 is next
    assert math.isnan(r.quality) and r.performance == 0.0


def test_unknown_state_values_are_unplanned_and_named() -> None:
    calc = OeeCalculator([PRESS], window_s=60)
    _, (r,) = run(calc, [poll("06:00", state=42.5), poll("06:01", state=1)])
    assert r.unplanned_stop_s == 60 and r.downtime_s == {"unknown state 42.5": 60.0}


def test_shift_across_midnight_in_a_time_zone_with_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    cal = ShiftCalendar([Shift("night", "22:00", "06:00", days=["sat"])], tz="Europe/Berlin")
    # the night of Sat 30 -> Sun 31 March 2024 loses an hour (clocks go forward at 02:00)
    start = int(datetime(2024, 3, 30, 22, 0, tzinfo=berlin).timestamp()) * S
    end = int(datetime(2024, 3, 31, 6, 0, tzinfo=berlin).timestamp()) * S
    assert cal.instances(start - 3600 * S, start + S) == [("night", start, end)]
    assert end - start == 7 * 3600 * S
    assert cal.instances(start - 7 * 86_400 * S, start - 86_400 * S) == [
        ("night", start - 7 * 86_400 * S, start - 7 * 86_400 * S + 8 * 3600 * S)
    ]  # only Saturdays (the previous one, before DST)
    m = OeeMachine("m", "plc1", STATE, {1: "running"}, COUNT, 1.0)
    calc = OeeCalculator([m], calendar=cal)
    b = [PointBatch.from_values("plc1", [STATE], [1], ts_ns=t) for t in (start - 60 * S, end)]
    _, (r,) = run(calc, b)
    assert (r.period, r.start_ns, r.end_ns, r.run_s) == ("shift:night", start, end, 7 * 3600.0)


def test_quiet_machine_periods_close_by_the_clock_and_the_next_deadline() -> None:
    calc = OeeCalculator([PRESS], window_s=600, lateness_s=5)
    state, res = run(calc, [poll("06:01", state=1, count=0)])
    assert res == [] and calc.next_deadline(state) == at("06:10") + 5 * S
    state2, res = calc.close_idle(state, at("06:10:04"))
    assert res == [] and state2 is state
    state, res = calc.close_idle(state, at("06:20:05"))
    assert [(r.start_ns, r.run_s) for r in res] == [(at("06:00"), 540.0), (at("06:10"), 600.0)]
    assert calc.next_deadline(state) == at("06:30") + 5 * S
    # a point stamped before the closed time is late: clamped and counted
    state, res = calc.process(state, poll("06:19", count=7), now_ns=at("06:21"))
    assert state.machines["press"].late_points == 1
    assert calc.flush(state)[0].total_count == 7  # counted in the open 06:20 window
    # a point far in the future is dropped and counted
    state, _ = calc.process(state, poll("09:00", state=3), now_ns=at("06:22"))
    assert state.machines["press"].future_points == 1


def test_flush_reports_open_periods_and_keeps_them() -> None:
    calc = OeeCalculator([PRESS], calendar=CAL)
    state, _ = run(calc, SHIFT_DAY[:5])
    (r,) = calc.flush(state)
    assert r.period == "shift:early" and r.run_s == (120 + 75) * 60 and r.unplanned_stop_s == 0
    assert calc.flush(state) == [r]


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="`ideal_cycle_s` must be > 0, got 0"):
        OeeMachine("m", "d", 1, {1: "running"}, 2, 0)
    with pytest.raises(ValueError, match="tags must differ"):
        OeeMachine("m", "d", 1, {1: "running"}, 1, 1.0)
    with pytest.raises(ValueError, match="`start` must be 'HH:MM', got '25:00'"):
        Shift("x", "25:00", "06:00")
    with pytest.raises(ValueError, match="`days` must hold"):
        Shift("x", "06:00", "14:00", days=["funday"])
    with pytest.raises(ValueError, match="`tz` must be a zoneinfo time zone"):
        ShiftCalendar([Shift("x", "06:00", "14:00")], tz="Mars/Olympus")
    with pytest.raises(ValueError, match="give `window_s`, `calendar` or both"):
        OeeCalculator([PRESS])
    with pytest.raises(TypeError):
        PRESS.state_map[9] = ("running", "x")  # type: ignore[index]


# -- the operator contract ---------------------------------------------------------------------------


def scenario(seed: int) -> list[PointBatch]:
    """Random polls where the machine's tags come and go, with bad points and other devices."""
    rng = np.random.default_rng(seed)
    out = []
    count = 0.0
    for step in range(60):
        tags = [t for t in (STATE, COUNT, REJECT, 99) if rng.random() < 0.6]
        count += float(rng.integers(0, 20))
        values = {STATE: float(rng.integers(1, 6)), COUNT: count, REJECT: count // 10, 99: 1.0}
        q = rng.choice(np.array([0, 0, 0, 0, 129], dtype=np.uint8), len(tags))
        device = "plc1" if rng.random() < 0.9 else "plc2"
        ts = at("05:00") + step * 97 * S
        out.append(PointBatch.from_values(device, tags, [values[t] for t in tags], ts_ns=ts, quality=q))
    return out


def test_contract_pickles_repeats_and_does_not_mutate() -> None:
    batches = scenario(21)
    calc = OeeCalculator([PRESS], window_s=600, calendar=CAL)
    _, ref = run(calc, [copy_of(b) for b in batches])
    frozen_batches = [frozen(copy_of(b)) for b in batches]
    _, got = run(pickle.loads(pickle.dumps(calc)), frozen_batches)
    assert got == ref and len(ref) >= 8
    assert all(same_batch(a, b) for a, b in zip(batches, frozen_batches, strict=True))
    assert run(OeeCalculator([PRESS], window_s=600, calendar=CAL), scenario(21))[1] == ref  # seeded repeat


def test_contract_state_pickles_mid_stream_and_is_not_modified() -> None:
    calc = OeeCalculator([PRESS], window_s=600, calendar=CAL)
    batches = scenario(4)
    state, _ = run(calc, batches[:30])
    before = pickle.dumps(state)
    assert run(calc, batches[30:], state)[1] == run(calc, batches[30:], pickle.loads(before))[1]
    assert pickle.dumps(state) == before  # process() never modified the state it was given
    assert isinstance(state.machines["press"], MachineState)
