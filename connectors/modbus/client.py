"""One long-lived Modbus TCP connection per device, polled through its :class:`ReadPlan`.

pymodbus's own retries and automatic reconnect are switched off; this client reconnects itself
with exponential backoff and jitter, and while it backs off a poll does no I/O at all and returns
``COMM_ERROR`` points at once. Errors never escape :meth:`ModbusDeviceClient.poll`; they become
qualities on the points:

- transport failure or timeout: the failed request's tags (and those of the requests after it in
  the same poll, which are not attempted) get NaN and ``Quality.COMM_ERROR``; the connection is
  closed and re-opened later;
- Modbus exception response: that request's tags get NaN and ``Quality.DEVICE_EXCEPTION``; the
  other requests are unaffected;
- a response shorter than asked for: ``Quality.CONFIG_ERROR``; a decoded NaN/infinite float:
  ``Quality.OUT_OF_RANGE``.

The client must be used from a single event loop (the one that runs :meth:`poll`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from connectors.modbus.codec import ReadPlan, ReadRequest
from connectors.modbus.config import ModbusDevicePlan
from connectors.modbus.metrics import modbus_metrics
from core.batch import PointBatch
from core.quality import QUALITY_DTYPE, Quality

log = logging.getLogger(__name__)

_TRANSPORT_ERRORS = (ModbusException, TimeoutError, OSError, EOFError)
_GUARD_S = 0.25
"""Extra time on top of pymodbus's own timeout before this client gives up on a call."""


@dataclass(slots=True)
class ClientStats:
    """Counters of one device client (a snapshot is returned by :attr:`ModbusDeviceClient.stats`)."""

    polls: int = 0
    """Polls answered (including those answered without I/O during backoff)."""
    failures: int = 0
    """Polls where at least one tag was not read (transport error, exception response, backoff)."""
    comm_errors: int = 0
    """Requests not read because of the link: transport error, timeout, not attempted after one,
    connect failure or backoff."""
    device_exceptions: int = 0
    """Requests answered with a Modbus exception response."""
    connects: int = 0
    """Successful connects, the first one included."""
    reconnects: int = 0
    """Successful connects after the first one."""
    connect_failures: int = 0
    backoff_polls: int = 0
    """Polls answered with COMM_ERROR without I/O because a reconnect was not due yet."""
    last_latency_s: float = math.nan
    """Wall time of the last poll, connect included."""


class ModbusDeviceClient:
    """Polls one device: connect (with backoff), execute the read plan, decode, stamp qualities.

    ``clock`` (monotonic seconds) and ``rng`` are injectable for tests; ``metrics=False`` keeps this
    client out of the process's Prometheus registry.
    """

    def __init__(
        self,
        plan: ModbusDevicePlan,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: bool = True,
    ) -> None:
        self.plan = plan
        self.read_plan = ReadPlan.for_device(plan)
        self._clock = clock
        self._rng = rng or random.Random()
        self._stats = ClientStats()
        self._client: AsyncModbusTcpClient | None = None
        self._failed_attempts = 0
        """Consecutive failures (connects or polls) since the last good response; drives the backoff."""
        self._retry_at = -math.inf
        self._healthy = True
        self._tag_ids = self.read_plan.tag_ids
        m = modbus_metrics() if metrics else None
        self._m = (
            None
            if m is None
            else {
                name: getattr(m, name).labels(plan.device_id)
                for name in ("polls", "failures", "comm_errors", "device_exceptions", "reconnects", "latency")
            }
        )

    @property
    def device_id(self) -> str:
        return self.plan.device_id

    @property
    def stats(self) -> ClientStats:
        """A copy of the counters."""
        return replace(self._stats)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def retry_at(self) -> float:
        """Monotonic time before which no reconnect is attempted (``-inf`` when not backing off)."""
        return self._retry_at

    async def poll(self) -> PointBatch:
        """Read every tag once. Never raises (except on cancellation)."""
        started = self._clock()
        ts_ns = time.time_ns()
        try:
            batch = await self._poll()
        except Exception:  # a bug or an unexpected library error must not kill the source
            log.exception("modbus poll failed unexpectedly device=%s", self.device_id)
            await self._drop_connection()
            batch = self._uniform(ts_ns, Quality.COMM_ERROR)
        latency = self._clock() - started
        s = self._stats
        s.polls += 1
        s.last_latency_s = latency
        failed = bool(np.any(batch.quality >= Quality.BAD))
        if failed:
            s.failures += 1
        if self._m is not None:
            self._m["polls"].inc()
            self._m["latency"].set(latency)
            if failed:
                self._m["failures"].inc()
        return batch

    async def close(self) -> None:
        """Close the connection (a later poll would open a new one)."""
        await self._drop_connection(schedule_retry=False)

    # -- internals -----------------------------------------------------------------------------

    async def _poll(self) -> PointBatch:
        if not await self._ensure_connected():
            return self._uniform(time.time_ns(), Quality.COMM_ERROR)
        client = self._client
        assert client is not None
        rp = self.read_plan
        words, bits = rp.buffers()
        quality = np.zeros(len(rp), dtype=QUALITY_DTYPE)
        ts_ns = time.time_ns()
        unit = self.plan.connection.unit_id
        guard = self.plan.connection.timeout_s + _GUARD_S
        transport_error: BaseException | None = None
        any_good = False
        for req in rp.requests:
            if transport_error is not None:
                quality[req.points] = Quality.COMM_ERROR
                self._count("comm_errors")
                continue
            try:
                rr = await asyncio.wait_for(_read(client, req, unit), guard)
            except _TRANSPORT_ERRORS as exc:
                transport_error = exc
                quality[req.points] = Quality.COMM_ERROR
                self._count("comm_errors")
                continue
            if rr.isError():
                quality[req.points] = Quality.DEVICE_EXCEPTION
                self._count("device_exceptions")
                log.debug(
                    "modbus exception response device=%s table=%s address=%d count=%d code=%s",
                    self.device_id,
                    req.table,
                    req.address,
                    req.count,
                    getattr(rr, "exception_code", None),
                )
                any_good = True  # the device answered: the link is fine
                continue
            data = rr.bits if req.is_bits else rr.registers
            if len(data) < req.count:
                quality[req.points] = Quality.CONFIG_ERROR
                log.warning(
                    "modbus short response device=%s table=%s address=%d asked=%d got=%d",
                    self.device_id,
                    req.table,
                    req.address,
                    req.count,
                    len(data),
                )
                continue
            any_good = True
            if req.is_bits:
                bits[req.offset : req.offset + req.count] = data[: req.count]
            else:
                words[req.offset : req.offset + req.count] = data[: req.count]
        if any_good:
            self._failed_attempts = 0
            self._retry_at = -math.inf
        if transport_error is not None:
            self._report_unhealthy(f"transport error: {transport_error!r}")
            await self._drop_connection()
        elif not self._healthy:
            self._healthy = True
            log.info("modbus device reachable again device=%s", self.device_id)
        values = rp.decode(words, bits)
        bad = quality != Quality.GOOD
        values[bad] = np.nan
        quality[~bad & ~np.isfinite(values)] = Quality.OUT_OF_RANGE
        return PointBatch(
            device_id=self.device_id,
            ts_ns=np.full(len(rp), ts_ns, dtype=np.int64),
            tag_ids=self._tag_ids,
            values=values,
            quality=quality,
        )

    async def _ensure_connected(self) -> bool:
        if self._client is not None and self._client.connected:
            return True
        if self._clock() < self._retry_at:
            self._stats.backoff_polls += 1
            return False
        await self._drop_connection(schedule_retry=False)
        c = self.plan.connection
        client = AsyncModbusTcpClient(
            c.host,
            port=c.port,
            name=f"modbus:{self.device_id}",
            timeout=c.timeout_s,
            retries=0,
            reconnect_delay=0,  # no automatic reconnect inside pymodbus: we manage it
            reconnect_delay_max=0,
        )
        try:
            ok = await asyncio.wait_for(client.connect(), c.timeout_s + _GUARD_S)
        except _TRANSPORT_ERRORS:
            ok = False
        if not ok:
            client.close()
            self._stats.connect_failures += 1
            self._report_unhealthy(f"cannot connect to {c.host}:{c.port}")
            self._schedule_retry()
            return False
        self._client = client
        if self._stats.connects:
            self._stats.reconnects += 1
            if self._m is not None:
                self._m["reconnects"].inc()
        self._stats.connects += 1
        log.debug("modbus connected device=%s host=%s port=%d", self.device_id, c.host, c.port)
        return True

    def _schedule_retry(self) -> None:
        c = self.plan.connection
        ceiling = min(c.reconnect_max_s, c.reconnect_min_s * 2.0 ** min(self._failed_attempts, 30))
        self._failed_attempts += 1
        self._retry_at = self._clock() + self._rng.uniform(c.reconnect_min_s, ceiling)

    async def _drop_connection(self, *, schedule_retry: bool = True) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
            if schedule_retry:
                self._schedule_retry()

    def _report_unhealthy(self, reason: str) -> None:
        if self._healthy:
            self._healthy = False
            log.warning("modbus device unreachable device=%s reason=%s", self.device_id, reason)
        else:
            log.debug("modbus device still unreachable device=%s reason=%s", self.device_id, reason)

    def _count(self, name: str, n: int = 1) -> None:
        setattr(self._stats, name, getattr(self._stats, name) + n)
        if self._m is not None:
            self._m[name].inc(n)

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        """Every tag with NaN and ``quality`` (a poll that could not complete)."""
        return self._uniform(ts_ns, quality)

    def _uniform(self, ts_ns: int, quality: Quality) -> PointBatch:
        n = len(self.read_plan)
        if quality == Quality.COMM_ERROR:
            self._count("comm_errors", len(self.read_plan.requests))
        return PointBatch(
            device_id=self.device_id,
            ts_ns=np.full(n, ts_ns, dtype=np.int64),
            tag_ids=self._tag_ids,
            values=np.full(n, np.nan),
            quality=np.full(n, quality, dtype=QUALITY_DTYPE),
        )


def _read(client: AsyncModbusTcpClient, req: ReadRequest, unit: int) -> Awaitable[Any]:
    if req.table == "holding":
        return client.read_holding_registers(req.address, count=req.count, device_id=unit)
    if req.table == "input":
        return client.read_input_registers(req.address, count=req.count, device_id=unit)
    if req.table == "coil":
        return client.read_coils(req.address, count=req.count, device_id=unit)
    return client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
