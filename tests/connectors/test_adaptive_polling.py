"""Adaptive polling: faster while values change, slower while stable, within bounds, on a moving grid.

The partition's event loop starts its polls; the schedule reads an injected clock, which the test
moves to each slot (then :meth:`~connectors.polling.PollingPartition.reschedule`), so the grid is
checked exactly while the polls themselves run in real time on the loop thread."""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

import numpy as np
import pytest

from connectors.polling import (
    AdaptiveInterval,
    AdaptivePolling,
    PolledDevice,
    PollingPartition,
    PollSchedule,
    changed,
)
from core.batch import PointBatch
from core.quality import Quality
from dataflows.compiler import adaptive_polling
from dataflows.spec import SpecError, parse_spec


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedClient:
    """Answers each poll with the next value of ``values`` (None: a failed poll); records the clock
    when each poll starts and moves it on by ``poll_s`` (the poll 'takes' that long)."""

    def __init__(self, values: list[float | None], clock: FakeClock, poll_s: float = 0.0) -> None:
        self.values = list(values)
        self.polls = 0
        self.clock = clock
        self.poll_s = poll_s
        self.started: list[float] = []

    async def poll(self) -> PointBatch:
        self.started.append(self.clock.now)
        self.clock.now += self.poll_s
        v = self.values[min(self.polls, len(self.values) - 1)]
        self.polls += 1
        if v is None:
            return self.error_batch(Quality.COMM_ERROR, 0)
        return PointBatch.from_values("dev", [1, 2], [v, 0.0], ts_ns=0)

    async def write(self, tag_id: int, value: Any) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        return PointBatch.from_values("dev", [1, 2], [np.nan, np.nan], ts_ns=ts_ns, quality=quality)

    @property
    def stats(self) -> Any:
        return type("S", (), {"failures": 0})()


def poll_times(
    values: list[float | None], adaptive: AdaptivePolling, start_s: float = 1.0, *, slow_poll_s: float = 0.0
) -> list[float]:
    """Drive a partition on a fake clock through ``len(values)`` polls; the clock times they started.

    Each poll 'takes' ``slow_poll_s`` of fake time (the clock moves on while it is in flight)."""
    clock = FakeClock(1000.0)
    client = ScriptedClient(values, clock, slow_poll_s)
    part = PollingPartition(
        PolledDevice("dev", start_s, "fake", adaptive=adaptive),
        client,
        protocol="fake",
        stop_event=None,
        wake_slack_s=0.001,
        close_timeout_s=1.0,
        clock=clock,
    )
    try:
        for n in range(1, len(values) + 1):
            clock.now = max(clock.now, part._schedule.next_deadline)
            part.reschedule()  # the slot is due on the fake clock: the loop starts its poll
            deadline = time.monotonic() + 5.0
            while not part.next_batch():  # wait (really) for the poll to finish
                assert time.monotonic() < deadline, "poll did not complete"
                time.sleep(0.001)
            assert part.stats.polls == part.stats.completed == n
    finally:
        part.close()
    return client.started


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(times)]


def test_interval_shrinks_while_values_change_and_grows_while_stable() -> None:
    values: list[float | None] = [1, 1, 1, 2, 3, 3, 3]
    times = poll_times(values, AdaptivePolling(0.25, 4.0))
    # reference, stable x1.5, stable x1.5, change /2, change /2, stable x1.5
    assert gaps(times) == [1.0, 1.5, 2.25, 1.125, 0.5625, 0.84375]


def test_interval_stays_within_its_bounds() -> None:
    assert set(gaps(poll_times([5.0] * 8, AdaptivePolling(0.5, 2.0)))[2:]) == {2.0}
    assert set(gaps(poll_times([float(i) for i in range(8)], AdaptivePolling(0.5, 2.0)))[2:]) == {0.5}


def test_failed_polls_neither_speed_up_nor_slow_down() -> None:
    values: list[float | None] = [1, None, None, 1, 2]
    # the failed polls keep 1.0 and the reference: 1 -> 1 is stable (1.5), 1 -> 2 a change
    assert gaps(poll_times(values, AdaptivePolling(0.25, 4.0))) == [1.0, 1.0, 1.0, 1.5]


def test_grid_is_anchored_at_the_slot_of_the_poll_that_moved_it() -> None:
    # polls take 0.3 s of (fake) time: the next slot is still slot + new interval, not completion + interval
    times = poll_times([1, 2, 3, 4], AdaptivePolling(0.25, 4.0), start_s=2.0, slow_poll_s=0.3)
    assert gaps(times) == [2.0, 1.0, 0.5]
    # a poll slower than the new interval: the first slot of the new grid that is not past
    times = poll_times([1, 2, 3], AdaptivePolling(0.25, 4.0), start_s=1.0, slow_poll_s=0.6)
    assert gaps(times) == [1.0, 1.0]  # 0.5 after the slot would be in the past: 2 * 0.5


def test_schedule_without_changes_never_drifts() -> None:
    s = PollSchedule(origin=0.0, interval=0.1, now=0.0)
    assert s.take(0.0) == 1
    for k in range(1, 10_001):
        assert s.take(k * 0.1 + 1e-9) == 1
    assert s.next_deadline == pytest.approx(10_001 * 0.1)
    s.retime(0.3, anchor=s.last_slot, now=s.last_slot + 0.05)
    assert s.next_deadline == pytest.approx(10_000 * 0.1 + 0.3)


def test_changed_counts_text_tags_and_nan() -> None:
    a = AdaptiveInterval(AdaptivePolling(1.0, 8.0), start_s=2.0)
    nan = PointBatch.from_values("d", [1], [np.nan], ts_ns=0, quality=Quality.GOOD)
    assert a.observe(nan) == 2.0
    assert a.observe(nan) == 3.0  # NaN == NaN: stable
    text_a = dataclasses.replace(nan, text={0: "A"})
    assert changed(nan, text_a) and changed(text_a, dataclasses.replace(nan, text={0: "B"}))
    assert not changed(text_a, dataclasses.replace(nan, text={0: "A"}))
    assert changed(nan, PointBatch.from_values("d", [2], [np.nan], ts_ns=0))


def test_spec_adaptive_option_is_checked_and_reaches_the_source() -> None:
    device = {
        "id": "press",
        "connection": {"host": "127.0.0.1"},
        "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "poll_interval_s": 1.0,
        "adaptive": {"min_interval_s": 0.2, "max_interval_s": 10},
        "tags": [{"name": "t", "table": "holding", "address": 0}],
    }
    sinks = [{"id": "uns", "type": "mqtt_uns"}]  # a flow needs a sink
    spec = parse_spec({"version": 1, "id": "f", "devices": [device], "sinks": sinks})
    assert adaptive_polling(spec) == {"press": AdaptivePolling(0.2, 10.0)}
    with pytest.raises(SpecError, match=r"poll_interval_s \(20.0\) must be within adaptive"):
        parse_spec({"version": 1, "id": "f", "devices": [{**device, "poll_interval_s": 20}], "sinks": sinks})
    bad = {**device, "adaptive": {"min_interval_s": 5, "max_interval_s": 1}}
    with pytest.raises(SpecError, match=r"min_interval_s \(5.0\) must be <= max_interval_s"):
        parse_spec({"version": 1, "id": "f", "devices": [bad], "sinks": sinks})
