"""Connection behaviour shared by every protocol: backoff with jitter, a circuit breaker, metrics.

Pure logic with an injected clock (seconds, monotonic), so it is tested without waiting:

>>> b = Backoff(initial_s=1.0, max_s=8.0, jitter=0.0)
>>> [b.next_delay() for _ in range(5)]
[1.0, 2.0, 4.0, 8.0, 8.0]
>>> b.reset(); b.next_delay()
1.0

>>> t = [0.0]
>>> cb = CircuitBreaker(failure_threshold=2, reset_timeout_s=10.0, clock=lambda: t[0])
>>> cb.record_failure(); cb.state
'closed'
>>> cb.record_failure(); cb.state, cb.allow()
('open', False)
>>> t[0] = 10.0; cb.allow(), cb.state
(True, 'half_open')
>>> cb.record_success(); cb.state
'closed'
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

BreakerState = Literal["closed", "open", "half_open"]
BREAKER_STATE_VALUE: dict[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}


class Backoff:
    """Exponential backoff with full jitter in ``[delay * (1 - jitter), delay]``."""

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s <= 0:
            raise ValueError(f"`initial_s` must be > 0, got {initial_s}")
        if max_s < initial_s:
            raise ValueError(f"`max_s` must be >= initial_s ({initial_s}), got {max_s}")
        if not 0 <= jitter < 1:
            raise ValueError(f"`jitter` must be in [0, 1), got {jitter}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * self.factor**self._attempt)
        self._attempt += 1
        if self.jitter:
            delay *= 1.0 - self.jitter * self._rng.random()
        return delay

    def reset(self) -> None:
        self._attempt = 0


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_timeout_s`` one
    probe is let through (half-open): success closes it, failure opens it again."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"`failure_threshold` must be >= 1, got {failure_threshold}")
        if reset_timeout_s <= 0:
            raise ValueError(f"`reset_timeout_s` must be > 0, got {reset_timeout_s}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.times_opened = 0

    def allow(self) -> bool:
        """May a request go to the device now?"""
        if self.state == "open" and self._clock() - self.opened_at >= self.reset_timeout_s:
            self.state = "half_open"
        return self.state != "open"

    def record_success(self) -> None:
        self.failures = 0
        self.state = "closed"

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            if self.state != "open":
                self.times_opened += 1
            self.state = "open"
            self.opened_at = self._clock()


# Process-wide Prometheus metrics, labelled by protocol and device: one vocabulary for every polled
# protocol (Modbus, OPC UA, S7), recorded through DeviceMetrics below. prometheus_client keeps one
# registry per process, which is what a Bytewax process exports on /metrics.
POLL_RESULTS = ("ok", "bad_points", "comm_error", "breaker_open")
"""``result`` of ``nexus_device_polls``."""
WRITE_RESULTS = ("ok", "rejected", "failed")
"""``result`` of ``nexus_device_writes``."""
REQUEST_ERROR_KINDS = ("comm", "device")
"""``kind`` of ``nexus_device_request_errors``."""
PollResult = Literal["ok", "bad_points", "comm_error", "breaker_open"]
WriteResult = Literal["ok", "rejected", "failed"]

POLL_LATENCY = Histogram(
    "nexus_device_poll_seconds",
    "Time to poll a device once",
    ["protocol", "device"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POLLS = Counter(
    "nexus_device_polls",
    "Device polls by result: ok (every point good), bad_points (the device answered, some points bad), "
    "comm_error (transport failure, timeout, not connected or waiting to reconnect) or breaker_open "
    "(answered without I/O while the breaker is open)",
    ["protocol", "device", "result"],
)
SKIPPED_POLLS = Counter(
    "nexus_device_skipped_polls",
    "Polls skipped because the previous one was still running",
    ["protocol", "device"],
)
BREAKER_STATE = Gauge(
    "nexus_device_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ["protocol", "device"],
)
RECONNECTS = Counter(
    "nexus_device_reconnects",
    "Connections to a device re-established after a loss",
    ["protocol", "device"],
)
REQUEST_ERRORS = Counter(
    "nexus_device_request_errors",
    "Device requests that failed, by kind: comm (transport, timeout, not attempted) or device "
    "(an error the device reported for a request or one of its items)",
    ["protocol", "device", "kind"],
)
WRITES = Counter(
    "nexus_device_writes",
    "Writes to a device by result: ok, rejected (refused before any I/O) or failed",
    ["protocol", "device", "result"],
)


def poll_result(*, bad_points: bool, comm_error: bool, breaker_open: bool) -> PollResult:
    """The ``result`` label of one poll; the most serious condition wins.

    >>> poll_result(bad_points=True, comm_error=True, breaker_open=False)
    'comm_error'
    """
    if breaker_open:
        return "breaker_open"
    if comm_error:
        return "comm_error"
    return "bad_points" if bad_points else "ok"


class DeviceMetrics:
    """The Prometheus series of one device, with the same names, labels and label values for every
    protocol. Every ``result``/``kind`` series exists from the start (at 0), so a dashboard or an
    alert sees ``comm_error`` before the first one happens."""

    def __init__(self, protocol: str, device_id: str) -> None:
        self.latency = POLL_LATENCY.labels(protocol, device_id)
        self._polls = {r: POLLS.labels(protocol, device_id, r) for r in POLL_RESULTS}
        self._writes = {r: WRITES.labels(protocol, device_id, r) for r in WRITE_RESULTS}
        self._errors = {k: REQUEST_ERRORS.labels(protocol, device_id, k) for k in REQUEST_ERROR_KINDS}
        self._reconnects = RECONNECTS.labels(protocol, device_id)
        self._breaker = BREAKER_STATE.labels(protocol, device_id)
        self._breaker.set(0)

    def poll(self, result: PollResult, latency_s: float, breaker: BreakerState) -> None:
        self._polls[result].inc()
        self.latency.observe(latency_s)
        self._breaker.set(BREAKER_STATE_VALUE[breaker])

    def breaker(self, state: BreakerState) -> None:
        self._breaker.set(BREAKER_STATE_VALUE[state])

    def write(self, result: WriteResult) -> None:
        self._writes[result].inc()

    def request_errors(self, kind: Literal["comm", "device"], n: int = 1) -> None:
        if n:
            self._errors[kind].inc(n)

    def reconnect(self) -> None:
        self._reconnects.inc()
