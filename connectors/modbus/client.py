"""One long-lived Modbus connection per device (TCP, RTU over TCP or RTU on a serial line), polled
through its :class:`ReadPlan` and written through :meth:`ModbusDeviceClient.write`.

pymodbus's own retries and automatic reconnect are switched off; this client reconnects itself
with exponential backoff and jitter, and while it backs off a poll does no I/O at all and returns
``COMM_ERROR`` points at once. A circuit breaker per device (:class:`~connectors.resilience.CircuitBreaker`)
opens after ``breaker_failures`` consecutive polls with a transport failure; while it is open polls
answer ``COMM_ERROR`` without I/O, and after ``breaker_reset_s`` one probe poll (which connects even
inside the backoff window) closes it again or re-opens it.

Errors never escape :meth:`ModbusDeviceClient.poll`; they become qualities on the points:

- transport failure or timeout: the failed request's tags (and those of the requests after it in
  the same poll, which are not attempted) get NaN and ``Quality.COMM_ERROR``; the connection is
  closed and re-opened later;
- Modbus exception response: that request's tags get NaN and ``Quality.DEVICE_EXCEPTION``; the
  other requests are unaffected. ``ILLEGAL_DATA_ADDRESS`` (code 2) splits the request in halves,
  recursively, so only the tags at rejected addresses stay bad; the split is remembered and the
  whole request is tried again every ``split_reprobe_s``;
- a response shorter than asked for: ``Quality.CONFIG_ERROR``; a decoded NaN/infinite float:
  ``Quality.OUT_OF_RANGE``.

String tags come out in :attr:`~core.batch.PointBatch.text` (their value is NaN).

The client must be used from a single event loop (the one that runs :meth:`poll`); polls and writes
on that loop share the connection one request at a time. A poll's reads go through
:func:`connectors.modbus.transaction.execute` (pymodbus's request steps with one timer per request,
bounded by the plan's ``timeout_s``) and register responses decode through
:mod:`connectors.modbus.responses` (one call per response); writes use pymodbus's own calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from connectors.client_base import DeviceClientBase, DeviceClientStats, same_link
from connectors.modbus.codec import ReadPlan, ReadRequest, encode_tag, split_request
from connectors.modbus.config import ModbusDevicePlan, ModbusSerialConnection, ModbusTagAddress
from connectors.modbus.responses import register_fast_responses
from connectors.modbus.transaction import execute, read_request
from connectors.polling import WriteFailed, WriteRejected, WriteValue
from connectors.resilience import CircuitBreaker, DeviceMetrics, poll_result
from core.batch import PointBatch
from core.quality import QUALITY_DTYPE, Quality

__all__ = ["ClientStats", "ModbusDeviceClient", "WriteFailed", "WriteRejected"]

log = logging.getLogger(__name__)

PROTOCOL = "modbus"
ILLEGAL_DATA_ADDRESS = 2
_TRANSPORT_ERRORS = (ModbusException, TimeoutError, OSError, EOFError)
_GUARD_S = 0.25
"""Extra time on top of pymodbus's own timeout before this client gives up on a call."""
_BAD = int(Quality.BAD)
_GOOD = int(Quality.GOOD)
_OUT_OF_RANGE = int(Quality.OUT_OF_RANGE)

AnyModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient


RECV_BYTES = 16 * 1024
"""What one read of a Modbus TCP connection asks the socket for. asyncio's socket transport asks for
256 KiB: each read allocated that much (above glibc's mmap threshold, which ``core.memory`` pins at
128 KiB: an ``mmap``, a page fault, an ``mremap`` down to the ~200 bytes received and an ``munmap``
per poll). A Modbus TCP response is at most 260 bytes; more waiting is read by the next turn."""


def _small_receive_buffer(client: Any) -> None:
    """Set the connected ``client``'s socket transport to read :data:`RECV_BYTES` at a time."""
    transport: Any = getattr(getattr(client, "ctx", None), "transport", None)
    if isinstance(getattr(transport, "max_size", None), int):  # asyncio's socket transports
        transport.max_size = RECV_BYTES


@dataclass(slots=True)
class ClientStats(DeviceClientStats):
    """Counters of one device client (a snapshot is returned by :attr:`ModbusDeviceClient.stats`).

    ``comm_errors`` counts requests not read because of the link: transport error, timeout, not
    attempted after one, connect failure, backoff or open breaker. ``writes`` counts writes that
    succeeded; ``write_failures`` those that raised WriteFailed (WriteRejected is not counted here).
    """

    device_exceptions: int = 0
    """Requests answered with a Modbus exception response."""
    split_requests: int = 0
    """Planned requests currently read in pieces because the device rejected an address."""


@dataclass(slots=True)
class _Split:
    leaves: list[ReadRequest]
    reprobe_at: float


class _PollState:
    """One poll's buffers and what its requests did to the link."""

    __slots__ = ("any_answer", "bits", "quality", "transport_error", "words")

    def __init__(
        self, words: npt.NDArray[np.uint16], bits: npt.NDArray[np.bool_], quality: npt.NDArray[np.uint8]
    ) -> None:
        self.words = words
        self.bits = bits
        self.quality = quality
        self.any_answer = False
        self.transport_error: BaseException | None = None


class ModbusDeviceClient(DeviceClientBase[ClientStats]):
    """Polls and writes one device: connect (with backoff), breaker, read plan, decode, qualities.

    ``clock`` (monotonic seconds) and ``rng`` are injectable for tests; ``metrics=False`` keeps this
    client out of the process's Prometheus registry.
    """

    protocol = PROTOCOL
    _log = log
    plan: ModbusDevicePlan

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
        c = plan.connection
        self._clock = clock
        self._rng = rng or random.Random()
        self._stats = ClientStats()
        self._client: AnyModbusClient | None = None
        self._failed_attempts = 0
        """Consecutive failures (connects or polls) since the last good response; drives the backoff."""
        self._retry_at = -math.inf
        self._healthy = True
        self._tag_ids = self.read_plan.tag_ids
        self._unread = self._unread_quality()
        self._addresses: dict[int, ModbusTagAddress] = dict(plan.wire_tags)
        self._splits: dict[int, _Split] = {}
        self._io_lock = asyncio.Lock()
        self._breaker = CircuitBreaker(c.breaker_failures, c.breaker_reset_s, clock=clock)
        self._m = DeviceMetrics(PROTOCOL, plan.device_id) if metrics else None

    @property
    def breaker(self) -> CircuitBreaker:
        """This device's circuit breaker."""
        return self._breaker

    @property
    def stats(self) -> ClientStats:
        """A copy of the counters."""
        s = super().stats
        s.split_requests = len(self._splits)
        return s

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
        was = self._breaker.state
        if not self._breaker.allow():
            self._stats.breaker_open_polls += 1
            batch = self._uniform(ts_ns, Quality.COMM_ERROR)
            link_ok, open_, bad = False, True, True
        else:
            open_ = False
            probe = self._breaker.state == "half_open"
            try:
                batch, link_ok, bad = await self._poll(force_connect=probe)
            except Exception:  # a bug or an unexpected library error must not kill the source
                log.exception("modbus poll failed unexpectedly device=%s", self.device_id)
                await self._drop_connection()
                batch, link_ok, bad = self._uniform(ts_ns, Quality.COMM_ERROR), False, True
            if link_ok:
                self._breaker.record_success()
            else:
                self._breaker.record_failure()
        self._breaker_changed(was)
        latency = self._clock() - started
        result = poll_result(bad_points=bad, comm_error=not link_ok, breaker_open=open_)
        self._count_poll(latency, result != "ok")
        if self._m is not None:
            self._m.poll(result, latency, self._breaker.state)
        return batch

    async def write(self, tag_id: int, value: WriteValue) -> None:
        """Write ``value`` to the tag through this device's connection.

        Raises :class:`WriteRejected` before any I/O for an unknown tag, a read-only table (input
        registers, discrete inputs) or a value that does not fit the data type; :class:`WriteFailed`
        for an exception response (``code`` = the Modbus exception code), a transport error, an
        unreachable device or an open breaker.
        """
        with self._counted_write():
            try:
                await self._write(tag_id, value)
            except WriteFailed:
                self._stats.write_failures += 1
                raise
            self._stats.writes += 1

    async def reconfigure(self, plan: ModbusDevicePlan) -> None:
        """Take over a changed plan (a hot config change) between polls: the read plan is
        re-coalesced from the new tags; the connection stays open unless the endpoint changed
        (a new request timeout is handed to the open pymodbus client)."""
        if plan.device_id != self.plan.device_id:
            raise ValueError(f"plan of device {plan.device_id!r} given to client of {self.device_id!r}")
        async with self._io_lock:
            old = self.plan
            self.plan = plan
            self.read_plan = ReadPlan.for_device(plan)
            self._tag_ids = self.read_plan.tag_ids
            self._unread = self._unread_quality()
            self._addresses = dict(plan.wire_tags)
            self._splits.clear()  # request indexes refer to the old read plan
            if not same_link(old.connection, plan.connection):
                await self._drop_connection(schedule_retry=False)
                self._retry_at = -math.inf
            elif self._client is not None:
                self._client.comm_params.timeout_connect = plan.connection.timeout_s
        log.info(
            "modbus plan changed device=%s tags=%d requests=%d",
            self.device_id, len(self.read_plan), len(self.read_plan.requests),
        )  # fmt: skip

    async def close(self) -> None:
        """Close the connection (a later poll would open a new one)."""
        await self._drop_connection(schedule_retry=False)

    # -- polling internals ---------------------------------------------------------------------

    async def _poll(self, *, force_connect: bool) -> tuple[PointBatch, bool, bool]:
        """One poll, whether the link worked (connected, no transport error) and whether a point is bad."""
        if not await self._ensure_connected(force=force_connect):
            return self._uniform(time.time_ns(), Quality.COMM_ERROR), False, True
        rp = self.read_plan
        words, bits = rp.buffers()
        # every point starts as not read; a request that answers overwrites its points' quality
        quality = self._unread.copy()
        ts_ns = time.time_ns()
        outcome = _PollState(words, bits, quality)
        for index, req in enumerate(rp.requests):
            if outcome.transport_error is not None:
                self._count_error("comm_errors")
                continue
            try:
                await self._read_planned(index, req, outcome)
            except _TRANSPORT_ERRORS as exc:
                outcome.transport_error = exc
                self._count_error("comm_errors")
        if outcome.any_answer:
            self._failed_attempts = 0
            self._retry_at = -math.inf
        if outcome.transport_error is not None:
            self._report_unhealthy(f"transport error: {outcome.transport_error!r}")
            await self._drop_connection()
        else:
            self._report_healthy()
        values = rp.decode(words, bits)
        text = None
        if np.count_nonzero(quality) or len(rp.text_points):  # points not read, or strings
            bad = quality != _GOOD
            values[bad] = np.nan
            is_text = np.zeros(len(rp), dtype=bool)
            is_text[rp.text_points] = True
            quality[~bad & ~is_text & ~np.isfinite(values)] = _OUT_OF_RANGE
            if len(rp.text_points):
                text = {i: s for i, s in rp.decode_text(words).items() if not bad[i]}
            any_bad = bool((quality >= _BAD).any())
        else:  # the everyday poll, every point read: only a float can still be out of range
            any_bad = False
            if rp.floats:
                finite = np.isfinite(values)
                if not finite.all():
                    quality[~finite] = _OUT_OF_RANGE
                    any_bad = True
        stamps = np.empty(len(rp), dtype=np.int64)
        stamps.fill(ts_ns)
        batch = PointBatch(
            device_id=self.device_id,
            ts_ns=stamps,
            tag_ids=self._tag_ids,
            values=values,
            quality=quality,
            text=text,
        )
        return batch, outcome.transport_error is None, any_bad

    async def _read_planned(self, index: int, req: ReadRequest, outcome: _PollState) -> None:
        """Read planned request ``index``, whole or in the pieces remembered from an earlier split."""
        split = self._splits.get(index)
        now = self._clock()
        if split is not None and now >= split.reprobe_at:
            leaves = await self._read(req, outcome, split_ok=False)
            if leaves:
                log.info(
                    "modbus read accepted whole again device=%s table=%s address=%d count=%d",
                    self.device_id, req.table, req.address, req.count,
                )  # fmt: skip
                del self._splits[index]
                return
            split.reprobe_at = now + self.plan.connection.split_reprobe_s
        targets = [req] if split is None else split.leaves
        leaves = []
        for target in targets:
            leaves += await self._read(target, outcome, split_ok=True)
        if leaves != [req]:
            if split is None:
                log.warning(
                    "modbus device rejected an address; read split device=%s table=%s address=%d "
                    "count=%d pieces=%d",
                    self.device_id, req.table, req.address, req.count, len(leaves),
                )  # fmt: skip
                split = self._splits[index] = _Split(leaves, now + self.plan.connection.split_reprobe_s)
            split.leaves = leaves

    async def _read(self, req: ReadRequest, outcome: _PollState, *, split_ok: bool) -> list[ReadRequest]:
        """Execute ``req`` (splitting it on ILLEGAL_DATA_ADDRESS); the requests that were executed.

        With ``split_ok=False`` an ILLEGAL_DATA_ADDRESS answer returns ``[]`` and leaves the points alone.
        Transport errors propagate.
        """
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        c = self.plan.connection
        request = read_request(req.table, req.address, req.count, c.unit_id)
        async with self._io_lock:  # one timer per request: execute's own timeout, no guard around it
            rr = await execute(client, request, c.timeout_s)
        outcome.any_answer = True  # the device answered: the link is fine
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            if code == ILLEGAL_DATA_ADDRESS:
                if not split_ok:
                    return []
                halves = split_request(req)
                if halves is not None:
                    first = await self._read(halves[0], outcome, split_ok=True)
                    return first + await self._read(halves[1], outcome, split_ok=True)
            outcome.quality[req.points] = Quality.DEVICE_EXCEPTION
            self._count_error("device_exceptions")
            log.debug(
                "modbus exception response device=%s table=%s address=%d count=%d code=%s",
                self.device_id, req.table, req.address, req.count, code,
            )  # fmt: skip
            return [req]
        data = rr.bits if req.is_bits else rr.registers
        if len(data) < req.count:
            outcome.quality[req.points] = Quality.CONFIG_ERROR
            log.warning(
                "modbus short response device=%s table=%s address=%d asked=%d got=%d",
                self.device_id, req.table, req.address, req.count, len(data),
            )  # fmt: skip
            return [req]
        if req.is_bits:
            outcome.bits[req.offset : req.offset + req.count] = data[: req.count]
        else:
            outcome.words[req.offset : req.offset + req.count] = data[: req.count]
        outcome.quality[req.points] = Quality.GOOD
        return [req]

    # -- writes --------------------------------------------------------------------------------

    async def _write(self, tag_id: int, value: WriteValue) -> None:
        address = self._addresses.get(tag_id)
        if address is None:
            raise WriteRejected(self.device_id, tag_id, "no such tag on this device")
        if not address.writable:
            raise WriteRejected(self.device_id, tag_id, f"table {address.table!r} is read-only")
        try:
            regs = encode_tag(value, address)
        except ValueError as exc:
            raise WriteRejected(self.device_id, tag_id, str(exc)) from None
        if not self._breaker.allow():
            raise WriteFailed(self.device_id, tag_id, "circuit breaker open: the device is unreachable")
        if not await self._ensure_connected(count_backoff=False):
            raise WriteFailed(self.device_id, tag_id, "device unreachable (not connected)")
        client = self._client
        assert client is not None
        unit = self.plan.connection.unit_id
        a = address.address
        call: Awaitable[Any]
        if address.data_type == "bool":
            call = client.write_coil(a, bool(regs[0]), device_id=unit)
        elif address.data_type == "bit":
            mask = 1 << (address.bit or 0)
            call = client.mask_write_register(
                address=a, and_mask=0xFFFF ^ mask, or_mask=mask if regs[0] else 0, device_id=unit
            )
        elif len(regs) == 1:
            call = client.write_register(a, regs[0], device_id=unit)
        else:
            call = client.write_registers(a, regs, device_id=unit)
        try:
            async with self._io_lock:
                rr = await asyncio.wait_for(call, self.plan.connection.timeout_s + _GUARD_S)
        except _TRANSPORT_ERRORS as exc:
            self._report_unhealthy(f"transport error on write: {exc!r}")
            await self._drop_connection()
            raise WriteFailed(self.device_id, tag_id, f"transport error: {exc!r}") from exc
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            raise WriteFailed(self.device_id, tag_id, f"device answered exception code {code}", code=code)
        log.debug("modbus write device=%s tag=%d value=%r", self.device_id, tag_id, value)

    # -- connection ----------------------------------------------------------------------------

    def _new_client(self) -> AnyModbusClient:
        c = self.plan.connection
        common: dict[str, Any] = {
            "name": f"modbus:{self.device_id}",
            "timeout": c.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,  # no automatic reconnect inside pymodbus: we manage it
            "reconnect_delay_max": 0,
        }
        client: AnyModbusClient
        if isinstance(c, ModbusSerialConnection):
            client = AsyncModbusSerialClient(
                c.port,
                framer=FramerType.RTU,
                baudrate=c.baudrate,
                bytesize=c.bytesize,
                parity=c.parity,
                stopbits=c.stopbits,
                **common,
            )
        else:
            framer = FramerType.RTU if c.transport == "rtu_over_tcp" else FramerType.SOCKET
            client = AsyncModbusTcpClient(c.host, port=c.port, framer=framer, **common)
        register_fast_responses(client)
        return client

    async def _ensure_connected(self, *, force: bool = False, count_backoff: bool = True) -> bool:
        if self._client is not None and self._client.connected:
            return True
        if not force and self._clock() < self._retry_at:
            if count_backoff:
                self._stats.backoff_polls += 1
            return False
        await self._drop_connection(schedule_retry=False)
        c = self.plan.connection
        client = self._new_client()
        try:
            ok = await asyncio.wait_for(client.connect(), c.timeout_s + _GUARD_S)
        except _TRANSPORT_ERRORS:
            ok = False
        if not ok:
            client.close()
            self._stats.connect_failures += 1
            self._report_unhealthy(f"cannot connect to {c.endpoint}")
            self._schedule_retry()
            return False
        self._client = client
        _small_receive_buffer(client)
        if self._count_connect() and self._m is not None:
            self._m.reconnect()
        log.debug("modbus connected device=%s endpoint=%s", self.device_id, c.endpoint)
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

    def _breaker_changed(self, was: str) -> None:
        """Log a change of the breaker's state (its gauge is set with the poll's metrics)."""
        now = self._breaker.state
        if now != was:
            level = logging.WARNING if now == "open" else logging.INFO
            log.log(level, "modbus circuit breaker %s -> %s device=%s", was, now, self.device_id)

    def _count_error(self, name: str, n: int = 1) -> None:
        setattr(self._stats, name, getattr(self._stats, name) + n)
        if self._m is not None:
            self._m.request_errors("comm" if name == "comm_errors" else "device", n)

    def _unread_quality(self) -> npt.NDArray[np.uint8]:
        """Every point of the read plan not read: a poll's qualities before its requests answer."""
        return np.full(len(self.read_plan), Quality.COMM_ERROR, dtype=QUALITY_DTYPE)

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        """Every tag with NaN and ``quality`` (a poll that could not complete)."""
        return self._uniform(ts_ns, quality)

    def _uniform(self, ts_ns: int, quality: Quality) -> PointBatch:
        if quality == Quality.COMM_ERROR:
            self._count_error("comm_errors", len(self.read_plan.requests))
        return self._nan_batch(ts_ns, quality)
