"""The Bytewax adapter: a real (in-process) dataflow, and the logic's lifecycle with a fake clock."""

from __future__ import annotations

import pickle
import time
from datetime import UTC, datetime

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch
from core.records import AggBatch
from operators.window import SECOND, WindowAggregator
from operators.window_bytewax import WindowLogic, ns_to_utc_ceil, tumbling_aggregate

T0 = 1_700_000_040 * SECOND


def pb(device: str, tags, values, ts_s) -> PointBatch:
    return PointBatch.from_values(device, tags, values, ts_ns=T0 + round(ts_s * SECOND))


def test_dataflow_emits_aggregates_and_late_points_and_flushes_at_eof():
    items = [
        pb("a", [1, 2], [1.0, 2.0], 10),
        pb("b", [1], [5.0], 12),
        pb("a", [1, 2], [3.0, 4.0], 50),
        pb("a", [1], [6.0], 65),  # closes minute 0 of "a"
        pb("a", [2], [9.0], 30),  # late for "a"
        pb("b", [1], [7.0], 70),  # closes minute 0 of "b"
        pb("a", [2], [8.0], 90),  # minute 1 of "a" stays open until EOF
    ]
    clock_now = T0 + 100 * SECOND
    flow = Dataflow("window_test")
    inp = op.input("inp", flow, TestingSource(items, batch_size=2))
    keyed = op.key_on("by_device", inp, lambda b: b.device_id)
    aggs, late = tumbling_aggregate("agg", keyed, WindowAggregator([60]), clock=lambda: clock_now)
    got_aggs: list[tuple[str, AggBatch]] = []
    got_late: list[tuple[str, PointBatch]] = []
    op.output("aggs_out", aggs, TestingSink(got_aggs))
    op.output("late_out", late, TestingSink(got_late))
    run_main(flow)

    rows = {
        (key, int(a.bucket_ns[i] - T0) // SECOND, int(a.tag_ids[i])): (int(a.count[i]), float(a.sum[i]))
        for key, a in got_aggs
        for i in range(len(a))
    }
    assert rows == {
        ("a", 0, 1): (2, 4.0),
        ("a", 0, 2): (2, 6.0),
        ("a", 60, 1): (1, 6.0),  # flushed at EOF
        ("a", 60, 2): (1, 8.0),  # flushed at EOF
        ("b", 0, 1): (1, 5.0),
        ("b", 60, 1): (1, 7.0),  # flushed at EOF
    }
    assert all(a.window == "1m" and a.device_id == key for key, a in got_aggs)
    assert [(k, b.values.tolist()) for k, b in got_late] == [("a", [9.0])]
    # the window label is part of the stateful step id (fresh state when the window changes)
    assert any("agg_1m" in s.step_id for s in flow.substeps)


def test_logic_notifies_when_a_bucket_is_due_and_forgets_a_quiet_device():
    now = [T0 + 30 * SECOND]
    core = WindowAggregator([60], lateness_s=1, tag_ttl_s=600)
    logic = WindowLogic(core, lambda: now[0], None)
    out, retain = logic.on_item(pb("a", [1], [2.0], 30))
    assert list(out) == [] and retain is StatefulLogic.RETAIN

    # the injected clock is translated to the engine's wall clock: due in 31 s from "now"
    at = logic.notify_at()
    assert at is not None and at.tzinfo is UTC
    wall_in = (at - datetime.now(tz=UTC)).total_seconds()
    assert 30.5 < wall_in < 31.5

    now[0] = T0 + 60 * SECOND  # too early (lateness 1 s)
    out, retain = logic.on_notify()
    assert list(out) == [] and retain is StatefulLogic.RETAIN
    now[0] = T0 + 61 * SECOND
    out, retain = logic.on_notify()
    ((kind, agg),) = list(out)
    assert kind == "agg" and isinstance(agg, AggBatch) and agg.twa.tolist() == [2.0]
    assert retain is StatefulLogic.RETAIN

    # nothing open: the next notification is the expiry; then the key is discarded
    snap = logic.snapshot()
    assert pickle.loads(pickle.dumps(snap)).open_buckets == 0
    now[0] = T0 + 630 * SECOND
    out, retain = logic.on_notify()
    assert list(out) == [] and retain is StatefulLogic.DISCARD


def test_logic_with_the_real_clock_schedules_the_deadline_itself():
    core = WindowAggregator([1])
    logic = WindowLogic(core, time.time_ns, None)
    assert logic.notify_at() is None
    t = time.time_ns()
    logic.on_item(PointBatch.from_values("a", [1], [1.0], ts_ns=t))
    due = core.next_deadline(logic.state)
    assert due is not None and logic.notify_at() == ns_to_utc_ceil(due)
    out, _ = logic.on_eof()
    ((kind, agg),) = list(out)
    assert kind == "agg" and agg.count.tolist() == [1]
    assert logic.state.open_buckets == 1  # kept: a resumed run completes the bucket


def test_ns_to_utc_ceil_never_rounds_down():
    for ns in (0, 1, 999, 1000, T0 + 1, T0 + 999_999):
        dt = ns_to_utc_ceil(ns)
        us = round((dt - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)
        assert us * 1000 >= ns and us * 1000 - ns < 1000
    assert np.int64(T0) // 1000 * 1000 == T0  # sanity: T0 is a whole microsecond
