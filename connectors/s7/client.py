"""One long-lived S7 connection per device: packed multi-variable reads, writes, reconnects.

snap7's client is blocking and not thread-safe: every call runs in this client's own worker
threads (``run_in_executor``) under an :class:`asyncio.Lock`, with a deadline. A call that misses
its deadline abandons that snap7 client (it is disconnected once the stuck call returns) and the
next poll reconnects with a fresh one.

Reads follow a :class:`~connectors.s7.codec.ReadPlan` built for the PDU size the CPU negotiated.
Each request is sent with snap7's protocol encoder and the item results are parsed here, so the
return code of every item is kept (snap7's own ``read_multi_vars`` raises on the first bad item).
Errors never escape :meth:`S7DeviceClient.poll`; they become qualities:

- transport failure, timeout or a broken stream: the request's items and those not attempted after
  it get ``COMM_ERROR``; the connection is dropped, the breaker counts a failure and reconnects back
  off exponentially with jitter;
- an item the CPU rejects (unknown DB, address out of range): ``DEVICE_EXCEPTION`` for the tags in
  that item only; a whole request refused with an S7 error class: ``DEVICE_EXCEPTION`` for its tags;
- a STRING whose actual length exceeds its configured length: ``CONFIG_ERROR``; a NaN or infinite
  REAL/LREAL: ``OUT_OF_RANGE``.

While the circuit breaker is open a poll does no I/O and answers ``COMM_ERROR`` at once; after
``breaker_reset_s`` one poll probes the device (half-open).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import snap7.client
from snap7.error import (
    S7ConnectionError,
    S7PacketLostError,
    S7ProtocolError,
    S7StalePacketError,
    S7TimeoutError,
)
from snap7.type import Area, Parameter, WordLen

from connectors.client_base import DeviceClientBase, DeviceClientStats, same_link
from connectors.polling import WriteFailed, WriteRejected, WriteValue
from connectors.resilience import Backoff, CircuitBreaker, DeviceMetrics, poll_result
from connectors.s7.address import S7Address
from connectors.s7.codec import ReadPlan, encode_value
from connectors.s7.config import S7DevicePlan
from core.batch import PointBatch
from core.quality import QUALITY_DTYPE, Quality

log = logging.getLogger(__name__)

PROTOCOL = "s7"
_GUARD_S = 0.25
"""Extra time on top of the socket timeout before this client gives up on a blocking call."""
_AREA: dict[str, Area] = {"DB": Area.DB, "M": Area.MK, "I": Area.PE, "Q": Area.PA}
_TRANSPORT_ERRORS = (S7ConnectionError, S7TimeoutError, OSError, TimeoutError, EOFError)
_T = TypeVar("_T")

__all__ = ["ClientStats", "S7DeviceClient", "WriteFailed", "WriteRejected"]


@dataclass(slots=True)
class ClientStats(DeviceClientStats):
    """Counters of one device client (:attr:`S7DeviceClient.stats` returns a copy).

    ``comm_errors`` counts polls (or requests) lost to the link: transport error, timeout, not
    attempted, connect failure, backoff or open breaker. ``writes`` counts writes that succeeded.
    """

    requests: int = 0
    """Read requests sent."""
    device_errors: int = 0
    """Items (or whole requests) the CPU answered with an error code."""
    pdu_size: int = 0
    """PDU size negotiated at the last connect."""
    max_request_bytes: int = 0
    max_response_bytes: int = 0
    """Largest read request / response PDU seen (never above ``pdu_size``)."""


class S7DeviceClient(DeviceClientBase[ClientStats]):
    """Polls and writes one S7 device; see the module docstring for the error mapping.

    ``clock`` (monotonic seconds) and ``rng`` are injectable; ``metrics=False`` keeps the client out
    of the process's Prometheus registry.
    """

    protocol = PROTOCOL
    _log = log
    plan: S7DevicePlan

    def __init__(
        self,
        plan: S7DevicePlan,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: bool = True,
    ) -> None:
        self.plan = plan
        c = plan.connection
        self._clock = clock
        self._tags: dict[int, S7Address] = {tag_id: t.parsed for tag_id, t in plan.tags}
        self._addresses = [(tag_id, t.parsed) for tag_id, t in plan.tags]
        self._tag_ids = np.array([tag_id for tag_id, _ in plan.tags], dtype=np.int64)
        self._plans: dict[int, ReadPlan] = {}
        self.read_plan = self._plan_for(c.pdu_size)
        self._backoff = Backoff(c.reconnect_min_s, c.reconnect_max_s, rng=rng or random.Random())
        self._breaker = CircuitBreaker(c.breaker_failures, c.breaker_reset_s, clock=clock)
        self._retry_at = -math.inf
        self._client: snap7.client.Client | None = None
        self._lock = asyncio.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix=f"s7:{plan.device_id}"
        )
        self._stats = ClientStats()
        self._healthy = True
        self._m = DeviceMetrics(PROTOCOL, plan.device_id) if metrics else None

    # -- public --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def poll(self) -> PointBatch:
        """Read every tag once. Never raises (except on cancellation)."""
        started = self._clock()
        ts_ns = time.time_ns()
        before = replace(self._stats)
        async with self._lock:
            try:
                batch = await self._poll()
            except Exception:  # a bug or an unexpected library error must not kill the source
                log.exception("s7 poll failed unexpectedly device=%s", self.device_id)
                await self._drop_connection(failure=True)
                batch = self._uniform(ts_ns, Quality.COMM_ERROR)
        latency = self._clock() - started
        s = self._stats
        bad = bool(np.any(batch.quality >= Quality.BAD))
        self._count_poll(latency, bad)
        if self._m is not None:
            result = poll_result(
                bad_points=bad,
                comm_error=s.comm_errors > before.comm_errors,
                breaker_open=s.breaker_open_polls > before.breaker_open_polls,
            )
            self._m.poll(result, latency, self._breaker.state)
            self._m.request_errors("comm", s.comm_errors - before.comm_errors)
            self._m.request_errors("device", s.device_errors - before.device_errors)
        return batch

    async def write(self, tag_id: int, value: WriteValue) -> None:
        """Write ``value`` to the tag; validated before any I/O.

        Raises :class:`WriteRejected` (unknown tag, input area, value does not fit the data type)
        without touching the device, or :class:`WriteFailed` when the CPU or the link fails it.
        ``BOOL`` is written with one bit-level request (transport size BIT): the CPU changes that
        bit alone, so bits of the same byte that the PLC program changes are never overwritten.
        """
        with self._counted_write():
            addr = self._tags.get(tag_id)
            if addr is None:
                raise WriteRejected(self.device_id, tag_id, "no such tag on this device")
            if addr.area == "I":
                raise WriteRejected(
                    self.device_id, tag_id, f"{addr.notation()}: inputs (I/E area) are read-only"
                )
            try:
                data = encode_value(value, addr)
            except ValueError as e:
                raise WriteRejected(self.device_id, tag_id, str(e)) from None
            async with self._lock:
                try:
                    await self._write(tag_id, addr, value, data)
                except WriteFailed:
                    self._stats.write_failures += 1
                    raise
            self._stats.writes += 1

    async def reconfigure(self, plan: S7DevicePlan) -> None:
        """Take over a changed plan (a hot config change) between polls: the read plan is rebuilt
        for the PDU size already negotiated; the connection stays unless the endpoint changed."""
        if plan.device_id != self.plan.device_id:
            raise ValueError(f"plan of device {plan.device_id!r} given to client of {self.device_id!r}")
        async with self._lock:
            old = self.plan
            self.plan = plan
            self._tags = {tag_id: t.parsed for tag_id, t in plan.tags}
            self._addresses = [(tag_id, t.parsed) for tag_id, t in plan.tags]
            self._tag_ids = np.array([tag_id for tag_id, _ in plan.tags], dtype=np.int64)
            self._plans.clear()
            pdu = self._stats.pdu_size if self._client is not None and self._stats.pdu_size else None
            self.read_plan = self._plan_for(pdu or plan.connection.pdu_size)
            if not same_link(old.connection, plan.connection):
                await self._drop_connection(failure=False)
                self._retry_at = -math.inf
        log.info("s7 plan changed device=%s tags=%d", self.device_id, len(self._tag_ids))

    async def close(self) -> None:
        """Disconnect (a later poll would reconnect) and release the worker threads."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(TimeoutError, RuntimeError):
                await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(self._executor, _disconnect, client),
                    self.plan.connection.timeout_s + _GUARD_S,
                )
        self._executor.shutdown(wait=False, cancel_futures=True)

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        """Every tag with NaN and ``quality`` (a poll that could not complete)."""
        return self._uniform(ts_ns, quality)

    # -- reading -------------------------------------------------------------------------------

    async def _poll(self) -> PointBatch:
        if not await self._ensure_connected():
            return self._uniform(time.time_ns(), Quality.COMM_ERROR)
        client = self._client
        assert client is not None
        rp = self.read_plan
        buf = rp.buffer()
        item_q = np.full(len(rp.items), Quality.COMM_ERROR, dtype=QUALITY_DTYPE)
        ts_ns = time.time_ns()
        timeout = self.plan.connection.timeout_s + _GUARD_S
        transport_error: BaseException | None = None
        answered = False
        for req in rp.requests:
            if transport_error is not None:
                self._stats.comm_errors += 1
                continue
            specs = [
                (int(_AREA[it.area]), it.db, it.start, it.size) for it in (rp.items[k] for k in req.items)
            ]
            self._stats.requests += 1
            self._stats.max_request_bytes = max(self._stats.max_request_bytes, req.request_bytes)
            try:
                response = await self._call(timeout, _exchange, client, specs)
            except (S7StalePacketError, S7PacketLostError) as e:
                transport_error = e  # the stream is out of step: reconnect
            except S7ProtocolError as e:
                if getattr(e, "error_code", None):  # the CPU refused the whole request
                    answered = True
                    item_q[list(req.items)] = Quality.DEVICE_EXCEPTION
                    self._stats.device_errors += 1
                    log.debug("s7 request refused device=%s error=%s", self.device_id, e)
                else:  # a malformed answer: do not trust the stream any more
                    transport_error = e
            except _TRANSPORT_ERRORS as e:
                transport_error = e
            else:
                answered = True
                self._stats.max_response_bytes = max(
                    self._stats.max_response_bytes,
                    12 + response["param_length"] + response["data_length"],
                )
                self._store_items(req.items, response, buf, item_q)
            if transport_error is not None:
                self._stats.comm_errors += 1
        if transport_error is not None:
            self._report_unhealthy(f"transport error: {transport_error!r}")
            await self._drop_connection(failure=True)
        elif answered:
            self._breaker.record_success()
            self._backoff.reset()
            self._report_healthy()
        values, quality, text = rp.decode(buf, item_q)
        return PointBatch(
            device_id=self.device_id,
            ts_ns=np.full(len(rp), ts_ns, dtype=np.int64),
            tag_ids=self._tag_ids,
            values=values,
            quality=quality,
            text=text or None,
        )

    def _store_items(
        self, indices: tuple[int, ...], response: dict[str, Any], buf: np.ndarray, item_q: np.ndarray
    ) -> None:
        """Copy each item's bytes to the poll buffer; keep each item's return code as its quality."""
        raw: bytes = response.get("raw_data") or b""
        items = self.read_plan.items
        offset = 0
        last = len(indices) - 1
        for n, k in enumerate(indices):
            item = items[k]
            if offset + 4 > len(raw):
                item_q[list(indices[n:])] = Quality.CONFIG_ERROR
                log.warning("s7 response truncated device=%s item=%d", self.device_id, n)
                return
            code, transport, length = (
                raw[offset],
                raw[offset + 1],
                struct.unpack_from(">H", raw, offset + 2)[0],
            )
            offset += 4
            if code != 0xFF:
                item_q[k] = Quality.DEVICE_EXCEPTION
                self._stats.device_errors += 1
                log.debug(
                    "s7 item rejected device=%s area=%s db=%d start=%d size=%d code=0x%02x",
                    self.device_id,
                    item.area,
                    item.db,
                    item.start,
                    item.size,
                    code,
                )
                continue  # an error item carries no data (and no fill byte)
            nbytes = length // 8 if transport in (0x03, 0x04, 0x05) else length
            if nbytes != item.size or offset + nbytes > len(raw):
                item_q[k] = Quality.CONFIG_ERROR
                log.warning(
                    "s7 item size mismatch device=%s area=%s db=%d start=%d asked=%d got=%d",
                    self.device_id,
                    item.area,
                    item.db,
                    item.start,
                    item.size,
                    nbytes,
                )
            else:
                buf[item.offset : item.offset + nbytes] = np.frombuffer(raw, np.uint8, nbytes, offset)
                item_q[k] = Quality.GOOD
            offset += nbytes + (1 if n < last and nbytes % 2 else 0)

    # -- writing -------------------------------------------------------------------------------

    async def _write(self, tag_id: int, addr: S7Address, value: WriteValue, data: bytes) -> None:
        name = addr.notation()
        if not self._breaker.allow():
            raise WriteFailed(self.device_id, tag_id, f"{name}: device unreachable (circuit breaker open)")
        if self._client is None:
            self._retry_at = -math.inf  # a write is an explicit request: try now
            if not await self._ensure_connected():
                raise WriteFailed(self.device_id, tag_id, f"{name}: cannot connect to the device")
        client = self._client
        assert client is not None
        timeout = self.plan.connection.timeout_s + _GUARD_S
        area, db = _AREA[addr.area], addr.db or 0
        try:
            if addr.data_type == "BOOL":
                assert addr.bit is not None
                await self._call(timeout, _write_bit, client, area, db, (addr.byte, addr.bit), bool(value))
            elif addr.data_type == "STRING":  # keep the CPU's max-length byte; write length + chars
                await self._call(timeout, client.write_area, area, db, addr.byte + 1, bytearray(data[1:]))
            else:
                await self._call(timeout, client.write_area, area, db, addr.byte, bytearray(data))
        except (S7StalePacketError, S7PacketLostError) as e:
            await self._drop_connection(failure=True)
            raise WriteFailed(self.device_id, tag_id, f"{name}: link lost: {e}") from e
        except S7ProtocolError as e:
            self._stats.device_errors += 1
            code = getattr(e, "error_code", None) or _item_code(str(e))
            raise WriteFailed(self.device_id, tag_id, f"{name}: the CPU refused the write: {e}", code) from e
        except _TRANSPORT_ERRORS as e:
            self._report_unhealthy(f"transport error: {e!r}")
            await self._drop_connection(failure=True)
            raise WriteFailed(self.device_id, tag_id, f"{name}: link failed: {e!r}") from e
        log.info("s7 write device=%s address=%s value=%r", self.device_id, name, value)

    # -- connection ----------------------------------------------------------------------------

    async def _ensure_connected(self) -> bool:
        if not self._breaker.allow():
            self._stats.breaker_open_polls += 1
            return False
        if self._client is not None:
            return True
        if self._breaker.state != "half_open" and self._clock() < self._retry_at:
            self._stats.backoff_polls += 1
            return False
        c = self.plan.connection
        try:
            client = await self._call(c.timeout_s + _GUARD_S, _connect, c)
        except (S7ProtocolError, *_TRANSPORT_ERRORS) as e:
            self._stats.connect_failures += 1
            self._report_unhealthy(f"cannot connect to {c.host}:{c.port}: {e}")
            self._fail()
            return False
        self._client = client
        pdu = int(client.get_pdu_length())
        self._stats.pdu_size = pdu
        self.read_plan = self._plan_for(pdu)
        if self._count_connect() and self._m is not None:
            self._m.reconnect()
        log.debug("s7 connected device=%s host=%s port=%d pdu=%d", self.device_id, c.host, c.port, pdu)
        return True

    def _plan_for(self, pdu: int) -> ReadPlan:
        plan = self._plans.get(pdu)
        if plan is None:
            plan = self._plans[pdu] = ReadPlan(
                self._addresses, pdu_size=pdu, max_gap=self.plan.connection.max_gap
            )
        return plan

    async def _call(self, timeout: float, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking snap7 call in a worker thread; past ``timeout`` abandon the snap7 client."""
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            stuck, self._client = self._client, None
            fut.add_done_callback(lambda f: _discard(f, stuck))
            raise S7TimeoutError(f"no answer within {timeout:g} s") from None

    def _fail(self) -> None:
        self._breaker.record_failure()
        self._retry_at = self._clock() + self._backoff.next_delay()
        if self._m is not None:
            self._m.breaker(self._breaker.state)

    async def _drop_connection(self, *, failure: bool) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._executor.submit(_disconnect, client)
        if failure:
            self._fail()

    def _uniform(self, ts_ns: int, quality: Quality) -> PointBatch:
        if quality == Quality.COMM_ERROR:
            self._stats.comm_errors += 1
        return self._nan_batch(ts_ns, quality)


# -- blocking helpers (run in the worker threads) ------------------------------------------------


def _connect(c: Any) -> snap7.client.Client:
    """A connected snap7 client for ``c`` (an :class:`S7Connection`); raises on failure."""
    client = snap7.client.Client()
    client.set_param(Parameter.PDURequest, c.pdu_size)
    remote = c.remote_tsap_value
    client.set_connection_params(c.host, c.local_tsap_value, remote)
    # snap7's connect() derives the remote TSAP as type << 8 | rack << 5 | slot: any 16-bit TSAP maps.
    client.set_connection_type(remote >> 8)
    client.connect(c.host, (remote >> 5) & 0x07, remote & 0x1F, c.port)
    conn = client.connection
    if conn is not None and conn.socket is not None:
        conn.timeout = c.timeout_s
        conn.socket.settimeout(c.timeout_s)
    return client


def _exchange(client: snap7.client.Client, specs: list[tuple[int, int, int, int]]) -> dict[str, Any]:
    """Send one multi-variable read and return snap7's parsed response (items parsed by the caller)."""
    request = client.protocol.build_multi_read_request(specs)
    response: dict[str, Any] = client._send_receive(request)
    params = response.get("parameters") or {}
    if params.get("item_count") != len(specs):
        raise S7ProtocolError(f"read answered {params.get('item_count')} items, asked {len(specs)}")
    return response


def _item_code(message: str) -> int | None:
    """The item return code snap7 puts in a write error's text (``... (0x0a)``), if any."""
    m = re.search(r"\(0x([0-9a-f]{2})\)\s*$", message)
    return int(m.group(1), 16) if m else None


def _write_bit(client: snap7.client.Client, area: Area, db: int, where: tuple[int, int], value: bool) -> None:
    """One bit-level write: with ``WordLen.Bit`` snap7 takes ``start`` as a bit address
    (byte * 8 + bit) and sends one data byte, 0 or 1; the CPU changes that bit only."""
    byte, bit = where
    client.write_area(area, db, byte * 8 + bit, bytearray([1 if value else 0]), WordLen.Bit)


def _disconnect(client: snap7.client.Client) -> None:
    try:
        client.disconnect()
    except Exception:  # closing a broken link
        log.debug("s7 disconnect failed", exc_info=True)


def _discard(fut: asyncio.Future[Any], client: snap7.client.Client | None) -> None:
    """Disconnect what a call abandoned after its deadline (the stuck call's client, or the one a
    late connect produced)."""
    late = None if fut.cancelled() or fut.exception() is not None else fut.result()
    for c in (client, late):
        if isinstance(c, snap7.client.Client):
            _disconnect(c)
