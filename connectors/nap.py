"""Let a Bytewax worker thread sleep while its sources have nothing to hand over.

Bytewax 0.21's worker loop is ``step_or_park(Some(1 ms))`` plus a signal check under the GIL each
round (Rust, ``src/worker.rs``, ``src/run.rs``): a worker whose partitions wake later spins about a
thousand times a second — 0.016 cores for a flow with nothing to do, more than the whole budget of a
10-device box (issue 16). It only spins while Python returns to it. So one source partition per
worker thread, the *sleeper*, ends a ``next_batch`` that found nothing by waiting on a condition
(the GIL released) until:

- a source of this worker has something: a poll finished, an MQTT message arrived (:meth:`notify`,
  from any thread);
- the earliest time something of this worker said it must run comes (:meth:`set_due`; an operator's
  timer announces itself through :mod:`core.wakeups`: a window's bucket closing);
- the cap: ``max_wait_s`` (``NEXUS_SOURCE_MAX_WAIT_MS``, default 20; 0: off) while the worker has
  peers that may send it items, :data:`ALONE_MAX_WAIT_S` for the only worker of a flow and for the
  workers of a flow whose only input is worker-local (:func:`set_worker_count`).

Data is handed over the moment it arrives, so source latency does not grow. What waits up to the
cap is work of the worker that nothing announces: items and progress exchanged with other workers of
a cluster (hence the short cap there), and what a step other than ours might schedule. The only
worker of a flow has none of that — its sources notify, its operators' timers announce themselves,
the stop handlers wake every nap (:func:`wake_all`) — so its cap is only a safety net: at 10 devices
the 20 ms cap cost ~50 wake-ups a second of ~230 us each, most of the flow's CPU (BENCHMARKS.md).
Nor do the workers of a flow that polls devices only (each polls the devices whose state it holds,
:class:`dataflows.routing.WorkerLocalSource`): only their peers' progress comes unannounced. But
that progress paces Bytewax's input: after a worker's input moves to a new epoch it reads again only
once every worker has finished the previous one, re-activating itself without parking meanwhile
(``src/inputs.rs``). A worker napping past its own epoch boundary advances late, and the worker
ahead spins through the gap (2 processes x 5 devices: 0.05-0.19 cores, in 5 of 5 runs with a 1 s
cap; BENCHMARKS.md). So every nap ends at the worker's next epoch boundary as Bytewax's rule puts it
(:meth:`WorkerNap.saw_call`), and the activation that advances the epoch does not nap. A
stop event set by other code is seen within the cap. The sleeper naps only after ``quiet_calls`` calls in a
row with nothing handed over by any partition of the worker: each call is one worker step, so a
batch just handed over gets that many steps to travel downstream before the worker sleeps. A due
time is a one-shot request: reached, the sleeper returns at once so that the step runs, and drops it
(its owner announces its next one when it runs); the naps just after are capped at ``max_wait_s``, in
case the step's own clock found it not quite due yet.

While a worker has a sleeper, partitions that wait for an event (a poll in flight, an MQTT
subscription) ask to be called at every activation (``next_awake`` = now): the sleeper paces the
activations, and an announced event is picked up at the next one. A worker's polled devices are one
owner (their :class:`connectors.polling.PollGroup`, one ready queue): it needs no due times, the
event loop starts the polls and notifies at each finished one. Partitions are attached to the
nap of the thread that calls their ``next_batch`` (:func:`worker_nap`), so a source's partitions
on two workers of one process sleep on two naps.

>>> nap = WorkerNap(max_wait_s=0.02, quiet_calls=0)
>>> a, b = object(), object()
>>> nap.attach(a), nap.attach(b), nap.active
(True, False, True)
>>> nap.set_due(b, 5.0); nap.earliest_due()
5.0
>>> nap.release(a); nap.active
False
"""

from __future__ import annotations

import heapq
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from core import wakeups
from core.timerslack import run_option

DEFAULT_MAX_WAIT_MS = 20
"""On by default, chosen by measurement on the production source path (BENCHMARKS.md, "The merged
tree": one ready queue per worker, polls started from the loop's timer windows): the UNS-only flow
at 0.74x the CPU per point at 10 devices x 100 tags at 1 s, 0.88x at 100, 1.0-1.17x at 500 (the worker
is rarely idle there). Off (0) it was, while polls were submitted by the worker: 1.6x at 100 devices.
"""
ENV_MAX_WAIT = "NEXUS_SOURCE_MAX_WAIT_MS"
ALONE_MAX_WAIT_S = 1.0
"""The cap of the only worker of a flow, whose every reason to wake is announced (a safety net)."""
STALE_S = 2 * ALONE_MAX_WAIT_S + 1.0
"""A sleeper not seen for this long (its flow ended without closing it) gives up its role (longer
than any nap)."""


class WorkerNap:
    """The sleeper role, the due times and the wake-up condition of one worker thread.

    :meth:`notify` is thread-safe; everything else is called from the worker thread.
    """

    def __init__(
        self,
        max_wait_s: float,
        quiet_calls: int = 3,
        clock: Callable[[], float] = time.time,
        epoch_s: float | None = None,
    ) -> None:
        if not max_wait_s > 0:
            raise ValueError(f"`max_wait_s` must be > 0, got {max_wait_s}")
        if quiet_calls < 0:
            raise ValueError(f"`quiet_calls` must be >= 0, got {quiet_calls}")
        self.max_wait_s = max_wait_s
        self.quiet_calls = quiet_calls
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._seq = 0
        """Events announced by :meth:`notify` (under ``_cond``)."""
        self._seen_seq = 0
        self._handed = self._handed_seen = 0
        self._quiet = 0
        self._sleeper: object | None = None
        self._last_seen = 0.0
        self._due: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self.naps = 0
        """Waits that went to sleep (a test and benchmark figure)."""
        self._short_until = 0.0
        """Until then naps last at most ``max_wait_s``: a due time was just reached."""
        self.alone = False
        """The worker has no peers (:func:`set_worker_count`): nothing unannounced can come."""
        self.epoch_s = epoch_interval_s() if epoch_s is None else epoch_s
        """Bytewax's epoch interval for this run (:func:`epoch_interval_s`)."""
        self._epoch_started: float | None = None
        """When the worker's input started its epoch, by Bytewax's rule (:meth:`saw_call`)."""
        self._advancing = False
        """The current activation advances the epoch after ``next_batch``: it must not nap."""

    # -- any thread ----------------------------------------------------------------------------

    def notify(self) -> None:
        """Something for a partition of this worker arrived: wake the sleeper."""
        with self._cond:
            self._seq += 1
            self._cond.notify()

    # -- the worker thread ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a live sleeper paces this worker's activations."""
        return self._sleeper is not None and time.monotonic() - self._last_seen < STALE_S

    def attach(self, owner: object) -> bool:
        """Make ``owner`` the sleeper if there is none (or it went stale); whether ``owner`` is it."""
        if self._sleeper is owner:
            self._last_seen = time.monotonic()
            return True
        if self._sleeper is None or not self.active:
            self._sleeper = owner
            self._last_seen = time.monotonic()
            self._quiet = 0
            return True
        return False

    def is_sleeper(self, owner: object) -> bool:
        return self._sleeper is owner

    def release(self, owner: object) -> None:
        """``owner`` closes or stops: drop its due time and, if it is the sleeper, the role."""
        self._due.pop(id(owner), None)
        if self._sleeper is owner:  # its flow ends: the next flow of this thread says its workers again
            self._sleeper = None
            self.alone = False
            _alone.pop(threading.get_ident(), None)

    def set_due(self, owner: object, at: float | None) -> None:
        """``owner`` must run at wall-clock time ``at`` (``None``: it waits for an event instead)."""
        key = id(owner)
        if at is None:
            self._due.pop(key, None)
        elif self._due.get(key) != at:
            self._due[key] = at
            heapq.heappush(self._heap, (at, key))

    def earliest_due(self) -> float | None:
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # superseded or released
        return heap[0][0] if heap else None

    def handed_over(self) -> None:
        """A partition of this worker returned items: the sleeper lets them travel downstream first."""
        self._handed += 1

    def saw_call(self, owner: object, now: float) -> None:
        """``owner`` (the sleeper's partition) was called at ``now``: follow the worker's epochs.

        Bytewax's input starts its first epoch when it is built and a new one at the first activation
        at least ``epoch_s`` after the last start, after that activation's ``next_batch`` (with the
        time the activation began). So the call that comes ``epoch_s`` after the last start belongs
        to the advancing activation, which must return at once: a nap in it would hold the advance
        back, and the peers' inputs with it (module doc).

        >>> nap = WorkerNap(max_wait_s=0.02, quiet_calls=0, epoch_s=10.0); nap.alone = True
        >>> nap.attach("p"), nap.saw_call("p", 100.0), nap.boundary()
        (True, None, 110.0)
        >>> nap.saw_call("p", 109.0), nap.boundary(), nap.saw_call("p", 110.2), nap.boundary()
        (None, 110.0, None, 120.2)
        """
        if self._sleeper is not owner:
            return
        self._advancing = False  # a call that returned items ended the advancing activation
        if self._epoch_started is None:
            self._epoch_started = now
        elif now - self._epoch_started >= self.epoch_s:
            self._epoch_started = now
            self._advancing = True

    def boundary(self) -> float | None:
        """When the worker's input moves to its next epoch (``None``: not called yet)."""
        return None if self._epoch_started is None else self._epoch_started + self.epoch_s

    def nap(self, owner: object, now: float | None = None) -> None:
        """Called by a partition whose ``next_batch`` returns nothing; only the sleeper waits.

        ``now``: the wall-clock time on the clock the due times were given in (default ``clock()``).
        """
        if self._sleeper is not owner:
            return
        self._last_seen = time.monotonic()
        if self._handed != self._handed_seen:
            self._handed_seen = self._handed
            self._quiet = 0
        if self._quiet < self.quiet_calls:
            self._quiet += 1
            return
        if self._advancing:  # this activation moves the input's epoch on once it returns
            self._advancing = False
            return
        now = self._clock() if now is None else now
        until = self.nap_until(now)
        if until is None:
            return
        with self._cond:
            if self._seq == self._seen_seq and until > now:
                self.naps += 1
                self._cond.wait(until - now)
            self._seen_seq = self._seq
        self._last_seen = time.monotonic()

    def nap_until(self, now: float) -> float | None:
        """:meth:`wake_time`, ended just after the worker's next epoch boundary: the activation
        after it advances the epoch (:meth:`saw_call`).

        >>> nap = WorkerNap(max_wait_s=0.02, epoch_s=10.0); nap.alone = True
        >>> nap.attach("p"), nap.saw_call("p", 100.0), nap.nap_until(100.5), nap.nap_until(109.5)
        (True, None, 101.5, 110.001)
        """
        until = self.wake_time(now)
        boundary = self.boundary()
        if until is None or boundary is None:
            return until
        return min(until, boundary + EPOCH_MARGIN_S)

    def wake_time(self, now: float) -> float | None:
        """Until when the sleeper may nap at ``now``: the earliest due time or the cap; ``None``: not
        at all, a due time was reached (dropped: its step runs now; naps are short for a moment in
        case the step's own clock finds it not quite due yet).

        >>> nap = WorkerNap(max_wait_s=0.02); nap.alone = True
        >>> nap.wake_time(100.0), nap.set_due("window", 100.5), nap.wake_time(100.0)
        (101.0, None, 100.5)
        >>> nap.wake_time(100.5), nap.earliest_due(), nap.wake_time(100.5)
        (None, None, 100.52)
        """
        due = self.earliest_due()
        if due is not None and due <= now:
            self._drop_reached(now)
            self._short_until = now + 2 * self.max_wait_s
            return None
        until = now + (self.max_wait_s if now < self._short_until else self.cap_s)
        return due if due is not None and due < until else until

    @property
    def cap_s(self) -> float:
        """The longest nap: ``max_wait_s``, or :data:`ALONE_MAX_WAIT_S` for a worker without peers."""
        return max(self.max_wait_s, ALONE_MAX_WAIT_S) if self.alone else self.max_wait_s

    def _drop_reached(self, now: float) -> None:
        heap, due = self._heap, self._due
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if due.get(key) == at:
                del due[key]


_naps: dict[int, WorkerNap] = {}
_naps_lock = threading.Lock()
_alone: dict[int, bool] = {}

DEFAULT_EPOCH_S = 10.0
"""Bytewax's epoch interval without recovery (``bytewax.run``)."""
EPOCH_MARGIN_S = 0.001
"""A nap ends this long after the predicted epoch boundary, so the next activation is past it."""


def epoch_interval_s(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> float:
    """The epoch interval ``python -m bytewax.run`` gives this process: ``-s`` /
    ``--snapshot-interval`` (or ``BYTEWAX_SNAPSHOT_INTERVAL``), else :data:`DEFAULT_EPOCH_S`.

    >>> epoch_interval_s(["bytewax.run", "f:f"], {}), epoch_interval_s(["x", "f:f", "-s", "5"], {})
    (10.0, 5.0)
    >>> epoch_interval_s(["x", "--snapshot-interval=2.5"], {}), epoch_interval_s(["x"], {"BYTEWAX_SNAPSHOT_INTERVAL": "30"})
    (2.5, 30.0)
    """
    argv = sys.argv if argv is None else argv
    env = os.environ if env is None else env
    raw = run_option("-s", "--snapshot-interval", "BYTEWAX_SNAPSHOT_INTERVAL", argv, env)
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_EPOCH_S
    return value if value > 0 else DEFAULT_EPOCH_S


"""Per worker thread: whether its flow has a single worker (:func:`set_worker_count`)."""


def max_wait_from_env(env: dict[str, str] | None = None) -> float:
    """``NEXUS_SOURCE_MAX_WAIT_MS`` in seconds (0: no napping).

    >>> max_wait_from_env({}), max_wait_from_env({"NEXUS_SOURCE_MAX_WAIT_MS": "0"})
    (0.02, 0.0)
    >>> max_wait_from_env({"NEXUS_SOURCE_MAX_WAIT_MS": "20"})
    0.02
    >>> max_wait_from_env({"NEXUS_SOURCE_MAX_WAIT_MS": "-1"})
    Traceback (most recent call last):
    ...
    ValueError: NEXUS_SOURCE_MAX_WAIT_MS must be a whole number of milliseconds in 0..1000, got '-1'
    """
    return env_milliseconds(ENV_MAX_WAIT, DEFAULT_MAX_WAIT_MS, env)


def env_milliseconds(name: str, default_ms: int, env: dict[str, str] | None = None) -> float:
    """The environment variable ``name``, a whole number of milliseconds in 0..1000, in seconds
    (unset or empty: ``default_ms``); anything else is an error naming the variable."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default_ms / 1000
    if not raw.isdigit() or int(raw) > 1000:
        raise ValueError(f"{name} must be a whole number of milliseconds in 0..1000, got {raw!r}")
    return int(raw) / 1000


def set_worker_count(count: int, items_from_peers: bool = True) -> None:
    """The calling worker thread's flow has ``count`` workers (a source learns it when Bytewax builds
    it: :class:`dataflows.routing.WorkerLocalSource`); with 1, or when its peers send it no items
    (``items_from_peers`` false: every input of the flow is worker-local and every keyed step keyed
    as the input is routed; the peers' progress alone comes unannounced, and the nap ends at the
    worker's epoch boundaries for it), its nap may last up to :data:`ALONE_MAX_WAIT_S`. Unknown (never
    called), a worker is assumed to get items from peers."""
    alone = count == 1 or not items_from_peers
    _alone[threading.get_ident()] = alone
    nap = _naps.get(threading.get_ident())
    if nap is not None:
        nap.alone = alone


def forget_worker_count() -> None:
    """The calling worker thread's flow ended (its source closed): the count it said no longer holds
    for the thread's next flow, which says its own (:func:`set_worker_count`)."""
    _alone.pop(threading.get_ident(), None)
    nap = _naps.get(threading.get_ident())
    if nap is not None:
        nap.alone = False


def announce_due(owner: object, at: datetime | None) -> None:
    """A step of the calling worker thread must run at ``at`` (its ``notify_at``; ``None``: no
    timer): the worker's nap ends by then. Operators call it through :mod:`core.wakeups`; nothing
    when the thread has no nap (napping off)."""
    nap = _naps.get(threading.get_ident())
    if nap is not None:
        nap.set_due(owner, None if at is None else at.timestamp())


wakeups.listen(announce_due)


def wake_all() -> None:
    """Wake every worker's nap now (from any thread, a signal handler included): a stop event was set."""
    for nap in list(_naps.values()):
        nap.notify()


def worker_nap(max_wait_s: float) -> WorkerNap | None:
    """The nap of the calling (worker) thread (``None`` when ``max_wait_s`` is 0: napping is off).

    Made on first use; a later call with another ``max_wait_s`` (a new flow in the same thread) sets it.
    """
    if max_wait_s <= 0:
        return None
    key = threading.get_ident()
    nap = _naps.get(key)
    if nap is None:
        with _naps_lock:
            nap = _naps.setdefault(key, WorkerNap(max_wait_s))
    nap.max_wait_s = max_wait_s
    nap.alone = _alone.get(key, False)
    return nap
