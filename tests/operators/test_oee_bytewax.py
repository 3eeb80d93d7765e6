"""The OEE adapter in a real (in-process) dataflow, and its logic with a fake clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch
from core.records import OeeResult
from operators.analytics_bytewax import OeeLogic, oee
from operators.oee import OeeCalculator, OeeMachine

S = 1_000_000_000
T0 = 1_700_000_400 * S  # a whole 10-minute boundary
MACHINE = OeeMachine("press", "plc1", 1, {1: "running", 2: ("unplanned_stop", "jam")}, 2, ideal_cycle_s=6.0)


def pb(ts_s: float, tags: list[int], values: list[float]) -> PointBatch:
    return PointBatch.from_values("plc1", tags, values, ts_ns=T0 + round(ts_s * S))


def test_dataflow_emits_closed_windows_and_partials_at_eof() -> None:
    items = [pb(0, [1, 2], [1, 0]), pb(300, [1, 2], [2, 40]), pb(600, [1, 2], [1, 40]), pb(700, [2], [45])]
    calc = OeeCalculator([MACHINE], window_s=600)
    flow = Dataflow("oee_test")
    now = [T0]

    def tick(b: PointBatch) -> PointBatch:  # a fake clock that follows the data
        now[0] = int(b.ts_ns.max())
        return b

    inp = op.map("tick", op.input("inp", flow, TestingSource(items)), tick)
    keyed = op.key_on("by_device", inp, lambda b: b.device_id)
    got: list[tuple[str, OeeResult]] = []
    op.output("out", oee("oee", keyed, calc, clock=lambda: now[0]), TestingSink(got))
    run_main(flow)
    first, partial = (r for _, r in got)
    assert (first.start_ns, first.run_s, first.unplanned_stop_s, first.total_count) == (
        T0,
        300.0,
        300.0,
        40.0,
    )
    assert (
        first.availability == 0.5
        and first.performance == 6.0 * 40 / 300
        and first.downtime_s == {"jam": 300.0}
    )
    assert (partial.start_ns, partial.run_s, partial.total_count) == (
        T0 + 600 * S,
        100.0,
        5.0,
    )  # flushed at EOF


def test_logic_sleeps_until_the_next_period_end_and_closes_by_the_clock() -> None:
    now = [T0 + 10 * S]
    logic = OeeLogic(OeeCalculator([MACHINE], window_s=600, lateness_s=2), lambda: now[0], None)
    assert logic.notify_at() is None  # nothing known yet: no wake-ups
    out, retain = logic.on_item(pb(10, [1, 2], [1, 0]))
    assert list(out) == [] and retain is StatefulLogic.RETAIN
    at = logic.notify_at()
    assert at is not None and at.tzinfo is UTC
    assert 591.5 < (at - datetime.now(tz=UTC)).total_seconds() < 592.5  # 600 s + 2 s lateness - 10 s
    now[0] = T0 + 602 * S
    (r,), retain = logic.on_notify()
    assert r.run_s == 590.0 and retain is StatefulLogic.RETAIN
    assert logic.snapshot() is logic.state  # the core never mutates it: no copy needed


def test_logic_with_the_real_clock_schedules_the_deadline_itself() -> None:
    calc = OeeCalculator([MACHINE], window_s=60)
    logic = OeeLogic(calc, time.time_ns, None)
    logic.on_item(PointBatch.from_values("plc1", [1], [1], ts_ns=time.time_ns()))
    due, at = calc.next_deadline(logic.state), logic.notify_at()
    assert due is not None and at is not None
    assert abs((at - datetime.fromtimestamp(due / S, UTC)).total_seconds()) < 1e-3
