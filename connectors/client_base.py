"""What the polled device clients (Modbus, OPC UA, S7) share: their core counters and the
bookkeeping around them.

Each protocol's ``ClientStats`` extends :class:`DeviceClientStats` with its own counters, and each
client derives from :class:`DeviceClientBase`, which owns the stats snapshot (with the circuit
breaker's state), connect and poll accounting, "unreachable" logging and the all-NaN batch.
Connecting, backoff, metrics and the I/O itself stay in each client.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from connectors.polling import WriteFailed, WriteRejected
from connectors.resilience import BreakerState, CircuitBreaker, DeviceMetrics
from core.batch import PointBatch
from core.quality import QUALITY_DTYPE, Quality

__all__ = ["SOFT_CONNECTION_FIELDS", "DeviceClientBase", "DeviceClientStats", "check_plan", "same_link"]

SOFT_CONNECTION_FIELDS = frozenset({
    "timeout_s", "reconnect_min_s", "reconnect_max_s", "breaker_failures", "breaker_reset_s",
    "max_gap", "max_registers", "max_bits", "split_reprobe_s", "max_nodes_per_read",
    "max_buffered_changes",
})  # fmt: skip
"""Connection settings a client can take over without reconnecting (a hot config change): the
read plan's limits, timeouts and the retry policy. Any other difference is another link."""


def same_link(old: Any, new: Any) -> bool:
    """Whether two connection configs (pydantic models) reach the device the same way, so a client
    keeps its session when only the :data:`SOFT_CONNECTION_FIELDS` differ.

    >>> from connectors.modbus.config import ModbusConnection
    >>> same_link(ModbusConnection(host="a", timeout_s=1), ModbusConnection(host="a", timeout_s=3))
    True
    >>> same_link(ModbusConnection(host="a"), ModbusConnection(host="b"))
    False
    """
    if type(old) is not type(new):
        return False
    return bool(
        old.model_dump(exclude=SOFT_CONNECTION_FIELDS) == new.model_dump(exclude=SOFT_CONNECTION_FIELDS)
    )


def check_plan(device_id: str, poll_interval_s: float, tag_ids: Iterable[int]) -> set[int]:
    """The checks every device plan makes at construction; returns the plan's tag ids.

    >>> check_plan("d1", 1.0, [1, 2])
    {1, 2}
    >>> check_plan("d1", 1.0, [1, 1])
    Traceback (most recent call last):
    ValueError: device 'd1': tag id 1 appears twice in `tags`
    """
    if not device_id:
        raise ValueError("device_id must not be empty")
    if not poll_interval_s > 0:
        raise ValueError(f"`poll_interval_s` must be > 0, got {poll_interval_s!r}")
    seen: set[int] = set()
    for tag_id in tag_ids:
        if tag_id in seen:
            raise ValueError(f"device {device_id!r}: tag id {tag_id} appears twice in `tags`")
        seen.add(tag_id)
    return seen


@dataclass(slots=True)
class DeviceClientStats:
    """Counters every device client keeps (a snapshot is returned by its ``stats``)."""

    polls: int = 0
    """Polls answered (including those answered without I/O during backoff or with the breaker open)."""
    failures: int = 0
    """Polls where at least one tag was not read."""
    comm_errors: int = 0
    """Reads lost to the link; each protocol's ``ClientStats`` says whether it counts requests or polls."""
    connects: int = 0
    """Successful connects, the first one included."""
    reconnects: int = 0
    """Successful connects after the first one."""
    connect_failures: int = 0
    backoff_polls: int = 0
    """Polls answered with COMM_ERROR without I/O because a reconnect was not due yet."""
    breaker_open_polls: int = 0
    """Polls answered with COMM_ERROR without I/O because the circuit breaker was open."""
    breaker_state: BreakerState = "closed"
    breaker_opened: int = 0
    """Times the breaker opened."""
    writes: int = 0
    write_failures: int = 0
    last_latency_s: float = math.nan
    """Wall time of the last poll, connect included."""


class _Plan(Protocol):
    @property
    def device_id(self) -> str: ...


StatsT = TypeVar("StatsT", bound=DeviceClientStats)


class DeviceClientBase(Generic[StatsT]):
    """The bookkeeping of a device client. A subclass sets ``protocol`` and ``_log`` (its module's
    logger, so records keep their logger name) and, in ``__init__``, ``plan``, ``_stats``,
    ``_breaker``, ``_tag_ids``, ``_healthy = True`` and ``_m`` (its :class:`DeviceMetrics`, or
    None without metrics)."""

    protocol: ClassVar[str]
    _log: ClassVar[logging.Logger]
    plan: _Plan
    _stats: StatsT
    _breaker: CircuitBreaker
    _tag_ids: npt.NDArray[np.int64]
    _healthy: bool
    _m: DeviceMetrics | None

    @property
    def device_id(self) -> str:
        return self.plan.device_id

    @property
    def stats(self) -> StatsT:
        """A copy of the counters."""
        s = replace(self._stats)
        s.breaker_state = self._breaker.state
        s.breaker_opened = self._breaker.times_opened
        return s

    @contextlib.contextmanager
    def _counted_write(self) -> Iterator[None]:
        """Count the write done inside in ``nexus_device_writes`` by how it ended: ``rejected``
        (WriteRejected), ``failed`` (WriteFailed) or ``ok``."""
        try:
            yield
        except WriteRejected:
            if self._m is not None:
                self._m.write("rejected")
            raise
        except WriteFailed:
            if self._m is not None:
                self._m.write("failed")
            raise
        if self._m is not None:
            self._m.write("ok")

    def _count_poll(self, latency: float, failed: bool) -> None:
        s = self._stats
        s.polls += 1
        s.last_latency_s = latency
        if failed:
            s.failures += 1

    def _count_connect(self) -> bool:
        """Count a successful connect; whether it was a reconnect."""
        s = self._stats
        again = s.connects > 0
        if again:
            s.reconnects += 1
        s.connects += 1
        return again

    def _report_unhealthy(self, reason: str) -> None:
        if self._healthy:
            self._healthy = False
            self._log.warning(
                "%s device unreachable device=%s reason=%s", self.protocol, self.device_id, reason
            )
        else:
            self._log.debug(
                "%s device still unreachable device=%s reason=%s", self.protocol, self.device_id, reason
            )

    def _report_healthy(self) -> None:
        if not self._healthy:
            self._healthy = True
            self._log.info("%s device reachable again device=%s", self.protocol, self.device_id)

    def _nan_batch(self, ts_ns: int, quality: Quality) -> PointBatch:
        """Every tag with NaN and ``quality``."""
        n = len(self._tag_ids)
        return PointBatch(
            device_id=self.device_id,
            ts_ns=np.full(n, ts_ns, dtype=np.int64),
            tag_ids=self._tag_ids,
            values=np.full(n, np.nan),
            quality=np.full(n, quality, dtype=QUALITY_DTYPE),
        )
