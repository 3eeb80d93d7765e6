"""The event loop owns the poll schedule; a worker drains its devices' finished polls from one queue.

The loop thread starts each poll from its own timer, whether or not the worker calls; a device's
finished batch is held until the worker takes it (its next slots are skipped and counted meanwhile);
a worker's partitions built together share one :class:`~connectors.polling.PollGroup`, whose one
``next_batch`` call hands over every device's batch; the group's wake-up time follows what it holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from connectors.nap import worker_nap
from connectors.polling import PolledDevice, PollGroup, PollingSource, WriteValue
from core.batch import PointBatch
from core.quality import Quality


class CountingClient:
    """Answers each poll with the number of polls so far, after ``delay_s`` (a device stand-in: the
    schedule is what is under test)."""

    def __init__(self, device_id: str, delay_s: float = 0.0) -> None:
        self.device_id = device_id
        self.delay_s = delay_s
        self.polls = 0
        self.threads: set[str] = set()

    async def poll(self) -> PointBatch:
        self.polls += 1
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return PointBatch.from_values(self.device_id, [1], [float(self.polls)], ts_ns=time.time_ns())

    async def write(self, tag_id: int, value: WriteValue) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        return PointBatch.from_values(self.device_id, [1], [np.nan], ts_ns=ts_ns, quality=quality)

    @property
    def stats(self) -> Any:
        return SimpleNamespace(failures=0)


class FastSource(PollingSource):
    protocol = "fake"

    def __init__(self, ids: list[str], interval_s: float = 0.02, **kw: Any) -> None:
        super().__init__([PolledDevice(i, interval_s) for i in ids], **kw)
        self.clients: dict[str, CountingClient] = {}
        self.poll_delay: dict[str, float] = {}

    def make_client(self, device_id: str) -> CountingClient:  # type: ignore[override]
        self.clients[device_id] = CountingClient(device_id, self.poll_delay.get(device_id, 0.0))
        return self.clients[device_id]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def test_the_loop_polls_on_its_own_and_holds_one_batch_per_device_until_taken() -> None:
    source = FastSource(["a"])
    part = source.build_part("in", "fake:a", None)
    try:
        assert part.next_batch() == []  # the worker runs: the schedule starts
        # nobody calls next_batch again: the loop's timer starts the first poll, then skips slots
        wait_for(lambda: part.stats.skipped_polls >= 3, "the loop did not keep its schedule")
        s = part.stats
        assert (s.polls, s.completed) == (1, 0)
        assert source.clients["a"].threads == {"fake:poll-loop"}
        (batch,) = part.next_batch()
        assert batch.values.tolist() == [1.0] and part.stats.completed == 1
        wait_for(lambda: part.stats.polls >= 2, "polls did not resume once the batch was taken")
    finally:
        part.close()
    assert not part._thread.is_alive()


def test_partitions_built_together_hand_over_in_one_call() -> None:
    ids = ["a", "b", "c"]
    source = FastSource(ids)
    parts = source.build_parts("in", [source.part_key(i) for i in ids])
    groups = {id(p.poll_group) for p in parts.values()}
    try:
        assert len(groups) == 1
        assert parts["fake:c"].next_batch() == []  # the worker runs: the schedules start
        wait_for(
            lambda: all(p.stats.skipped_polls >= 1 for p in parts.values()),
            "every device should have finished a poll and skipped a slot",
        )
        got = parts["fake:a"].next_batch()  # any one of them drains the group
        assert sorted(b.device_id for b in got) == ids
        assert [p.stats.completed for p in parts.values()] == [1, 1, 1]
        assert parts["fake:b"].next_batch() == []
    finally:
        for p in parts.values():
            p.close()


def test_a_shared_group_drains_on_the_stop_event_with_what_is_in_flight() -> None:
    stop = threading.Event()
    ids = ["a", "b"]
    source = FastSource(ids, stop_event=stop)
    for i in ids:
        source.poll_delay[i] = 0.3  # each poll takes 0.3 s: the stop comes while both are in flight
    parts = source.build_parts("in", [source.part_key(i) for i in ids])
    group = parts["fake:a"].poll_group
    got: list[PointBatch] = []
    try:
        assert group.next_batch() == []
        wait_for(lambda: all(c.polls == 1 for c in source.clients.values()), "the polls did not start")
        stop.set()
        deadline = time.monotonic() + 10
        with pytest.raises(StopIteration):
            while True:
                got += group.next_batch()
                assert time.monotonic() < deadline, "the group did not drain"
                time.sleep(0.002)
        assert sorted(b.device_id for b in got) == ids  # what was in flight came out before the end
        for p in parts.values():
            assert (p.stats.polls, p.stats.completed) == (1, 1)
    finally:
        for p in parts.values():
            p.close()


def test_group_wake_time_follows_what_it_holds() -> None:
    now = [1000.0]
    stop = threading.Event()
    group = PollGroup(stop, wake_slack_s=0.002, clock=lambda: now[0], idle_wake_s=0.25)
    assert group.next_batch() == []  # looks up the worker's nap (off): from now on the times below
    assert group.next_wake() == pytest.approx(1000.25)  # nothing armed: only the drain check
    group.arm(1000.1, now[0])
    assert group.next_wake() == pytest.approx(1000.102)  # the earliest deadline plus the slack
    group.arm(1005.0, now[0])
    assert group.next_wake() == pytest.approx(1000.102)
    now[0] = 1000.1
    assert group.begin()  # the loop starts the slot's poll
    group.arm(1001.1, now[0])  # and arms the next one, forgetting the one that passed
    assert group.next_wake() == pytest.approx(1000.102)  # a poll in flight: look again after the slack
    part = SimpleNamespace(_completed=0, _pending=True)
    group.emit("config v2")
    group.finish(part, "batch")  # type: ignore[arg-type]
    assert group.next_wake() is None and group.next_awake() is None  # something ready: at once
    assert group.next_batch() == ["config v2", "batch"]
    assert (part._completed, part._pending) == (1, False)
    assert group.next_wake() == pytest.approx(1000.35)  # the next deadline is past the cap
    stop.set()
    assert not group.begin()  # draining: no new polls
    with pytest.raises(StopIteration):
        group.next_batch()


def test_a_burst_of_polls_wakes_a_napping_worker_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The polls of a window finish within a few ms of each other: the worker is notified when the
    last one in flight finishes, or once :data:`NOTIFY_COALESCE_S` after the first when another is
    still running — not once per poll."""
    notified: list[float] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            check()
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    def check() -> None:
        nap = worker_nap(0.02)
        assert nap is not None
        monkeypatch.setattr(nap, "notify", lambda: notified.append(time.monotonic()))
        group = PollGroup(None, wake_slack_s=0.002, max_wait_s=0.02)
        assert group.next_batch() == []  # attaches the worker's nap
        parts = [SimpleNamespace(_completed=0, _pending=True) for _ in range(3)]

        async def burst() -> None:
            for _ in range(3):
                assert group.begin()
            group.finish(parts[0], "a")  # type: ignore[arg-type]
            group.finish(parts[1], "b")  # type: ignore[arg-type]
            assert notified == [], "notified before the burst was over"
            group.finish(parts[2], "c")  # type: ignore[arg-type]
            assert len(notified) == 1, "the last poll of the burst did not notify"
            assert group.begin() and group.begin()  # a slow device holds the next burst
            group.finish(parts[0], "d")  # type: ignore[arg-type]
            deadline = time.monotonic() + 10
            while len(notified) < 2:
                assert time.monotonic() < deadline, "the deferred notify never came"
                await asyncio.sleep(0.001)
            group.finish(parts[1], "e")  # type: ignore[arg-type]
            assert len(notified) == 3

        asyncio.run(burst())
        assert group.next_batch() == ["a", "b", "c", "d", "e"]

    t = threading.Thread(target=run)  # a thread of its own: its nap is not another test's
    t.start()
    t.join(30)
    assert not t.is_alive() and not errors, errors
    assert len(notified) == 3
