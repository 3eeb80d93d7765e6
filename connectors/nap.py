"""Let a Bytewax worker thread sleep while its sources have nothing to hand over.

Bytewax 0.21's worker loop is ``step_or_park(Some(1 ms))`` plus a signal check under the GIL each
round (Rust, ``src/worker.rs``, ``src/run.rs``): a worker whose partitions wake later spins about a
thousand times a second — 0.016 cores for a flow with nothing to do, more than the whole budget of a
10-device box (issue 16). It only spins while Python returns to it. So one source partition per
worker thread, the *sleeper*, ends a ``next_batch`` that found nothing by waiting on a condition
(the GIL released) until:

- a source of this worker has something: a poll finished, an MQTT message arrived (:meth:`notify`,
  from any thread);
- the earliest time a partition of this worker said it must run comes (:meth:`set_due`: a poll slot);
- ``max_wait_s`` passes (``NEXUS_SOURCE_MAX_WAIT_MS``, default 20; 0: off).

Data is handed over the moment it arrives, so source latency does not grow. What waits up to
``max_wait_s`` is other work of the same worker that no source announces: window and other
operator timers, items exchanged from other workers of a cluster, and the drain (a set
``stop_event`` is seen at the next wake-up). The sleeper naps only after ``quiet_calls`` calls in a
row with nothing handed over by any partition of the worker: each call is one worker step, so a
batch just handed over gets that many steps to travel downstream before the worker sleeps.

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
import threading
import time
from collections.abc import Callable

DEFAULT_MAX_WAIT_MS = 20
"""On by default, chosen by measurement on the production source path (BENCHMARKS.md, "The merged
tree": one ready queue per worker, polls started from the loop's timer windows): the UNS-only flow
at 0.74x the CPU per point at 10 devices x 100 tags at 1 s, 0.88x at 100, 1.0-1.17x at 500 (the worker
is rarely idle there). Off (0) it was, while polls were submitted by the worker: 1.6x at 100 devices.
"""
ENV_MAX_WAIT = "NEXUS_SOURCE_MAX_WAIT_MS"
STALE_S = 1.0
"""A sleeper not seen for this long (its flow ended without closing it) gives up its role."""


class WorkerNap:
    """The sleeper role, the due times and the wake-up condition of one worker thread.

    :meth:`notify` is thread-safe; everything else is called from the worker thread.
    """

    def __init__(
        self, max_wait_s: float, quiet_calls: int = 3, clock: Callable[[], float] = time.time
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
        if self._sleeper is owner:
            self._sleeper = None

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
        now = self._clock() if now is None else now
        until = now + self.max_wait_s
        due = self.earliest_due()
        if due is not None and due < until:
            until = due
        with self._cond:
            if self._seq == self._seen_seq and until > now:
                self.naps += 1
                self._cond.wait(until - now)
            self._seen_seq = self._seq
        self._last_seen = time.monotonic()


_naps: dict[int, WorkerNap] = {}
_naps_lock = threading.Lock()


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
    return nap
