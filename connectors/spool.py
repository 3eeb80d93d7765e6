"""A disk spool: append-only, checksummed segment files that a sink fills while its target is away.

Every sink that talks to something that can go away (the historian, the derived tables, the UNS
broker, Sparkplug) keeps what it could not deliver here, and drains it when the target returns. The
API is small and sink-agnostic — opaque ``bytes`` records with a sequence number:

- :meth:`Spool.append` / :meth:`Spool.append_many` — add records, get their sequence numbers
  (consecutive, increasing, never reused; they survive restarts);
- :meth:`Spool.read` — the records after a sequence number (default: after the acknowledged
  cursor), oldest first, without consuming them;
- :meth:`Spool.ack` — everything up to a sequence number is delivered; whole segments behind the
  cursor are deleted and the cursor is persisted, so a restart resumes after it;
- :meth:`Spool.sync` / :meth:`Spool.wait_durable` / ``on_durable`` — durability (group commit);
- :meth:`Spool.stats` — counters for metrics and status.

``encode_batch`` / ``decode_batch`` turn a :class:`~core.batch.PointBatch` into a record and back.

Why segment files and not SQLite: measured with ``python -m bench.spool`` (BENCHMARKS.md), appending
100-point batches with a 100 ms group commit, segment files took several million points/s and SQLite
in WAL mode (one blob row per batch, one transaction per commit interval) well under that; both
clear the 200,000 points/s bar, but segments also make "drop the oldest" an ``unlink`` and a torn
tail a checksum test, with no page cache of their own.

Format: a segment ``{first_seq:020d}.seg`` is a run of records, each a 28-byte header — magic
``NXS1``, payload length (u32), sequence (u64), append time (ns, i64), CRC-32 of sequence, time and
payload (u32) — then the payload. Appends go to the newest segment, unbuffered; a background thread
fsyncs it ``sync_interval_s`` after the oldest append that is neither synced nor acknowledged (group
commit; a sink that delivers within the interval spares the fsync), so a ``kill -9`` loses nothing
that reached :meth:`append` (the page cache survives it) and a power loss loses at most one interval
of what was not delivered. A new segment starts when the current one reaches ``segment_bytes`` and
at every open (a torn tail is never appended to). A closed segment is deleted once every record in it
is acknowledged. The open one stays open when all of its records are (the sink keeps up) and goes
when it is full or at the next open: a new file and a deletion per historian commit cost ~0.4 ms of
CPU here. Its delivered bytes are on disk until then, but not counted as held (``spool_bytes``).
At open, the newest segment is verified record by record and cut at the first record that is short
or fails its checksum (counted in ``torn_bytes``); a bad record found later while reading skips the
rest of its segment (``corrupt_bytes``). Garbage is never returned as a record.

Bounds: ``max_bytes`` and ``max_age_s``. Beyond them the oldest segment is deleted, its records
counted in ``dropped_records`` / ``dropped_bytes`` (and ``dropped_items``: points or messages, when the
sink gives ``count``), logged at ERROR, counted in the Prometheus
counter ``nexus_spool_dropped_records_total{spool, reason}`` and passed to ``on_drop`` (the platform
alert): never a silent loss. A full volume (``ENOSPC``) drops the oldest segment and retries once; if
the record still does not fit it is dropped and counted the same way — never a crash.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     s = Spool(d, name="doc")
...     first = s.append(b"hello"); last = s.append_many([b"a", b"b"])
...     [(seq, bytes(p)) for seq, p in s.read()], s.pending_records
...     s.ack(first); s.pending_records, [bytes(p) for _, p in s.read()]
...     s.close()
([(1, b'hello'), (2, b'a'), (3, b'b')], 3)
(2, [b'a', b'b'])
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.batch import PointBatch
from core.quality import QUALITY_DTYPE

__all__ = [
    "SPOOL_DEFAULT_MAX_AGE_S",
    "SPOOL_DEFAULT_MAX_BYTES",
    "Spool",
    "SpoolDrop",
    "decode_batch",
    "encode_batch",
]

log = logging.getLogger(__name__)

SPOOL_DEFAULT_MAX_BYTES = 1 << 30
SPOOL_DEFAULT_MAX_AGE_S = 7 * 86400.0

_MAGIC = b"NXS1"
_HEADER = struct.Struct("<4sIQqI")  # magic, length, seq, time_ns, crc32
_HEAD = _HEADER.size
_SEQ_TIME = struct.Struct("<Qq")
_MAX_RECORD = 1 << 30
_CURSOR = "cursor.json"
_CURSOR_WIDTH = 48
"""The cursor file's fixed size: JSON padded with spaces, so an in-place write always covers it."""
_IOV_RECORDS = 256
"""At most this many records in one ``writev`` (two buffers each; the system's limit is 1024)."""
IDLE_CHECK_S = 5.0
"""How often a clean spool's flusher looks at its bounds and gauges (it wakes for an append at once,
and every acknowledgement updates the gauges). A flow has a spool per sink and per derived target:
at 1 s their idle wake-ups were a measurable part of a 10-device flow's CPU."""


@dataclass(frozen=True, slots=True)
class SpoolDrop:
    """What a bound or a full volume cost: handed to ``on_drop`` (the platform alert)."""

    spool: str
    reason: str
    """``max_bytes``, ``max_age`` or ``disk_full``."""
    records: int
    bytes: int
    first_seq: int
    last_seq: int
    items: int | None = None
    """What the records held (points, messages), by the sink's ``count``; ``None`` without one."""


@dataclass(slots=True)
class _Segment:
    path: Path
    first_seq: int
    last_seq: int
    """``first_seq - 1`` while empty."""
    size: int
    last_time_ns: int


def _metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge

    try:
        return _metrics.cache  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        pass
    m = {
        "dropped": Counter(
            "nexus_spool_dropped_records",
            "Spooled records dropped by a bound or a full disk",
            ["spool", "reason"],
        ),
        "bytes": Gauge("nexus_spool_bytes", "Bytes held by the spool", ["spool"]),
        "pending": Gauge("nexus_spool_pending_records", "Records not yet acknowledged", ["spool"]),
    }
    _metrics.cache = m  # type: ignore[attr-defined]
    return m


class Spool:
    """One directory of segment files; thread-safe. See the module docstring.

    ``clock`` (wall time in seconds) decides ages; inject a fake one in tests.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        *,
        name: str = "spool",
        max_bytes: int = SPOOL_DEFAULT_MAX_BYTES,
        max_age_s: float = SPOOL_DEFAULT_MAX_AGE_S,
        segment_bytes: int = 16 << 20,
        sync_interval_s: float = 0.1,
        on_drop: Callable[[SpoolDrop], None] | None = None,
        on_durable: Callable[[int], None] | None = None,
        count: Callable[[memoryview], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool {name!r}: max_bytes must be > 0, got {max_bytes}")
        if max_age_s <= 0:
            raise ValueError(f"spool {name!r}: max_age_s must be > 0, got {max_age_s}")
        if sync_interval_s <= 0:
            raise ValueError(f"spool {name!r}: sync_interval_s must be > 0, got {sync_interval_s}")
        self.name = name
        self.temporary = directory is None
        """No folder given: a temporary one, removed (with what it holds) by :meth:`close`."""
        if directory is None:
            directory = tempfile.mkdtemp(prefix=f"nexus-spool-{name}-")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4 or 4096))
        self.sync_interval_s = sync_interval_s
        self.on_drop = on_drop
        self.on_durable = on_durable
        self.count = count
        """How many items (points, messages) one record holds: dropped records are counted in items
        too, read back before their segment goes — a loss the sink can match exactly."""
        self.clock = clock
        self._lock = threading.RLock()
        self._durable_cond = threading.Condition(self._lock)
        self._closed = False
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        """The newest segment, open for appending (unbuffered: what ``append`` returned is in the page cache)."""
        self._cursor_fd: int | None = None
        """The cursor file, open for its in-place rewrites (:meth:`_save_cursor`)."""
        self._acked = 0
        self._next_seq = 1
        self._durable_seq = 0
        self._dirty = False
        self._unsynced: deque[tuple[int, int, float]] = deque()
        """``(first seq, last seq, monotonic time)`` of each append whose records are neither fsynced
        nor acknowledged, oldest first: the flusher syncs when the oldest is ``sync_interval_s`` old.
        A sink that delivers within the interval (the historian commits within ``max_delay_s``)
        acknowledges them first, and the fsync is spared."""
        self._wake = threading.Event()
        """Set by an append that finds nothing unsynced: the flusher idles until then (or
        ``IDLE_CHECK_S``)."""
        self._closing = threading.Event()
        """Set by :meth:`close`: ends the flusher's wait for the next sync slot."""
        self._closed_sum: tuple[tuple[int, int], int] = ((0, 0), 0)
        self._read_pos: tuple[int, Path, int] | None = None
        """Where the last read stopped: (next seq, segment path, byte offset) — saves rescanning."""
        self._delivered = (0, 0)
        """(next seq, byte offset): the start of the open segment up to the offset holds only
        acknowledged records (on disk until the segment is full). A lower bound, exact while the
        whole segment is delivered; reads start there and ``spool_bytes`` leaves it out."""
        self.appended = 0
        self.dropped_records = 0
        self.dropped_bytes = 0
        self.dropped_items = 0
        self.torn_bytes = 0
        self.corrupt_bytes = 0
        self.write_errors = 0
        self.fsyncs = 0
        """fsyncs made (group commits, segments closed with records not yet delivered)."""
        self.peak_bytes = 0
        self._m = {k: (v.labels(name) if k != "dropped" else v) for k, v in _metrics().items()}
        self._open()
        self._flusher = threading.Thread(target=self._flush_loop, name=f"spool-{name}", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        cursor = self.dir / _CURSOR
        if cursor.exists():
            try:
                self._acked = int(json.loads(cursor.read_text())["acked"])
            except (ValueError, KeyError, TypeError):
                log.error("spool %s: unreadable cursor %s; replaying everything kept", self.name, cursor)
        paths = sorted(self.dir.glob("*.seg"))
        for i, path in enumerate(paths):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            size = path.stat().st_size
            if i == len(paths) - 1:
                last, good, last_time = self._verify(path, first)
                if good < size:
                    self.torn_bytes += size - good
                    log.warning(
                        "spool %s: torn tail in %s: %d bytes after the last whole record cut off",
                        self.name, path.name, size - good,
                    )  # fmt: skip
                    with open(path, "r+b") as f:
                        f.truncate(good)
                    size = good
            else:
                # a closed segment was fsynced before the next one started: its last seq is the
                # next segment's first minus one
                last = int(paths[i + 1].stem) - 1
                last_time = int(path.stat().st_mtime * 1e9)
            if size == 0 or last < first:
                path.unlink(missing_ok=True)
                continue
            self._segments.append(_Segment(path, first, last, size, last_time))
        if self._segments:
            self._next_seq = max(self._segments[-1].last_seq + 1, self._acked + 1)
            self._acked = max(self._acked, self._segments[0].first_seq - 1)
        else:
            self._next_seq = self._acked + 1
        self._durable_seq = self._next_seq - 1
        self._trim_acked()
        self._update_gauges()

    def _verify(self, path: Path, first: int) -> tuple[int, int, int]:
        """(last good seq, byte length of the good prefix, time of the last good record)."""
        data = path.read_bytes()
        pos = 0
        seq = first - 1
        last_time = 0
        view = memoryview(data)
        while pos + _HEAD <= len(data):
            magic, length, rseq, t, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEAD + length
            if magic != _MAGIC or end > len(data) or rseq != seq + 1:
                break
            if zlib.crc32(view[pos + _HEAD : end], zlib.crc32(_SEQ_TIME.pack(rseq, t))) != crc:
                break
            seq, last_time, pos = rseq, t, end
        return seq, pos, last_time

    # ------------------------------------------------------------------ appending

    def append(self, payload: bytes | bytearray | memoryview) -> int | None:
        """Add one record; its sequence number, or ``None`` if it was dropped (disk full, counted)."""
        return self.append_many((payload,))

    def append_many(self, payloads: Iterable[bytes | bytearray | memoryview]) -> int | None:
        """Add records in order; the last one's sequence number (``None`` if none was kept)."""
        kept = [seq for seq in self.append_each(payloads) if seq is not None]
        return kept[-1] if kept else None

    def append_each(self, payloads: Iterable[bytes | bytearray | memoryview]) -> list[int | None]:
        """Add records in order, under one lock; each one's sequence number (``None``: dropped)."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"spool {self.name!r} is closed")
            now_ns = int(self.clock() * 1e9)
            self._expire(now_ns)
            payloads = list(payloads)
            for payload in payloads:
                if len(payload) > _MAX_RECORD:
                    raise ValueError(
                        f"spool {self.name!r}: a record of {len(payload)} bytes exceeds {_MAX_RECORD}"
                    )
            seqs = self._write_together(payloads, now_ns) if len(payloads) > 1 else None
            if seqs is None:
                seqs = []
                for payload in payloads:
                    seq = self._next_seq
                    crc = zlib.crc32(payload, zlib.crc32(_SEQ_TIME.pack(seq, now_ns)))
                    record = _HEADER.pack(_MAGIC, len(payload), seq, now_ns, crc)
                    seqs.append(seq if self._write(record, payload, seq, now_ns) else None)
            self._enforce_bounds()
            return seqs

    def _write_together(
        self, payloads: list[bytes | bytearray | memoryview], now_ns: int
    ) -> list[int | None] | None:
        """Records that fit in the open segment in one ``writev`` (a worker's activation hands over a
        record per device poll: one system call instead of one each); ``None``, nothing written, when
        they do not fit or the write fails: :meth:`_write` then goes record by record (disk full...)."""
        size = sum(_HEAD + len(p) for p in payloads)
        if len(payloads) > _IOV_RECORDS or size > self.segment_bytes:
            return None
        seg = self._segments[-1] if self._segments and self._fd is not None else None
        if seg is not None and seg.size + size > self.segment_bytes:
            return None  # the records go record by record: the segment rolls over between them
        try:
            seg = self._current(size)  # opens one when there is none (after an open, or an expiry)
        except OSError:
            return None
        assert self._fd is not None
        first = seq = self._next_seq
        iov: list[bytes | bytearray | memoryview] = []
        for payload in payloads:
            crc = zlib.crc32(payload, zlib.crc32(_SEQ_TIME.pack(seq, now_ns)))
            iov += (_HEADER.pack(_MAGIC, len(payload), seq, now_ns, crc), payload)
            seq += 1
        try:
            written = os.writev(self._fd, iov)
        except OSError:
            written = -1
        if written != size:
            if written != 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, seg.size)  # never leave part of the records behind
            return None
        self._appended(seg, seq - 1, size, now_ns, len(payloads))
        return list(range(first, seq))

    def _appended(self, seg: _Segment, last_seq: int, size: int, now_ns: int, records: int) -> None:
        seg.last_seq = last_seq
        seg.size += size
        seg.last_time_ns = now_ns
        self._next_seq = last_seq + 1
        self.appended += records
        self._dirty = True
        if not self._unsynced:
            self._wake.set()  # the flusher syncs one interval from now (unless it is delivered by then)
        self._unsynced.append((last_seq - records + 1, last_seq, time.monotonic()))

    def _write(self, header: bytes, payload: bytes | bytearray | memoryview, seq: int, now_ns: int) -> bool:
        size = _HEAD + len(payload)
        for attempt in range(2):
            seg: _Segment | None = None
            try:
                seg = self._current(size)
                assert self._fd is not None
                written = os.writev(self._fd, (header, payload))
                if written != size:
                    raise OSError(errno.ENOSPC, f"short write ({written} of {size} bytes)")
            except OSError as exc:
                self.write_errors += 1
                if seg is not None and self._fd is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, seg.size)  # never leave half a record behind
                if (
                    exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    and attempt == 0
                    and self._drop_oldest("disk_full")
                ):
                    continue
                self._count_drop("disk_full", 1, size, seq, seq, self._items((payload,)))
                log.error("spool %s: record %d not stored: %s", self.name, seq, exc)
                self._next_seq = seq + 1
                return False
            self._appended(seg, seq, size, now_ns, 1)
            return True
        return False

    def _current(self, size: int) -> _Segment:
        seg = self._segments[-1] if self._segments else None
        if seg is None or self._fd is None or (seg.size + size > self.segment_bytes and seg.size > 0):
            delivered = seg is not None and self._fd is not None and seg.last_seq <= self._acked
            self._close_current(sync=not delivered)  # a delivered one is not needed after a crash
            if delivered:
                self._trim_acked()
            self._delivered = (0, 0)
            path = self.dir / f"{self._next_seq:020d}.seg"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            seg = _Segment(path, self._next_seq, self._next_seq - 1, 0, 0)
            self._segments.append(seg)
        return seg

    def _close_current(self, *, sync: bool = True) -> None:
        """fsync and close the open segment (it is never appended to again); ``sync=False`` when
        every record in it is delivered (acknowledged): durable enough, it is deleted next."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if sync:
                self.fsyncs += 1
                os.fsync(fd)
            else:
                self._dirty = False  # the newest records are in it: nothing is left to sync
            if self._segments:
                self._settled(self._segments[-1].last_seq)
        except OSError as exc:
            self.write_errors += 1
            log.error("spool %s: fsync failed: %s", self.name, exc)
        finally:
            os.close(fd)
        if self._segments and self._segments[-1].size == 0:
            self._segments.pop().path.unlink(missing_ok=True)

    def _expire(self, now_ns: int) -> None:
        """Drop segments whose newest record is older than ``max_age_s`` (the open one too)."""
        limit_ns = now_ns - int(self.max_age_s * 1e9)
        segs = self._segments
        if segs and self._fd is not None and segs[-1].size and segs[-1].last_time_ns < limit_ns:
            self._close_current()  # all of it is too old: close it so it can go
        while segs and segs[0].last_time_ns < limit_ns and not (len(segs) == 1 and self._fd is not None):
            self._drop_oldest("max_age")

    # ------------------------------------------------------------------ bounds

    def _enforce_bounds(self) -> None:
        total = self._bytes()
        self.peak_bytes = max(self.peak_bytes, total - (self._delivered[1] if self._fd is not None else 0))
        while total > self.max_bytes and len(self._segments) > 1:
            total -= self._segments[0].size
            self._drop_oldest("max_bytes")
        self._expire(int(self.clock() * 1e9))

    def _drop_oldest(self, reason: str) -> bool:
        if not self._segments or (len(self._segments) == 1 and self._fd is not None):
            return False
        seg = self._segments.pop(0)
        first = max(seg.first_seq, self._acked + 1)
        records = seg.last_seq - first + 1
        items = self._items(self._payloads(seg, first)) if records > 0 else None
        seg.path.unlink(missing_ok=True)
        if records > 0:
            self._count_drop(reason, records, seg.size, first, seg.last_seq, items)
        self._acked = max(self._acked, seg.last_seq)
        self._read_pos = None
        return True

    def _payloads(self, seg: _Segment, first: int) -> Iterable[memoryview]:
        """The payloads of a segment's records from seq ``first`` on, up to the first bad header."""
        try:
            data = seg.path.read_bytes()
        except OSError:
            return
        view = memoryview(data)
        pos = 0
        while pos + _HEAD <= len(data):
            magic, length, rseq, _t, _crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEAD + length
            if magic != _MAGIC or end > len(data):
                return
            if rseq >= first:
                yield view[pos + _HEAD : end]
            pos = end

    def _items(self, payloads: Iterable[bytes | bytearray | memoryview]) -> int | None:
        """The sink's ``count`` summed over records about to be dropped (``None`` without one)."""
        if self.count is None:
            return None
        total = 0
        for payload in payloads:
            try:
                total += self.count(memoryview(payload))
            except Exception:  # an unreadable record is still dropped and counted as a record
                log.exception("spool %s: cannot count the items of a dropped record", self.name)
        return total

    def _count_drop(  # noqa: PLR0917 - one drop's figures
        self, reason: str, records: int, size: int, first: int, last: int, items: int | None = None
    ) -> None:
        self.dropped_records += records
        self.dropped_bytes += size
        self.dropped_items += items or 0
        self._m["dropped"].labels(self.name, reason).inc(records)
        log.error(
            "spool %s: %d records (%d bytes, seq %d..%d) dropped: %s",
            self.name, records, size, first, last, reason,
        )  # fmt: skip
        if self.on_drop is not None:
            try:
                self.on_drop(SpoolDrop(self.name, reason, records, size, first, last, items))
            except Exception:  # an alert hook must not take the sink down
                log.exception("spool %s: on_drop hook failed", self.name)

    # ------------------------------------------------------------------ reading and acknowledging

    def read(
        self, after: int | None = None, *, max_records: int = 1000, max_bytes: int = 8 << 20
    ) -> list[tuple[int, memoryview]]:
        """Up to ``max_records`` records (and about ``max_bytes``) with a seq above ``after``, in order.

        ``after`` defaults to the acknowledged cursor. Records are not consumed: call :meth:`ack`.
        """
        out: list[tuple[int, memoryview]] = []
        with self._lock:
            start = max(self._acked if after is None else after, self._acked) + 1
            if start >= self._next_seq:
                return out
            total = 0
            window = max_bytes + (4 << 20)
            for seg in list(self._segments):
                if seg.last_seq < start:
                    continue
                pos, expect = 0, seg.first_seq
                rp = self._read_pos
                if rp is not None and rp[1] == seg.path and rp[0] <= start:
                    expect, pos = rp[0], rp[2]
                delivered = self._delivered if seg is self._segments[-1] and self._fd is not None else (0, 0)
                if expect < delivered[0] <= start:  # the open segment's delivered start: skipped
                    expect, pos = delivered
                # read the segment window by window until enough records, its end, or a bad record
                while pos < seg.size and len(out) < max_records and total < max_bytes:
                    try:
                        with open(seg.path, "rb") as f:
                            f.seek(pos)
                            data = f.read(min(seg.size - pos, window))
                            if len(data) >= _HEAD:  # make sure the first record is whole, however big
                                need = _HEAD + _HEADER.unpack_from(data, 0)[1]
                                if len(data) < need <= seg.size - pos:
                                    data += f.read(need - len(data))
                    except FileNotFoundError:
                        break
                    view = memoryview(data)
                    off = 0
                    bad = False
                    while off + _HEAD <= len(data) and len(out) < max_records and total < max_bytes:
                        magic, length, rseq, t, crc = _HEADER.unpack_from(data, off)
                        end = off + _HEAD + length
                        if magic != _MAGIC or rseq != expect or pos + end > seg.size:
                            bad = True
                            break
                        if end > len(data):
                            break  # the window ends inside this record: the next window starts with it
                        body = view[off + _HEAD : end]
                        if zlib.crc32(body, zlib.crc32(_SEQ_TIME.pack(rseq, t))) != crc:
                            bad = True
                            break
                        if rseq >= start:
                            out.append((rseq, body))
                            total += length
                        expect = rseq + 1
                        off = end
                    if bad:
                        self._corrupt(seg, pos + off)
                        break
                    if off == 0 and pos + len(data) < seg.size and len(out) < max_records:
                        break  # cannot happen with whole first records; never loop forever
                    pos += off
                    self._read_pos = (expect, seg.path, pos)
                if len(out) >= max_records or total >= max_bytes:
                    break
        return out

    def _corrupt(self, seg: _Segment, offset: int) -> None:
        lost = seg.size - offset
        self.corrupt_bytes += lost
        log.error(
            "spool %s: corrupt record in %s at byte %d: the rest of the segment (%d bytes, up to seq %d) skipped",
            self.name, seg.path.name, offset, lost, seg.last_seq,
        )  # fmt: skip
        if seg is not self._segments[-1]:
            self._acked = max(self._acked, seg.last_seq)
            self._trim_acked()

    def ack(self, seq: int) -> None:
        """Records up to ``seq`` are delivered: delete the segments behind it, persist the cursor."""
        with self._lock:
            seq = min(seq, self._next_seq - 1)
            if seq <= self._acked:
                return
            self._acked = seq
            self._settled(seq)
            self._trim_acked()
            self._save_cursor(seq)
            self._update_gauges()

    def _settled(self, seq: int) -> None:
        """Records up to ``seq`` are synced or delivered: they need no fsync, and every record before
        the oldest unsynced append is durable enough (a delivered one is not needed after a crash)."""
        pending = self._unsynced
        while pending and pending[0][1] <= seq:
            pending.popleft()
        self._mark_durable(pending[0][0] - 1 if pending else self._next_seq - 1)

    def _save_cursor(self, seq: int) -> None:
        """Overwrite the cursor file in place with one fixed-width write (a temporary file and a
        rename per acknowledgement cost ~0.4 ms of CPU here: one per historian commit)."""
        text = json.dumps({"acked": seq}).encode().ljust(_CURSOR_WIDTH)
        try:
            if self._cursor_fd is None:
                self._cursor_fd = os.open(self.dir / _CURSOR, os.O_RDWR | os.O_CREAT, 0o644)
            if os.pwrite(self._cursor_fd, text, 0) != len(text):
                raise OSError(errno.EIO, "short write")
        except OSError as exc:  # a lost cursor only means a replay (sinks are idempotent)
            log.warning("spool %s: cursor not saved: %s", self.name, exc)

    def _trim_acked(self) -> None:
        while self._segments and self._segments[0].last_seq <= self._acked:
            if len(self._segments) == 1 and self._fd is not None:
                # the open segment is fully delivered: it takes the next appends (see the module
                # docstring); its bytes stop counting as held, and a sync not yet made is not
                # needed (nothing in it is needed after a crash)
                seg = self._segments[0]
                self._delivered = (seg.last_seq + 1, seg.size)
                self._dirty = False
                self._settled(seg.last_seq)
                break
            seg = self._segments.pop(0)
            seg.path.unlink(missing_ok=True)
            self._read_pos = None

    # ------------------------------------------------------------------ durability

    def sync(self) -> int:
        """fsync now; returns the durable sequence number.

        The fsync itself runs outside the lock (on a duplicate of the segment's descriptor), so
        appends go on while the disk works: a slow disk delays durability, not the sink.
        """
        with self._lock:
            if not self._dirty or self._fd is None:
                self._dirty = False
                self._settled(self._next_seq - 1)
                return self._durable_seq
            fd = os.dup(self._fd)
            seq = self._next_seq - 1
            self._dirty = False
            self.fsyncs += 1
        try:
            os.fsync(fd)
            ok = True
        except OSError as exc:  # the page cache still has the data; keep going, say so
            ok = False
            log.error("spool %s: fsync failed: %s", self.name, exc)
        finally:
            os.close(fd)
        with self._lock:
            if ok:
                self._settled(seq)
            else:
                self.write_errors += 1
                self._dirty = True
            return self._durable_seq

    def _sync_locked(self) -> int:
        if self._dirty and self._fd is not None:
            try:
                self.fsyncs += 1
                os.fsync(self._fd)
            except OSError as exc:
                self.write_errors += 1
                log.error("spool %s: fsync failed: %s", self.name, exc)
                return self._durable_seq
        self._dirty = False
        self._settled(self._next_seq - 1)
        return self._durable_seq

    def _mark_durable(self, seq: int) -> None:
        if seq > self._durable_seq:
            self._durable_seq = seq
            self._durable_cond.notify_all()
            if self.on_durable is not None:
                try:
                    self.on_durable(seq)
                except Exception:
                    log.exception("spool %s: on_durable hook failed", self.name)

    def wait_durable(self, seq: int, timeout: float) -> bool:
        """Wait until record ``seq`` is fsynced (at most one sync interval, normally)."""
        deadline = time.monotonic() + timeout
        with self._durable_cond:
            while self._durable_seq < seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._durable_cond.wait(remaining)
            return True

    def _flush_loop(self) -> None:
        ticking = False
        while True:
            with self._lock:
                due = self.sync_due
                appended = self.appended
            if due is not None:
                # group commit: a record is synced one interval after its append, unless it is
                # delivered (acknowledged) by then. Not at once: the first append of a burst comes
                # from a worker's activation, and a sync then made both threads queue for the
                # interpreter (measured: more wake-ups, more CPU)
                wait = due - time.monotonic()
                if wait > 0:
                    self._closing.wait(wait)
                else:
                    errors = self.write_errors
                    self.sync()
                    if self.write_errors != errors:  # the fsync failed: again in an interval, not at once
                        self._closing.wait(self.sync_interval_s)
            elif ticking:
                # appends keep coming and the sink keeps up (acknowledged all): look again in an
                # interval instead of being woken by the first append after each acknowledgement
                self._closing.wait(self.sync_interval_s)
            else:  # idle: wait for an append (bounds, gauges: now and then)
                self._wake.wait(IDLE_CHECK_S)
                self._wake.clear()
            if self._closed:
                return
            ticking = self.appended != appended
            with self._lock:
                if self._closed:
                    return
                if len(self._segments) > 1:
                    self._enforce_bounds()
                self._update_gauges()

    # ------------------------------------------------------------------ state

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def last_seq(self) -> int:
        """The newest sequence number handed out (0 before the first append)."""
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def sync_due(self) -> float | None:
        """When (``time.monotonic()``) the flusher fsyncs next: one interval after the oldest append
        that is neither synced nor acknowledged; ``None``: nothing needs it."""
        pending = self._unsynced
        return pending[0][2] + self.sync_interval_s if pending else None

    @property
    def pending_records(self) -> int:
        """Records appended and not acknowledged (dropped ones excluded)."""
        with self._lock:
            return max(0, self._next_seq - 1 - self._acked)

    @property
    def size_bytes(self) -> int:
        """Bytes of the records not yet acknowledged (see ``_delivered``)."""
        with self._lock:
            return self._held()

    def __len__(self) -> int:
        return self.pending_records

    def _bytes(self) -> int:
        segs = self._segments
        if len(segs) > 64:  # cache the closed segments' sum: only the open one changes
            key = (len(segs), segs[0].first_seq)
            if self._closed_sum[0] != key:
                self._closed_sum = (key, sum(s.size for s in segs[:-1]))
            return self._closed_sum[1] + segs[-1].size
        return sum(s.size for s in segs)

    def _held(self) -> int:
        held = sum(s.size for s in self._segments)
        if self._segments and self._fd is not None:
            held -= min(self._delivered[1], self._segments[-1].size)
        return held

    def _update_gauges(self) -> None:
        self._m["bytes"].set(self._held())
        self._m["pending"].set(max(0, self._next_seq - 1 - self._acked))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "spool_pending_records": max(0, self._next_seq - 1 - self._acked),
                "spool_bytes": self._held(),
                "spool_peak_bytes": self.peak_bytes,
                "spool_segments": len(self._segments),
                "spool_appended": self.appended,
                "spool_dropped_records": self.dropped_records,
                "spool_dropped_bytes": self.dropped_bytes,
                "spool_dropped_items": self.dropped_items,
                "spool_torn_bytes": self.torn_bytes,
                "spool_corrupt_bytes": self.corrupt_bytes,
                "spool_write_errors": self.write_errors,
                "spool_fsyncs": self.fsyncs,
            }

    def close(self) -> None:
        """fsync and close (records stay on disk for the next open)."""
        with self._lock:
            if self._closed:
                return
            self._sync_locked()
            self._closed = True
            self._closing.set()
            self._wake.set()
            self._durable_cond.notify_all()
            for fd in (self._fd, self._cursor_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = self._cursor_fd = None
        self._flusher.join(timeout=self.sync_interval_s * 2 + 1)
        if self.temporary:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---------------------------------------------------------------------- point batch records

_BATCH = struct.Struct("<4sIHI")  # kind, points, device id length, text JSON length
_KIND_BATCH = b"PB01"


def encode_batch(batch: PointBatch) -> bytes:
    """A :class:`PointBatch` as one spool record (columns as raw little-endian arrays).

    >>> b = PointBatch.from_values("press-01", [7, 8], [1.5, float("nan")], ts_ns=5)
    >>> d = decode_batch(encode_batch(b))
    >>> d.device_id, d.tag_ids.tolist(), d.ts_ns.tolist(), float(d.values[0]), d.quality.tolist()
    ('press-01', [7, 8], [5, 5], 1.5, [0, 0])
    """
    dev = batch.device_id.encode()
    text = json.dumps({str(k): v for k, v in batch.text.items()}).encode() if batch.text else b""
    n = len(batch)
    return b"".join(
        (
            _BATCH.pack(_KIND_BATCH, n, len(dev), len(text)),
            dev,
            text,
            np.ascontiguousarray(batch.ts_ns, "<i8").tobytes(),
            np.ascontiguousarray(batch.tag_ids, "<i8").tobytes(),
            np.ascontiguousarray(batch.values, "<f8").tobytes(),
            np.ascontiguousarray(batch.quality, QUALITY_DTYPE).tobytes(),
        )
    )


def decode_batch(record: bytes | memoryview) -> PointBatch:
    """The inverse of :func:`encode_batch`; ``ValueError`` names what is wrong with a bad record."""
    if len(record) < _BATCH.size:
        raise ValueError(f"spool record of {len(record)} bytes is too short for a point batch")
    kind, n, ldev, ltext = _BATCH.unpack_from(record, 0)
    if kind != _KIND_BATCH:
        raise ValueError(f"spool record kind {bytes(kind)!r} is not a point batch")
    pos = _BATCH.size
    if len(record) != pos + ldev + ltext + n * 25:
        raise ValueError(f"spool record length {len(record)} does not match {n} points")
    dev = bytes(record[pos : pos + ldev]).decode()
    pos += ldev
    text = {int(k): v for k, v in json.loads(bytes(record[pos : pos + ltext])).items()} if ltext else None
    pos += ltext

    def col(dtype: str, size: int) -> Any:
        nonlocal pos
        arr = np.frombuffer(record, dtype, n, pos).copy()
        pos += n * size
        return arr

    ts = col("<i8", 8)
    ids = col("<i8", 8)
    vals = col("<f8", 8)
    qual = col(np.dtype(QUALITY_DTYPE).str, 1)
    return PointBatch(dev, ts.astype(np.int64), ids.astype(np.int64), vals.astype(np.float64), qual, text)


def batches_from(records: Sequence[tuple[int, memoryview]]) -> list[PointBatch]:
    """Decode point-batch records, skipping (and logging) any that do not decode."""
    out: list[PointBatch] = []
    for seq, rec in records:
        try:
            out.append(decode_batch(rec))
        except (ValueError, UnicodeDecodeError) as exc:
            log.error("spool record %d is not a point batch (%s); skipped", seq, exc)
    return out
