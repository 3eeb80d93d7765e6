"""The polling source every protocol shares: one Bytewax partition per device, one event loop per source.

The partitions a :class:`PollingSource` builds in a process share one daemon thread running an
asyncio event loop (started with the first partition, stopped when the last one closes); each
device's :class:`DeviceClient` runs its awaits there. One loop instead of one thread per device:
with hundreds of devices, hundreds of threads each waking from ``epoll`` and queueing for the GIL
delayed every poll and the worker thread (profiled: 500 devices at 1 s skipped 2-5 % of their polls
at half a core).

The event loop owns the schedule: each partition's polls are started by the loop thread's own
timers, and a finished poll's :class:`~core.batch.PointBatch` goes into the ready queue of the
partition's :class:`PollGroup`, which the Bytewax worker drains in one ``next_batch`` call (one
group for all the partitions of a worker under :mod:`dataflows.routing`). Before, the worker
submitted each poll with ``asyncio.run_coroutine_threadsafe`` (a self-pipe write and an ``epoll``
wake-up of the loop thread per poll) and looked again every ``wake_slack_s`` while any poll was in
flight, walking every such partition. ``next_batch`` never blocks.
Slots sit on a fixed grid, ``origin + k * poll_interval_s``, so the schedule never drifts (a poll
starts at the end of its slot's window, at most :data:`POLL_WINDOW_MS` after it — up to half the
interval for a group of few devices, :func:`window_quantum` — so the loop wakes once for the slots
of many devices); a slot that comes while the previous poll is still running, or before the worker took its
batch, is skipped and counted (at most one poll or batch per device is ever outstanding). The
origin carries a stable per-device offset so devices with the same interval do not all fire at once.

Adaptive polling (optional, :class:`AdaptivePolling` on a :class:`PolledDevice`): after each
completed poll :class:`AdaptiveInterval` compares the batch with the previous one — any value
(or tag, or text) that differs beyond float equality is a change. A change divides the interval
by ``speedup`` (down to ``min_interval_s``); a stable poll multiplies it by ``slowdown`` (up to
``max_interval_s``); a poll with no good point leaves it alone (an unreachable device is neither
changing nor stable). When the interval changes the grid is re-anchored at the slot of the poll
that caused it: the next slots are ``that slot + k * new interval`` (the first one not in the
past), so the schedule still never drifts between changes and a change never moves a poll
earlier than its new grid allows. Slots of the new grid that fell while that poll was in flight
are not counted as skipped.

Live polling cannot replay, so ``snapshot()`` is ``None``. Set ``stop_event`` to drain: the
partitions stop starting polls, return what is in flight, then raise ``StopIteration``. A hot
config change (:meth:`PollingPartition.request_change`) is applied by the loop at the device's next
slot; its item is queued ahead of the first batch polled with the new plan.

A protocol supplies a client (``poll()`` never raises: failures are bad-quality points) and a
:class:`PollingSource` subclass that lists its devices and builds their clients.

A partition built on its own (not by a source) gets a loop thread of its own.

Writes go through the same client and event loop as the polls: :meth:`PollingPartition.submit_write`
(thread-safe) returns a :class:`concurrent.futures.Future` that resolves to ``None`` or raises
:class:`WriteRejected` (refused before any I/O: unknown or read-only tag, value does not fit) or
:class:`WriteFailed` (the device or the link failed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import heapq
import logging
import math
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import Gauge

from connectors.nap import WorkerNap, env_milliseconds, max_wait_from_env, worker_nap
from connectors.resilience import SKIPPED_POLLS
from core.batch import PointBatch
from core.quality import Quality
from core.timerslack import restore_thread

log = logging.getLogger(__name__)

POLL_INTERVAL = Gauge(
    "nexus_poll_interval_seconds", "Current poll interval of a device (moves with adaptive polling)",
    ["protocol", "device"],
)  # fmt: skip

WriteValue = float | int | bool | str

POLL_WINDOW_MS = 100
"""A slot's poll starts at the end of the window of the loop's clock it falls in: 100 ms, at most a
tenth of the device's interval (``NEXUS_POLL_WINDOW_MS``; 0: each poll starts at its slot). The slots
of many devices in one window start from one wake-up of the loop, their responses come back together
and reach the worker and the sinks as one hand-over. Chosen by measurement (BENCHMARKS.md, "The
merged tree"): UNS-only flow, 100 ms against 20 ms windows, 0.62-0.69x the CPU per point at 100
devices x 100 tags at 1 s, 0.90x at 500. The price: a poll starts up to the window after its slot
(its points keep the time they were read; the grid itself never drifts)."""
ENV_POLL_WINDOW = "NEXUS_POLL_WINDOW_MS"


def poll_window_from_env(env: dict[str, str] | None = None) -> float:
    """``NEXUS_POLL_WINDOW_MS`` in seconds.

    >>> poll_window_from_env({}), poll_window_from_env({"NEXUS_POLL_WINDOW_MS": "20"})
    (0.1, 0.02)
    >>> poll_window_from_env({"NEXUS_POLL_WINDOW_MS": "1.5"})
    Traceback (most recent call last):
    ...
    ValueError: NEXUS_POLL_WINDOW_MS must be a whole number of milliseconds in 0..1000, got '1.5'
    """
    return env_milliseconds(ENV_POLL_WINDOW, POLL_WINDOW_MS, env)


class WriteRejected(ValueError):  # noqa: N818 - the name the connectors and routing share
    """A write refused before any I/O; ``reason`` says why (unknown tag, read-only, value does not fit)."""

    def __init__(self, device_id: str, tag_id: int | None = None, reason: str | None = None) -> None:
        if reason is None:  # WriteRejected("why"): a reason alone
            device_id, reason = "", device_id
        self.device_id = device_id
        self.tag_id = tag_id
        self.reason = reason
        where = f"write to device {device_id!r} tag {tag_id}" if device_id else "write"
        super().__init__(f"{where} rejected: {reason}")


class WriteFailed(Exception):  # noqa: N818 - the name the connectors and routing share
    """A write that went to the device (or tried to) and did not succeed.

    ``code`` is the device's error code (a Modbus exception code, an OPC UA status code, ...) when the
    device answered with an error, ``None`` for a transport failure, a timeout or an open breaker.
    """

    def __init__(
        self, device_id: str, tag_id: int | None = None, reason: str | None = None, code: int | None = None
    ) -> None:
        if reason is None:  # WriteFailed("why"): a reason alone
            device_id, reason = "", device_id
        self.device_id = device_id
        self.tag_id = tag_id
        self.reason = reason
        self.code = code
        where = f"write to device {device_id!r} tag {tag_id}" if device_id else "write"
        super().__init__(f"{where} failed: {reason}")


class DeviceClient(Protocol):
    """What a protocol's client offers the polling partition."""

    async def poll(self) -> PointBatch:
        """Read every tag once; failures come back as bad-quality points, never as exceptions."""
        ...

    async def write(self, tag_id: int, value: WriteValue) -> None:
        """Write one tag through the device's connection; raises WriteRejected or WriteFailed."""
        ...

    async def close(self) -> None: ...

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        """Every tag of the device with NaN and ``quality`` (for a poll that could not complete)."""
        ...

    @property
    def stats(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """A hot configuration change of one device, applied by its source partition between polls
    (a polled device) or between batches (a subscribed MQTT device).

    ``plan``: the protocol's new device plan (a polled device's, handed to ``client.reconfigure``,
    which keeps the connection when its endpoint did not change; for an MQTT device its
    subscriptions); ``device``: a polled device's new interval and adaptive settings; ``item``:
    emitted ahead of the first batch read with the new plan (a
    :class:`~core.device_config.DeviceConfig`); ``on_applied(version)`` is called once it is.
    """

    device_id: str
    version: int
    plan: Any
    item: Any
    device: PolledDevice | None = None
    on_applied: Callable[[int], None] | None = None


class ConfigRegistry(Protocol):
    """Where partitions announce that they take the hot config changes of their device (the
    process's config listener)."""

    def register(self, device_id: str, apply: Callable[[DeviceChange], None]) -> None: ...

    def unregister(self, device_id: str, apply: Callable[[DeviceChange], None] | None = None) -> None: ...


class WriteRegistry(Protocol):
    """Where partitions announce that this process can write to their device (the command router)."""

    def register(
        self, device_id: str, writer: Callable[[int, Any], concurrent.futures.Future[None]]
    ) -> None: ...

    def unregister(
        self, device_id: str, writer: Callable[[int, Any], concurrent.futures.Future[None]] | None = None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class AdaptivePolling:
    """Poll faster while values change, slower while they are stable, within the bounds.

    A change divides the interval by ``speedup``, a stable poll multiplies it by ``slowdown``.

    >>> AdaptivePolling(min_interval_s=2.0, max_interval_s=1.0)
    Traceback (most recent call last):
    ...
    ValueError: `min_interval_s` (2.0) must be <= `max_interval_s` (1.0)
    """

    min_interval_s: float
    max_interval_s: float
    speedup: float = 2.0
    slowdown: float = 1.5

    def __post_init__(self) -> None:
        if not self.min_interval_s > 0:
            raise ValueError(f"`min_interval_s` must be > 0, got {self.min_interval_s}")
        if not self.min_interval_s <= self.max_interval_s:
            raise ValueError(
                f"`min_interval_s` ({self.min_interval_s}) must be <= `max_interval_s` ({self.max_interval_s})"
            )
        if not self.speedup >= 1:
            raise ValueError(f"`speedup` must be >= 1, got {self.speedup}")
        if not self.slowdown >= 1:
            raise ValueError(f"`slowdown` must be >= 1, got {self.slowdown}")


class AdaptiveInterval:
    """The interval of one device under :class:`AdaptivePolling`: :meth:`observe` each poll's batch.

    >>> from core.batch import PointBatch
    >>> a = AdaptiveInterval(AdaptivePolling(0.25, 4.0), start_s=1.0)
    >>> [a.observe(PointBatch.from_values("d", [1], [v], ts_ns=0)) for v in (5.0, 5.0, 6.0, 7.0, 7.0)]
    [1.0, 1.5, 0.75, 0.375, 0.5625]
    """

    __slots__ = ("_previous", "interval_s", "settings")

    def __init__(self, settings: AdaptivePolling, start_s: float) -> None:
        self.settings = settings
        self.interval_s = min(max(start_s, settings.min_interval_s), settings.max_interval_s)
        self._previous: PointBatch | None = None

    def observe(self, batch: PointBatch) -> float:
        """The interval after ``batch`` (the first batch with a good point only sets the reference)."""
        if not (batch.quality == Quality.GOOD).any():
            return self.interval_s
        previous, self._previous = self._previous, batch
        if previous is None:
            return self.interval_s
        s = self.settings
        if changed(previous, batch):
            self.interval_s = max(s.min_interval_s, self.interval_s / s.speedup)
        else:
            self.interval_s = min(s.max_interval_s, self.interval_s * s.slowdown)
        return self.interval_s


def changed(a: PointBatch, b: PointBatch) -> bool:
    """Whether ``b`` holds other tags, values (NaN equals NaN) or texts than ``a``."""
    return not (
        np.array_equal(a.tag_ids, b.tag_ids)
        and np.array_equal(a.values, b.values, equal_nan=True)
        and dict(a.text or {}) == dict(b.text or {})
    )


@dataclass(frozen=True, slots=True)
class PolledDevice:
    """A device to poll: its id, poll interval and (for a source of mixed protocols) its protocol."""

    device_id: str
    poll_interval_s: float
    protocol: str | None = None
    """Protocol label of the device (partition key prefix, metrics); default: the source's."""
    adaptive: AdaptivePolling | None = None
    """Move the interval with the data (``poll_interval_s`` is where it starts); ``None``: fixed."""


def schedule_offset(device_id: str, interval_s: float) -> float:
    """A stable offset in ``[0, interval_s)`` for the device's poll grid.

    >>> schedule_offset("press-01", 1.0) == schedule_offset("press-01", 1.0)
    True
    >>> 0 <= schedule_offset("press-02", 5.0) < 5.0
    True
    """
    h = int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=8).digest(), "big")
    return (h % 1_000_000) / 1_000_000 * interval_s


NOTIFY_COALESCE_S = 0.005
"""How long a finished batch may wait for the other polls of its burst before the worker is woken."""

POLLS_PER_WINDOW = 32
"""With fewer devices than this per window, windows grow (:func:`window_quantum`). Chosen by
measurement: 32 against 16, UNS-only flow at 100 devices x 100 tags at 1 s (4 windows a second
instead of 7), 0.75-0.98x the CPU per point, median ~0.81 over 4 interleaved rounds (BENCHMARKS.md)."""
GROWN_WINDOW_MAX_S = 0.5
"""The longest a window grows to (and at most half the interval)."""


def window_quantum(interval: float, window_s: float, devices: int) -> float:
    """The window of the loop's clock a slot's poll waits for the end of: ``window_s``, at most a
    tenth of ``interval`` (0: no windows), and longer — up to half the interval and
    :data:`GROWN_WINDOW_MAX_S` — while a window would start fewer than :data:`POLLS_PER_WINDOW` of
    a group's ``devices`` polls: 10 devices at 1 s start in 2 wake-ups a second, not ~7 (measured:
    BENCHMARKS.md, issue 16). Always a whole fraction of the interval, so each device's polls keep
    one phase of it.

    >>> window_quantum(1.0, 0.1, 500), window_quantum(1.0, 0.1, 100), window_quantum(1.0, 0.1, 10)
    (0.1, 0.25, 0.5)
    >>> window_quantum(0.05, 0.02, 500), window_quantum(30.0, 0.1, 1), window_quantum(1.0, 0.0, 10)
    (0.005, 0.5, 0.0)
    """
    if window_s <= 0:
        return 0.0
    most = max(1, round(interval / min(window_s, interval / 10)))
    fewest = max(2, math.ceil(devices / POLLS_PER_WINDOW), math.ceil(interval / GROWN_WINDOW_MAX_S))
    return interval / min(most, fewest)


def slot_timer(loop_now: float, until_slot: float, quantum: float) -> float:
    """The loop time at which to start the poll of a slot ``until_slot`` seconds away: the end of
    its window of ``quantum`` seconds (:func:`window_quantum`; 0: the slot itself), never before the slot.

    >>> slot_timer(100.0, 0.003, 0.02), slot_timer(100.0, 0.013, 0.02), slot_timer(100.0, 0.02, 0.02)
    (100.02, 100.02, 100.02)
    >>> slot_timer(100.0, -0.5, 0.02)  # a slot already past: the current window
    100.0
    >>> slot_timer(100.0, 0.003, 0.0)  # no windows
    100.003
    """
    if quantum <= 0:
        return loop_now + max(0.0, until_slot)
    return math.ceil((loop_now + max(0.0, until_slot)) / quantum) * quantum


class PollSchedule:
    """Slots at ``origin + k * interval``; :meth:`take` says whether a slot is due and how many passed.

    >>> s = PollSchedule(origin=100.0, interval=1.0, now=100.2)
    >>> s.next_deadline
    101.0
    >>> s.take(100.5), s.take(101.0)
    (0, 1)
    >>> s.take(104.7), s.next_deadline  # slots 102, 103 and 104 have passed
    (3, 105.0)
    >>> s.retime(0.25, anchor=104.0, now=104.6)  # re-anchored at slot 104: 104.75, 105.0, ...
    >>> s.next_deadline, s.take(104.8), s.next_deadline
    (104.75, 1, 105.0)
    """

    __slots__ = ("interval", "next_deadline", "next_slot", "origin")

    def __init__(self, origin: float, interval: float, now: float) -> None:
        if not interval > 0:
            raise ValueError(f"`interval` must be > 0, got {interval}")
        self.origin = origin
        self.interval = interval
        self.next_slot = max(0, math.ceil((now - origin) / interval))
        self.next_deadline = origin + self.next_slot * interval

    def take(self, now: float) -> int:
        """The number of slots that have come since the last call (0: nothing due)."""
        if now < self.next_deadline:
            return 0
        latest = math.floor((now - self.origin) / self.interval)
        latest = max(latest, self.next_slot)  # float rounding at the boundary
        passed = latest - self.next_slot + 1
        self.next_slot = latest + 1
        self.next_deadline = self.origin + self.next_slot * self.interval
        return passed

    @property
    def last_slot(self) -> float:
        """The time of the latest slot :meth:`take` handed out (or the one before the first)."""
        return self.origin + (self.next_slot - 1) * self.interval

    def retime(self, interval: float, anchor: float, now: float) -> None:
        """Switch to ``interval`` on a grid through ``anchor`` (a past slot): the next deadline is
        the first ``anchor + k * interval`` (k >= 1) not before ``now``."""
        if not interval > 0:
            raise ValueError(f"`interval` must be > 0, got {interval}")
        self.origin = anchor
        self.interval = interval
        self.next_slot = max(1, math.ceil((now - anchor) / interval))
        self.next_deadline = anchor + self.next_slot * interval


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class _LoopThread:
    """An asyncio event loop on a daemon thread, shared by the partitions that :meth:`acquire` it.

    The first :meth:`acquire` starts the thread; the :meth:`release` of the last user stops the loop
    (cancelling what is still pending) and waits for the thread up to a deadline. A later
    :meth:`acquire` starts a new one. Thread-safe (Bytewax workers of a process may build partitions
    concurrently).
    """

    __slots__ = ("_lock", "_users", "loop", "name", "thread")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._users = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def acquire(self) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
        with self._lock:
            if self.loop is None or self.thread is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_run_loop, args=(loop,), name=self.name, daemon=True)
                thread.start()
                self.loop, self.thread = loop, thread
            self._users += 1
            return self.loop, self.thread

    def release(self, timeout_s: float) -> bool:
        """Drop one user; the last one stops the loop. False if the thread outlived ``timeout_s``."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return True
            loop, thread = self.loop, self.thread
            self.loop = self.thread = None
        if loop is None or thread is None:
            return True
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(max(0.0, timeout_s))
        return not thread.is_alive()


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """Counters of one device's partition."""

    device_id: str
    polls: int
    """Polls submitted."""
    completed: int
    """Poll results handed to the dataflow."""
    skipped_polls: int
    """Slots that came while the previous poll was still running (or while the worker was busy)."""
    failures: int
    """Polls with at least one tag not read."""
    client: Any
    interval_s: float = math.nan
    """The current poll interval (it moves with adaptive polling)."""


class PollGroup:
    """The partitions of one worker on one event loop, collected together: the ready queue, the
    polls in flight, the earliest poll deadline and the drain.

    The loop thread starts each poll from its own timer (:class:`PollingPartition`) and, when it
    finishes, appends the batch to the ready queue; the worker takes everything that is ready in
    one :meth:`next_batch` call, whatever the number of devices. :meth:`next_awake` says "now"
    only while the queue holds something; otherwise while a poll is in flight ``wake_slack_s``
    (how long a finished batch may wait for the worker when it does not nap), else the earliest
    deadline of the group's partitions plus that slack, at most ``idle_wake_s`` away (how soon a
    set ``stop_event`` is seen by an idle group). With napping on (:mod:`connectors.nap`) the group
    may be its worker's sleeper: it waits on the nap's condition, which the loop thread notifies at
    every finished poll, until data or the nap's cap (it need not wake for a slot: the loop starts
    the poll).

    The partitions' schedules start at the group's first :meth:`next_batch` (the worker runs), as
    polls started when the worker first asked before. A partition built alone has a group of its own; :meth:`PollingSource.build_parts` puts a
    worker's partitions in one (see :mod:`dataflows.routing`).
    """

    def __init__(
        self,
        stop_event: threading.Event | None,
        wake_slack_s: float,
        max_wait_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        idle_wake_s: float = 0.25,
    ) -> None:
        self._stop_event = stop_event
        self._slack = wake_slack_s
        self._idle = idle_wake_s
        self._clock = clock
        self._ready: deque[tuple[PollingPartition | None, Any]] = deque()
        """(partition, batch) for a finished poll, (None, item) for a config change's item."""
        self._lock = threading.Lock()
        """Makes "start a poll" (loop thread) and "drained" (worker) exclusive."""
        self._inflight = 0
        """Polls started and not finished (written by the loop thread only)."""
        self._deadlines: list[float] = []
        """Armed poll deadlines (a heap the loop thread keeps; entries of retimed slots linger until
        passed, which can only make the worker look earlier)."""
        self._stopped = False
        self._max_wait_s = max_wait_s
        self._nap: WorkerNap | None = None
        self._nap_looked_up = max_wait_s <= 0
        self._notify: Callable[[], None] | None = None
        self._deferred: asyncio.TimerHandle | None = None
        """A notify armed for a burst whose other polls are still running (loop thread)."""
        self._called_at = 0.0
        self.members = 0
        """Partitions that joined (sizes the poll windows: :func:`window_quantum`)."""
        self._starts: list[Callable[[], object]] | None = []
        """How to start each partition's schedule, run at the first :meth:`next_batch` (the worker
        is running); ``None`` once it ran."""

    def add(self, start: Callable[[], object]) -> None:
        """A partition joins: ``start()`` starts its schedule, once the worker runs."""
        self.members += 1
        if self._starts is None:
            start()
        else:
            self._starts.append(start)

    # -- the loop thread -------------------------------------------------------------------------

    def begin(self) -> bool:
        """A partition's slot came: may it start a poll (False once the group is draining)?"""
        with self._lock:
            if self._stopped or (self._stop_event is not None and self._stop_event.is_set()):
                return False
            self._inflight += 1
            return True

    def emit(self, item: Any) -> None:
        """Hand ``item`` (a config change's) to the worker ahead of what is finished after it."""
        self._ready.append((None, item))

    def finish(self, part: PollingPartition, batch: PointBatch) -> None:
        """A poll of ``part`` finished (queued first, then counted: the drain never misses it)."""
        self._ready.append((part, batch))
        self._inflight -= 1
        self._wake_worker()

    def _wake_worker(self) -> None:
        """Notify a napping worker once per burst: when the last poll in flight finishes, or
        :data:`NOTIFY_COALESCE_S` after the first of a burst whose others are still running (the
        polls of a window answer within a few ms; one wake-up takes them all)."""
        notify = self._notify
        if notify is None:
            return
        if self._inflight == 0:
            if self._deferred is not None:
                self._deferred.cancel()
                self._deferred = None
            notify()
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(NOTIFY_COALESCE_S, self._deferred_notify)

    def _deferred_notify(self) -> None:
        self._deferred = None
        if self._notify is not None:
            self._notify()

    def arm(self, at: float, now: float) -> None:
        """A partition's next slot is at ``at``; forget the deadlines that have passed."""
        heap = self._deadlines
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        heapq.heappush(heap, at)

    @property
    def stopping(self) -> bool:
        return self._stopped or (self._stop_event is not None and self._stop_event.is_set())

    # -- the worker thread -----------------------------------------------------------------------

    def next_batch(self) -> list[Any]:
        """Everything that is ready, in the order it came; ``StopIteration`` once drained."""
        nap = self._nap if self._nap_looked_up else self._attach_nap()
        self._called_at = self._clock()
        if nap is not None:  # the worker's epochs, by Bytewax's rule (connectors.nap)
            nap.saw_call(self, self._called_at)
        if self._starts is not None:
            starts, self._starts = self._starts, None
            for start in starts:
                start()
        out = self._take()
        if not out and self.stopping:
            with self._lock:
                if self._inflight == 0 and not self._ready:
                    self._stopped = True
            if self._stopped:
                if nap is not None:
                    nap.release(self)
                raise StopIteration
        if nap is not None:  # no due time: the loop starts the polls, a finished one notifies
            if out:
                nap.handed_over()
            elif nap.attach(self):
                nap.nap(self, self._clock())
                out = self._take()  # what woke it
        return out

    def _take(self) -> list[Any]:
        ready = self._ready
        out: list[Any] = []
        while ready:
            part, item = ready.popleft()
            if part is not None:
                part._completed += 1
                part._pending = False  # its next slot may start a poll
            out.append(item)
        return out

    def next_wake(self) -> float | None:
        """When the worker should call :meth:`next_batch` again (wall clock; ``None``: at once)."""
        if self._ready:
            return None
        now = self._clock()
        nap = self._nap
        if nap is not None:
            if nap.is_sleeper(self):
                # At once, its next call naps. Not "now": Bytewax would activate the source again only
                # after (now - the time it started this activation), i.e. after a nap's length of spinning.
                return self._called_at
            if nap.active:  # the sleeper paces the activations
                return now
        elif not self._nap_looked_up:
            return None  # attach to the worker's nap first
        if self._inflight or self.stopping:
            return now + self._slack
        due = self._earliest()
        if due is None:
            return now + self._idle
        return min(max(due, now) + self._slack, now + self._idle)

    def next_awake(self) -> datetime | None:
        wake = self.next_wake()
        return None if wake is None else datetime.fromtimestamp(wake, tz=UTC)

    def _earliest(self) -> float | None:
        try:
            return self._deadlines[0]
        except IndexError:
            return None

    def _attach_nap(self) -> WorkerNap | None:
        nap = self._nap = worker_nap(self._max_wait_s)
        self._nap_looked_up = True
        if nap is not None:
            self._notify = nap.notify  # called by the loop thread when a poll finishes
        return nap

    def release(self) -> None:
        """The group's partitions close: give up the worker's nap."""
        if self._nap is not None:
            self._nap.release(self)


class PollingPartition(StatefulSourcePartition[PointBatch, None]):
    """One device: its schedule, run by the event loop's own timers, and its client.

    At each slot the loop thread starts a poll unless the previous one is still running or its
    batch has not been taken by the worker yet (the slot is then skipped and counted); the finished
    batch goes to the partition's :class:`PollGroup`, whose ready queue the worker drains. The
    Bytewax calls (:meth:`next_batch`, :meth:`next_awake`) are the group's: a partition in a shared
    group hands over the whole group's batches.
    """

    def __init__(
        self,
        device: PolledDevice,
        client: DeviceClient,
        *,
        protocol: str,
        stop_event: threading.Event | None,
        wake_slack_s: float,
        close_timeout_s: float,
        clock: Callable[[], float] = time.time,
        loop_thread: _LoopThread | None = None,
        max_wait_s: float = 0.0,
        group: PollGroup | None = None,
        poll_window_s: float | None = None,
    ) -> None:
        """``loop_thread``: the event loop thread shared with other partitions (a source passes its
        own); ``None``: a loop thread for this partition alone. ``group``: the group it hands its
        batches to (``None``: one of its own, napping up to ``max_wait_s`` when > 0).
        ``poll_window_s``: see :data:`POLL_WINDOW_MS` (``None``: ``NEXUS_POLL_WINDOW_MS``).

        ``clock`` is the wall clock the poll grid is on; the loop's timer is armed for the time it
        says a slot is due (:meth:`reschedule` when it moved otherwise)."""
        self.device_id = device.device_id
        self.protocol = protocol
        self._stop_event = stop_event
        self._close_timeout_s = close_timeout_s
        self._clock = clock
        self._window_s = poll_window_from_env() if poll_window_s is None else poll_window_s
        interval = device.poll_interval_s
        now = clock()
        origin = math.floor(now / interval) * interval + schedule_offset(device.device_id, interval)
        self._schedule = PollSchedule(origin, interval, now)
        self._adaptive = AdaptiveInterval(device.adaptive, interval) if device.adaptive else None
        if self._adaptive is not None and self._adaptive.interval_s != interval:
            self._schedule.retime(self._adaptive.interval_s, self._schedule.last_slot, now)
        self._client = client
        self._group = group or PollGroup(stop_event, wake_slack_s, max_wait_s, clock)
        self._pending = False
        """A poll is running or its batch is not taken yet (set by the loop, cleared by the worker)."""
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight_slot = math.nan
        """The grid time of the slot the poll in flight was started for."""
        self._polls = self._completed = self._skipped = 0
        self._device = device
        self._change: DeviceChange | None = None
        """A hot config change waiting for the next poll boundary (set from the listener's thread)."""
        self._change_lock = threading.Lock()
        self._closed = False
        self.on_close: list[Callable[[], None]] = []
        """Called when the partition closes (e.g. to stop routing writes to it)."""
        self._m_skipped = SKIPPED_POLLS.labels(protocol, device.device_id)
        self._m_interval = POLL_INTERVAL.labels(protocol, device.device_id)
        self._m_interval.set(self._schedule.interval)
        self._loop_thread = loop_thread or _LoopThread(f"{protocol}:{device.device_id}")
        self._loop, self._thread = self._loop_thread.acquire()
        self._group.add(lambda: self._loop.call_soon_threadsafe(self._arm))

    @property
    def poll_group(self) -> PollGroup:
        """The group this partition hands its batches to."""
        return self._group

    # -- the Bytewax contract ------------------------------------------------------------------

    def next_batch(self) -> list[PointBatch]:
        return self._group.next_batch()

    def next_awake(self) -> datetime | None:
        return self._group.next_awake()

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._group.release()
        for callback in self.on_close:
            callback()
        deadline = time.monotonic() + self._close_timeout_s
        if self._thread.is_alive() and not self._loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                fut.result(max(0.0, deadline - time.monotonic()))
            except Exception:  # timeout or a closing error: the loop moves on anyway
                fut.cancel()
                log.warning("%s client did not close in time device=%s", self.protocol, self.device_id)
        if not self._loop_thread.release(deadline - time.monotonic()):
            log.warning("%s poll thread did not stop in time device=%s", self.protocol, self.device_id)

    async def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        await self._client.close()

    # -- the schedule, on the loop thread ------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._closed:
            return
        at, now = self._schedule.next_deadline, self._clock()
        self._group.arm(at, now)
        quantum = window_quantum(self._schedule.interval, self._window_s, self._group.members)
        when = slot_timer(self._loop.time(), at - now, quantum)
        self._timer = self._loop.call_at(when, self._on_slot)

    def _on_slot(self) -> None:
        self._timer = None
        group = self._group
        if self._closed or group.stopping:
            return  # draining: no more polls; the group returns what is in flight
        slots = self._schedule.take(self._clock())
        if slots:
            if not self._pending and group.begin():
                self._pending = True
                self._inflight_slot = self._schedule.last_slot
                change = self._take_change()
                if change is not None:
                    group.emit(change.item)  # ahead of the first batch polled with the new plan
                self._polls += 1
                self._task = self._loop.create_task(self._poll(change))
                slots -= 1
            if slots:
                self._skipped += slots
                self._m_skipped.inc(slots)
        self._arm()

    def reschedule(self) -> None:
        """Look at the schedule again now rather than at the armed timer (thread-safe): for a clock
        that moved other than the loop's timer expected (a stepped wall clock, a test's fake clock)."""

        def again() -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._on_slot()

        self._loop.call_soon_threadsafe(again)

    async def _poll(self, change: DeviceChange | None) -> None:
        try:
            if change is not None:
                await self._reconfigure(change)
            batch = await self._client.poll()
        except asyncio.CancelledError:
            raise  # closing
        except Exception:  # poll() never raises; still yield points
            log.exception("%s poll did not complete device=%s", self.protocol, self.device_id)
            batch = self._client.error_batch(Quality.COMM_ERROR, time.time_ns())
        if self._adaptive is not None:
            self._adapt(batch)
        self._group.finish(self, batch)

    # -- hot config changes ----------------------------------------------------------------------

    def request_change(self, change: DeviceChange) -> None:
        """Apply ``change`` at the next poll boundary (thread-safe; a newer request replaces an
        older one not yet applied, whose item is then never emitted)."""
        if change.device_id != self.device_id or change.device is None:
            raise ValueError(f"change for device {change.device_id!r} sent to {self.device_id!r}")
        with self._change_lock:
            if self._change is None or change.version >= self._change.version:
                self._change = change

    def _take_change(self) -> DeviceChange | None:
        if self._change is None:
            return None
        with self._change_lock:
            change, self._change = self._change, None
        if change is None:
            return None
        old, new = self._device, change.device
        assert new is not None  # checked by request_change
        self._device = new
        if (old.poll_interval_s, old.adaptive) != (new.poll_interval_s, new.adaptive):
            # The poll started now belongs to this slot; the next slots follow the new interval.
            self._adaptive = AdaptiveInterval(new.adaptive, new.poll_interval_s) if new.adaptive else None
            interval = self._adaptive.interval_s if self._adaptive is not None else new.poll_interval_s
            self._schedule.retime(interval, self._schedule.last_slot, self._clock())
            self._m_interval.set(interval)
        log.info(
            "%s device config applied device=%s version=%d interval_s=%g",
            self.protocol, self.device_id, change.version, self._schedule.interval,
        )  # fmt: skip
        if change.on_applied is not None:
            change.on_applied(change.version)
        return change

    async def _reconfigure(self, change: DeviceChange) -> None:
        reconfigure = getattr(self._client, "reconfigure", None)
        if reconfigure is not None:
            try:
                await reconfigure(change.plan)
            except Exception:  # the old plan stays; the poll still yields points
                log.exception("%s reconfigure failed device=%s", self.protocol, self.device_id)

    # -- writes --------------------------------------------------------------------------------

    def submit_write(self, tag_id: int, value: WriteValue) -> concurrent.futures.Future[None]:
        """Run ``client.write(tag_id, value)`` on this partition's event loop; callable from any thread.

        The future raises :class:`WriteRejected` / :class:`WriteFailed` from the client, or
        :class:`WriteFailed` when the partition is closed.
        """
        if self._closed or self._loop.is_closed():
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            fut.set_exception(WriteFailed(self.device_id, tag_id, "the device's partition is closed"))
            return fut
        return asyncio.run_coroutine_threadsafe(self._client.write(tag_id, value), self._loop)

    # -- helpers -------------------------------------------------------------------------------

    def _adapt(self, batch: PointBatch) -> None:
        assert self._adaptive is not None
        interval = self._adaptive.observe(batch)
        if interval != self._schedule.interval:
            self._schedule.retime(interval, self._inflight_slot, self._clock())
            self._m_interval.set(interval)
            self._arm()

    @property
    def stats(self) -> PartitionStats:
        client = self._client.stats
        return PartitionStats(
            device_id=self.device_id,
            polls=self._polls,
            completed=self._completed,
            skipped_polls=self._skipped,
            failures=client.failures,
            client=client,
            interval_s=self._schedule.interval,
        )


class PollingSource(FixedPartitionedSource[PointBatch, None]):
    """Polls each device on its own schedule; one partition per device, ``{protocol}:{device_id}``.

    ``wake_slack_s`` is how long a finished poll may wait for the worker while it does not nap
    (:class:`PollGroup`, :mod:`connectors.nap`); ``close_timeout_s`` bounds how long closing a partition
    may take; ``max_wait_s`` is how long a partition with nothing to hand over may wait for one
    (``None``: ``NEXUS_SOURCE_MAX_WAIT_MS``, default 0: never).
    """

    protocol: str = "device"

    def __init__(
        self,
        devices: Sequence[PolledDevice],
        *,
        stop_event: threading.Event | None = None,
        wake_slack_s: float = 0.002,
        close_timeout_s: float = 2.0,
        write_registry: WriteRegistry | None = None,
        config_registry: ConfigRegistry | None = None,
        max_wait_s: float | None = None,
    ) -> None:
        if not wake_slack_s > 0:
            raise ValueError(f"`wake_slack_s` must be > 0, got {wake_slack_s}")
        if not close_timeout_s > 0:
            raise ValueError(f"`close_timeout_s` must be > 0, got {close_timeout_s}")
        self.write_registry = write_registry
        """Told about each partition this process builds, so write commands reach its device."""
        self.config_registry = config_registry
        """Told about each partition this process builds, so hot config changes reach its device."""
        self._devices: dict[str, PolledDevice] = {}
        self._keys: dict[str, str] = {}
        for device in devices:
            if device.device_id in self._keys:
                raise ValueError(f"device id {device.device_id!r} appears twice in `devices`")
            key = f"{device.protocol or self.protocol}:{device.device_id}"
            self._keys[device.device_id] = key
            self._devices[key] = device
        self.stop_event = stop_event
        self.wake_slack_s = wake_slack_s
        self.max_wait_s = max_wait_from_env() if max_wait_s is None else max_wait_s
        """How long a partition may nap in ``next_batch`` (:mod:`connectors.nap`; 0: never);
        default ``NEXUS_SOURCE_MAX_WAIT_MS``."""
        self.close_timeout_s = close_timeout_s
        self._parts: dict[str, PollingPartition] = {}
        self._loop_thread: _LoopThread | None = None
        """The event loop thread the partitions built in this process share (made by ``build_part``)."""

    def set_adaptive(self, device_id: str, adaptive: AdaptivePolling | None) -> None:
        """Turn adaptive polling on (or off, with ``None``) for a device, before its partition is built."""
        key = self._keys.get(device_id)
        if key is None:
            raise KeyError(f"unknown device {device_id!r}; have {sorted(self._keys)}")
        if key in self._parts:
            raise RuntimeError(f"device {device_id!r}: its partition is already built")
        self._devices[key] = replace(self._devices[key], adaptive=adaptive)

    def part_key(self, device_id: str) -> str:
        return self._keys.get(device_id, f"{self.protocol}:{device_id}")

    @abstractmethod
    def make_client(self, device_id: str) -> DeviceClient:
        """A new client for the device (called once per partition, in the worker that owns it)."""

    def list_parts(self) -> list[str]:
        return list(self._devices)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> PollingPartition:
        return self._build(for_part, None)

    def build_parts(self, step_id: str, for_parts: Sequence[str]) -> dict[str, PollingPartition]:
        """The partitions ``for_parts``, built for one worker that drives them together: they share
        one :class:`PollGroup` (one ready queue), so any one's :meth:`~PollingPartition.next_batch`
        returns every finished poll of them all."""
        group = PollGroup(self.stop_event, self.wake_slack_s, self.max_wait_s)
        return {key: self._build(key, group) for key in for_parts}

    def _build(self, for_part: str, group: PollGroup | None) -> PollingPartition:
        restore_thread()  # (a worker thread of a cluster: see core.timerslack)
        device = self._devices[for_part]
        if self._loop_thread is None:
            self._loop_thread = _LoopThread(f"{self.protocol}:poll-loop")
        part = PollingPartition(
            device,
            self.make_client(device.device_id),
            protocol=device.protocol or self.protocol,
            stop_event=self.stop_event,
            wake_slack_s=self.wake_slack_s,
            close_timeout_s=self.close_timeout_s,
            loop_thread=self._loop_thread,
            max_wait_s=self.max_wait_s,
            group=group,
        )
        self._parts[for_part] = part
        if self.write_registry is not None:
            registry, writer = self.write_registry, part.submit_write
            registry.register(device.device_id, writer)
            part.on_close.append(lambda: registry.unregister(device.device_id, writer))
        if self.config_registry is not None:
            configs, apply = self.config_registry, part.request_change
            configs.register(device.device_id, apply)
            part.on_close.append(lambda: configs.unregister(device.device_id, apply))
        return part

    def partition(self, device_id: str) -> PollingPartition | None:
        """The device's partition if this process built it (writes go through it), else ``None``."""
        return self._parts.get(self.part_key(device_id))

    def submit_write(self, device_id: str, tag_id: int, value: WriteValue) -> concurrent.futures.Future[None]:
        """:meth:`PollingPartition.submit_write` on the device's partition (thread-safe).

        A device this process does not poll gets a future failed with :class:`WriteRejected`.
        """
        part = self.partition(device_id)
        if part is None:
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            fut.set_exception(WriteRejected(device_id, tag_id, "no such device in this process"))
            return fut
        return part.submit_write(tag_id, value)

    def stats(self) -> dict[str, PartitionStats]:
        """Counters of the partitions this process built, by device id."""
        return {p.device_id: p.stats for p in list(self._parts.values())}
