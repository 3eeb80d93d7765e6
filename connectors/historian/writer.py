"""The historian writer: points go through a disk spool to PostgreSQL by binary COPY, in order.

:meth:`HistorianWriter.write` appends the batch to the sink's disk spool (:mod:`connectors.spool`,
group commit) and hands it to the writer thread through a small in-memory queue; it never waits for
the database, so polling and publishing go on while the database is away. The spool is the truth,
the queue only a cache: when the queue is full, or the thread is retrying an outage, batches are read
back from the spool. The thread writes records strictly in spool order (policy ``in_order``): rows
are buffered until ``batch_rows`` are waiting or the oldest has waited ``max_delay_s``, written in one
transaction, then acknowledged in the spool (whole segments behind the cursor are deleted). The
thread wakes for the batch that opens a chunk and then at the chunk's deadline, earlier only for a
flush, a close, enough rows or a half-full queue: not once per batch (at 100 devices polled every
second that was ~60 wake-ups a second for one commit). After an
outage, and after a restart that found rows in the spool, the backlog drains in chunks of
``batch_rows`` at most ``drain_rows_per_s`` until the writer has caught up, so the database keeps
room. Rows that come faster than one COPY stream takes them, with no outage, are not paced: pacing
live rows would only grow the spool (the writer then reads them back from it at full speed). A
restart resumes after the spool's cursor: rows accepted before a crash (even a ``kill -9``) are
written then. A replayed chunk (unique violation on ``(tag_id, time)``) is rewritten through a
staging table with ``ON CONFLICT DO NOTHING``, so replays never duplicate.

``nexus_latest`` (:mod:`connectors.historian.latest`) is upserted in the transaction of a chunk, with
each tag's newest row of every chunk committed since the last upsert, at most every
``latest_interval_s`` (and by every :meth:`HistorianWriter.flush`): never ahead of ``nexus_points``,
behind it by at most that interval. Upserting it with every chunk cost ~0.3x the COPY itself in the
``sinks`` benchmark (every tag once per 2.5 polls); a tag polled ten times in the interval is now
upserted once.

>>> payload = encode_copy_binary(np.array([0]), np.array([7]), np.array([1.5]), np.array([0], np.uint8))
>>> payload[:11], len(payload)
(b'PGCOPY\\n\\xff\\r\\n\\x00', 65)
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.pq import ConnStatus, ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult

from connectors.historian.config import INTERVAL_SECONDS, HistorianConfig
from connectors.historian.latest import LatestRows
from connectors.historian.schema import PG_EPOCH_US, ensure_partitions, ensure_schema, upsert_tags
from connectors.spool import Spool, SpoolDrop, decode_batch, encode_batch
from core.batch import PointBatch
from core.tags import TagInfo

__all__ = [
    "HistorianClosed",
    "HistorianError",
    "HistorianTimeout",
    "HistorianWriter",
    "encode_copy_binary",
]

log = logging.getLogger(__name__)

COPY_POINTS = "COPY nexus_points (time, tag_id, value, quality) FROM STDIN (FORMAT BINARY)"
_COPY_POINTS_SQL = COPY_POINTS.encode()
COPY_STAGE = "COPY nexus_points_stage (time, tag_id, value, quality) FROM STDIN (FORMAT BINARY)"

_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_TRAILER = b"\xff\xff"
_ROW = np.dtype(
    [("n", ">i2"), ("l0", ">i4"), ("t", ">i8"), ("l1", ">i4"), ("id", ">i8"),
     ("l2", ">i4"), ("v", ">f8"), ("l3", ">i4"), ("q", ">i2")]
)  # fmt: skip
_ROW_NULL = np.dtype(
    [("n", ">i2"), ("l0", ">i4"), ("t", ">i8"), ("l1", ">i4"), ("id", ">i8"),
     ("l2", ">i4"), ("l3", ">i4"), ("q", ">i2")]
)  # fmt: skip


def encode_copy_binary(
    time_us: npt.NDArray[np.int64],
    tag_ids: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    quality: npt.NDArray[np.uint8],
    out: bytearray | None = None,
) -> bytes | memoryview:
    """One PostgreSQL binary COPY payload for ``(time, tag_id, value, quality)`` rows; NaN becomes NULL.

    ``time_us`` counts microseconds since 2000-01-01 UTC. Rows with a NULL value are written after the
    others (row order means nothing to COPY). With ``out``, the rows are written into it (or into a
    larger bytearray when it is too small) and a view of them is returned (``view.obj`` is the buffer
    to pass next time): a fresh ~1 MB payload per commit cost as much again in page faults on this
    machine as the encoding itself (the allocator maps such buffers anew every time).
    """
    null = np.isnan(values)
    n_null = int(np.count_nonzero(null))
    counts = ((_ROW, ~null if n_null else null, len(values) - n_null), (_ROW_NULL, null, n_null))
    size = len(_HEADER) + sum(count * dtype.itemsize for dtype, _, count in counts) + len(_TRAILER)
    buf = out if out is not None and len(out) >= size else bytearray(size + size // 4)
    buf[: len(_HEADER)] = _HEADER
    pos = len(_HEADER)
    for dtype, mask, count in counts:
        if count == 0:
            continue
        every = count == len(values)
        rows = np.frombuffer(buf, dtype, count, pos)
        rows["n"] = 4
        rows["l0"] = 8
        rows["t"] = time_us if every else time_us[mask]
        rows["l1"] = 8
        rows["id"] = tag_ids if every else tag_ids[mask]
        if dtype is _ROW:
            rows["l2"] = 8
            rows["v"] = values if every else values[mask]
        else:
            rows["l2"] = -1
        rows["l3"] = 2
        rows["q"] = quality if every else quality[mask]
        pos += count * dtype.itemsize
    buf[pos : pos + len(_TRAILER)] = _TRAILER
    view = memoryview(buf)[:size]
    return view if out is not None else view.tobytes()


INSERT_MAX_ROWS = 2_000
"""Chunks up to this many rows are written by one ``INSERT ... SELECT FROM unnest(...)`` statement
with binary array parameters (autocommit: one statement, one transaction), ``nexus_latest`` by a
second part of the same statement: one round trip instead of the COPY transaction's four (BEGIN,
COPY, the upsert of ``nexus_latest``, COMMIT). Measured (``python -m
bench.historian_commit --rows 1000,2000,4000,10000 --commits 100``, embedded PostgreSQL, writer
thread and server CPU per commit): at 1,000 and 2,000 rows the client pays 0.62-0.72x the COPY
path's CPU and the server the same; at 4,000 the server pays 2-7 ms more than the client saves, at
10,000 16-36 ms more. Again on 2026-12-03, after the COPY path's ``nexus_latest`` took this upsert
instead of a staging COPY (``--rows 4000,10000``): client 1.2 against 2.1-2.2 ms, server 35.6-36.8
against 27.9-30.7 ms at 4,000 rows; 1.9 against 3.0 and 99-100 against 82-84 ms at 10,000. So small
chunks (a small flow's commits: 10 devices x 100 tags a second) take the statement, larger ones (busy
flows, a backlog's catch-up) COPY, the server's fastest way in — the database shares the box. (Since
then the statements go through libpq directly, :func:`_execute`: the client's share fell again, the
server's, which draws the line, did not change.)"""


def _unnest(first: int, ordinality: str = "") -> str:
    return (
        f"unnest(${first}::timestamptz[], ${first + 1}::int8[], ${first + 2}::float8[], ${first + 3}::int2[])"
        f"{ordinality} AS u(t, i, v, q{', n' if ordinality else ''})"
    )


def _upsert_latest(select: str) -> str:
    return (
        f"INSERT INTO nexus_latest AS l (tag_id, time, value, quality) {select} "
        "ON CONFLICT (tag_id) DO UPDATE SET time = EXCLUDED.time, value = EXCLUDED.value, "
        "quality = EXCLUDED.quality WHERE EXCLUDED.time >= l.time"
    )


def _insert_points(source: str) -> str:
    return (
        "INSERT INTO nexus_points (time, tag_id, value, quality) "
        f"SELECT t, i, NULLIF(v, 'NaN'), q FROM {source} ON CONFLICT (tag_id, time) DO NOTHING"
    )


_LATEST_ROWS = f"SELECT i, t, NULLIF(v, 'NaN'), q FROM {_unnest(1)}"
INSERT_SQL = _insert_points(_unnest(1)).encode()
INSERT_WITH_LATEST_SQL = f"WITH l AS ({_upsert_latest(_LATEST_ROWS)}) {_insert_points(_unnest(5))}".encode()
UPSERT_LATEST_SQL = _upsert_latest(_LATEST_ROWS).encode()
INSERT_WITH_OWN_LATEST_SQL = (
    f"WITH u AS MATERIALIZED (SELECT * FROM {_unnest(1, ' WITH ORDINALITY')}), l AS ("
    + _upsert_latest("SELECT DISTINCT ON (i) i, t, NULLIF(v, 'NaN'), q FROM u ORDER BY i, t DESC, n DESC")
    + f") {_insert_points('u')}"
).encode()
"""The statements of :data:`INSERT_MAX_ROWS` (PostgreSQL takes NaN = NaN: ``NULLIF`` makes it NULL,
as the COPY path does), run by :func:`_execute`. The hypertable's insert is the statement itself,
``nexus_latest``'s upsert a part of it (``WITH``: the same transaction); the row count tells
inserted rows from a replay's duplicates. ``INSERT_WITH_OWN_LATEST_SQL`` takes each tag's newest row
from the chunk itself (later rows win ties, as in :class:`~connectors.historian.latest.LatestRows`):
a small flow's commit, due for ``nexus_latest`` every time with nothing left from earlier chunks,
sends its four arrays once and skips the client's merge (~0.17 ms of the writer thread a commit)."""

_BINARY = (1,) * 8


def _execute(conn: psycopg.Connection, sql: bytes, arrays: tuple[bytearray, ...]) -> int:
    """Run ``sql`` with binary array parameters through libpq itself (``PGconn.exec_params``, the
    documented ``psycopg.pq`` layer) and return the rows it changed. The arrays are built in wire
    format already, so psycopg's cursor, query conversion and dumpers had nothing to add but their
    cost: ~450 against ~250 us of the writer thread per 1,000-row commit (``nexus_latest`` too).
    A failure raises what psycopg raises: the SQLSTATE's error, ``OperationalError`` when the
    connection is gone."""
    return _rows_changed(conn, conn.pgconn.exec_params(sql, arrays, None, _BINARY[: len(arrays)], 0))


def _rows_changed(
    conn: psycopg.Connection, res: PGresult | None, status: ExecStatus = ExecStatus.COMMAND_OK
) -> int:
    """The rows a libpq result changed, or what psycopg raises for it (see :func:`_execute`)."""
    if res is not None and res.status == status:
        return int(res.command_tuples or 0)
    if res is None or conn.pgconn.status != ConnStatus.OK:
        message = (conn.pgconn if res is None else res).get_error_message()
        raise psycopg.OperationalError(f"connection lost: {message}")
    raise psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


def _copy_transaction(
    conn: psycopg.Connection, payload: memoryview, latest: tuple[bytearray, ...] | None
) -> None:
    """BEGIN, the COPY of ``payload`` into ``nexus_points``, the upsert of ``latest`` (its arrays) into
    ``nexus_latest``, COMMIT: through libpq, as :func:`_execute`. psycopg's transaction, cursor and
    ``Copy`` objects cost ~1 ms of the writer thread per commit on top of the four round trips (~3.3 ms
    for a 10,000-row commit, 100 devices x 100 tags a second; BENCHMARKS.md, issue 16). The
    connection is switched to blocking mode meanwhile (psycopg keeps it non-blocking, where
    ``PQputCopyData`` may refuse a full buffer); a failure rolls back and raises as :func:`_execute`
    does (``UniqueViolation`` for a replayed row)."""
    pg = conn.pgconn
    nonblocking = pg.nonblocking
    pg.nonblocking = 0
    try:
        _rows_changed(conn, pg.exec_(b"BEGIN"))
        try:
            _rows_changed(conn, pg.exec_(_COPY_POINTS_SQL), ExecStatus.COPY_IN)
            if pg.put_copy_data(payload) != 1 or pg.put_copy_end() != 1:
                _rows_changed(conn, None)
            res = pg.get_result()
            while pg.get_result() is not None:  # (libpq's end of the command's results)
                pass
            _rows_changed(conn, res)
            if latest is not None:
                _execute(conn, UPSERT_LATEST_SQL, latest)
            _rows_changed(conn, pg.exec_(b"COMMIT"))
        except BaseException:
            if pg.status == ConnStatus.OK and pg.transaction_status != TransactionStatus.IDLE:
                pg.exec_(b"ROLLBACK")
            raise
    finally:
        pg.nonblocking = nonblocking


_ARRAY_HEAD = struct.Struct(">iiiii")  # dimensions, has-nulls flag, element type, length, lower bound
_OID_TIMESTAMPTZ, _OID_INT8, _OID_FLOAT8, _OID_INT2 = 1184, 20, 701, 21
_ELEMENTS: dict[str, np.dtype[Any]] = {}
"""Each element type's ``(length, value)`` record (the structured dtype is made once, not per call)."""


def pg_array(values: npt.NDArray[Any], oid: int, dtype: str) -> bytearray:
    """``values`` as a binary array of element type ``oid`` (big-endian ``dtype``; no NULL elements),
    written into one buffer (a commit makes eight: the two statements' four columns).

    >>> a = pg_array(np.array([7, 8]), 20, ">i8")
    >>> len(a), bytes(a[:20]) == struct.pack(">iiiii", 1, 0, 20, 2, 1), bytes(a[20:32]).hex()
    (44, True, '000000080000000000000007')
    """
    element = _ELEMENTS.get(dtype)
    if element is None:
        element = _ELEMENTS[dtype] = np.dtype([("len", ">i4"), ("v", dtype)])
    n = len(values)
    buf = bytearray(_ARRAY_HEAD.size + n * element.itemsize)
    _ARRAY_HEAD.pack_into(buf, 0, 1, 0, oid, n, 1)
    rows = np.frombuffer(buf, element, n, _ARRAY_HEAD.size)
    rows["len"] = element.itemsize - 4
    rows["v"] = values
    return buf


def _arrays(chunk: _Chunk) -> tuple[bytearray, ...]:
    """The four parameters of :data:`INSERT_SQL`'s ``unnest``: timestamps as PostgreSQL's binary
    timestamptz (microseconds since 2000, the COPY path's encoding too), ids, values, quality."""
    return (
        pg_array(chunk.time_us, _OID_TIMESTAMPTZ, ">i8"),
        pg_array(chunk.tag_ids, _OID_INT8, ">i8"),
        pg_array(chunk.values, _OID_FLOAT8, ">f8"),
        pg_array(chunk.quality, _OID_INT2, ">i2"),
    )


class HistorianError(RuntimeError):
    """The historian writer failed; accepted rows may not be stored."""


class HistorianTimeout(HistorianError):  # noqa: N818 - the name says what happened
    """A flush did not finish within its deadline (the rows stay in the spool)."""


class HistorianClosed(HistorianError):  # noqa: N818
    """The writer was closed."""


@dataclass
class _Chunk:
    time_us: npt.NDArray[np.int64]
    tag_ids: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.tag_ids)


MERGE_ROWS = 1_024
"""Batches handed over together (a worker activation's polls) are spooled and queued as records of up
to this many rows: one encoding, one spool record and one queue entry for several device polls
instead of one each (the historian keeps only the four columns, not the device or the text). Bounded
so the records the writer holds in memory while behind (4x ``queue_batches``) stay small."""

_MERGED_DEVICE = "*"
"""The ``device_id`` of a record that merged several batches (the historian does not store it)."""


def merge_for_handover(batches: list[PointBatch]) -> list[PointBatch]:
    """``batches`` (none empty) as consecutive runs of at most :data:`MERGE_ROWS` rows, each one
    batch; a batch larger than that stays whole, a run of one is that batch itself.

    >>> b = [PointBatch.from_values(d, [1, 2], [0.5, 1.5], ts_ns=7) for d in ("a", "b")]
    >>> [(m.device_id, m.tag_ids.tolist()) for m in merge_for_handover(b)]
    [('*', [1, 2, 1, 2])]
    """
    out: list[PointBatch] = []
    run: list[PointBatch] = []
    rows = 0
    for b in batches:
        n = len(b.tag_ids)
        if run and rows + n > MERGE_ROWS:
            out.append(_merge(run))
            run, rows = [], 0
        run.append(b)
        rows += n
    if run:
        out.append(_merge(run))
    return out


def _merge(run: list[PointBatch]) -> PointBatch:
    if len(run) == 1:
        return run[0]
    return PointBatch(
        _MERGED_DEVICE,
        np.concatenate([b.ts_ns for b in run]),
        np.concatenate([b.tag_ids for b in run]),
        np.concatenate([b.values for b in run]),
        np.concatenate([b.quality for b in run]),
    )


def _chunk(batch: PointBatch) -> _Chunk:
    return _Chunk(batch.ts_ns // 1000 - PG_EPOCH_US, batch.tag_ids, batch.values, batch.quality)


class HistorianWriter:
    """Writes point batches to ``nexus_points`` through a disk spool; see the module docstring."""

    def __init__(
        self,
        config: HistorianConfig,
        tags: Mapping[int, TagInfo],
        *,
        name: str = "historian",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self.name = name
        self._tags = list(tags.values())
        self._new_tags: list[TagInfo] = []
        """Tags added since the connection upserted ``_tags`` (upserted before the next write)."""
        self._queue: queue.Queue[tuple[int, PointBatch] | None] = queue.Queue(maxsize=config.queue_batches)
        self._urgent = threading.Event()
        """Wakes the writer thread before its open chunk's deadline: a flush, a close, rows enough for
        a chunk, or a queue half full. A batch put in the queue wakes it only when no chunk is open
        (it starts the deadline), so a chunk of ``n`` batches costs ~2 wake-ups instead of ``n``."""
        self._queued_rows = 0
        """Rows put in the queue since the writer thread last drained it."""
        self._wake_rows = config.batch_rows
        """Queued rows that make the writer's open chunk due (``batch_rows`` minus what it holds)."""
        self._interval_us = INTERVAL_SECONDS[config.partition_interval] * 1_000_000
        self._lock = threading.Lock()
        self._committed = threading.Condition(self._lock)
        self._abort = threading.Event()
        self._closed = False
        self._failure: BaseException | None = None
        self._conn: psycopg.Connection | None = None
        self._mode: str | None = None
        self._partitions: set[int] = set()
        self._buf = bytearray()
        """The writer thread's COPY payload buffer, reused from commit to commit."""
        self._cols = _Chunk(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0, np.uint8))
        """The writer thread's chunk columns, reused likewise (:meth:`_gather`)."""
        self.spool = Spool(
            config.spool_dir,
            name=name,
            max_bytes=config.spool_max_bytes,
            max_age_s=config.spool_max_age_s,
            sync_interval_s=config.spool_sync_interval_s,
            on_drop=self._on_drop,
            count=_rows_in,
        )
        self._done_seq = self.spool.acked
        self._flush_target = 0
        self._flushers = 0
        self._latest_behind = False
        """Rows are committed whose tags ``nexus_latest`` does not show yet (a flush waits for them)."""
        """Every spool record up to here is committed to the database (or was dropped)."""
        self.rows_accepted = 0
        self.rows_written = 0
        self.duplicates_skipped = 0
        self.rows_dropped = 0
        self.records_dropped = 0
        self.batches_written = 0
        self.errors = 0
        self.last_error: str | None = None
        self.backlog_rows = 0
        """Rows written from the spool because they were not in the in-memory queue (a catch-up)."""
        self.cache_peak = 0
        """Most batches held in memory ahead of the write cursor (bounded: 4x ``queue_batches``)."""
        self.wakeups = 0
        """Turns of the writer thread's loop (each one a wake-up of the thread)."""
        self.paced_s = 0.0
        """Seconds a catch-up after an outage or a restart waited to keep ``drain_rows_per_s``."""
        self.recovered_records = self.spool.pending_records
        """Records found in the spool at start (accepted before the last stop or crash)."""
        if self.recovered_records:
            log.warning(
                "historian %s: %d batches from before the last stop are in the spool; writing them first",
                name, self.recovered_records,
            )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API (caller threads)

    def write(self, batch: PointBatch) -> None:
        """Accept a batch: spool it and hand it to the writer thread. Never waits for the database."""
        self.write_many((batch,))

    def write_many(self, batches: Iterable[PointBatch]) -> None:
        """Accept batches in order (one spool append and one lock for all: a worker hands over every
        batch of an activation at once), merged into records of up to :data:`MERGE_ROWS` rows.
        Never waits for the database."""
        self._check()
        batches = merge_for_handover([b for b in batches if len(b.tag_ids)])
        if not batches:
            return
        seqs = self.spool.append_each([encode_batch(b) for b in batches])
        queued = [(seq, b) for seq, b in zip(seqs, batches, strict=True) if seq is not None]
        with self._lock:
            self.rows_accepted += sum(len(b) for b in batches)
            # a full volume drops what it cannot store: counted and alerted by the spool
            self.rows_dropped += sum(len(b) for seq, b in zip(seqs, batches, strict=True) if seq is None)
            self._queued_rows += sum(len(b) for _, b in queued)
            urgent = self._queued_rows >= self._wake_rows
        for item in queued:
            try:
                self._queue.put_nowait(item)
            except queue.Full:  # the thread reads the rest back from the spool
                urgent = True
                break
        if urgent or 2 * self._queue.qsize() >= self.config.queue_batches:
            self._urgent.set()

    def add_tags(self, tags: Iterable[TagInfo]) -> None:
        """Register tags in ``nexus_tags`` before the points written after this call (a hot config
        change adds or renames tags; tag ids are stable hashes, so only new rows appear)."""
        tags = list(tags)
        with self._lock:
            known = {t.tag_id: t for t in self._tags}
            known.update((t.tag_id, t) for t in tags)
            self._tags = list(known.values())
            self._new_tags.extend(tags)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every row accepted so far is committed; ``HistorianTimeout`` after ``timeout``.

        On a timeout the rows are not lost: they stay in the spool and are written when the
        database is back (or after the next start).
        """
        deadline = time.monotonic() + timeout
        target = self.spool.last_seq
        with self._lock:
            self._flush_target = max(self._flush_target, target)
            self._flushers += 1
        try:
            self._wake()
            self._wait_flushed(target, deadline, timeout)
        finally:
            with self._lock:
                self._flushers -= 1

    def _wait_flushed(self, target: int, deadline: float, timeout: float) -> None:
        with self._committed:
            while self._done_seq < target or self._latest_behind:
                self._check_locked()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HistorianTimeout(
                        f"historian: {self._rows_pending_locked()} rows not committed within {timeout:g} s"
                        f" (they stay in the spool; last error: {self.last_error})"
                    )
                self._committed.wait(min(remaining, 0.5))

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the thread and close the spool; ``HistorianTimeout`` if rows remain.

        Rows still waiting stay in the spool folder for the next start (with a temporary spool
        folder, used when ``spool_dir`` is not set, they are lost and the error says so).
        """
        if self._closed:
            return
        try:
            if self._failure is None:
                self.flush(timeout)
        finally:
            self._closed = True
            self._abort.set()
            self._wake()
            self._thread.join(timeout=10)
            pending = self.rows_pending
            self.spool.close()
            if pending:
                where = "lost (temporary spool)" if self.spool.temporary else f"kept in {self.spool.dir}"
                log.error("historian writer closed with %d accepted rows not written: %s", pending, where)

    def _wake(self) -> None:
        self._urgent.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    @property
    def rows_pending(self) -> int:
        with self._lock:
            return self._rows_pending_locked()

    def _rows_pending_locked(self) -> int:
        return max(0, self.rows_accepted - self.rows_written - self.duplicates_skipped - self.rows_dropped)

    @property
    def mode(self) -> str | None:
        """``"timescaledb"`` or ``"native"`` once connected."""
        return self._mode

    def stats(self) -> dict[str, Any]:
        spool = self.spool.stats()
        with self._lock:
            return {
                "rows_accepted": self.rows_accepted,
                "rows_written": self.rows_written,
                "duplicates_skipped": self.duplicates_skipped,
                "rows_pending": self._rows_pending_locked(),
                "rows_dropped": self.rows_dropped,
                "backlog_rows": self.backlog_rows,
                "batches_written": self.batches_written,
                "errors": self.errors,
                "last_error": self.last_error,
                "queued_batches": self._queue.qsize(),
                "cache_peak": self.cache_peak,
                "wakeups": self.wakeups,
                "paced_s": round(self.paced_s, 3),
                "connected": self._conn is not None and not self._conn.closed,
                "mode": self._mode,
                **spool,
            }

    def __enter__(self) -> HistorianWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self) -> None:
        with self._lock:
            self._check_locked()

    def _check_locked(self) -> None:
        if self._failure is not None:
            raise HistorianError(f"historian writer failed: {self._failure!r}") from self._failure
        if self._closed:
            raise HistorianClosed("historian writer is closed")
        if not self._thread.is_alive():
            raise HistorianError("historian writer thread is not running")

    def _on_drop(self, drop: SpoolDrop) -> None:
        with self._lock:
            self.records_dropped += drop.records
            if drop.items is not None:  # the spool counted the dropped records' rows
                self.rows_dropped += drop.items
            else:
                per = self.rows_accepted / max(1, self.spool.appended)
                self.rows_dropped += round(per * drop.records)
            self._committed.notify_all()

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        cfg = self.config
        cache: dict[int, PointBatch] = {}
        parts: list[PointBatch] = []
        rows = 0
        oldest = 0.0
        next_seq = self._done_seq + 1
        last_in_buffer = self._done_seq
        cache_max = 4 * cfg.queue_batches
        catching_up = self.recovered_records > 0  # a backlog from before this start: paced
        latest = LatestRows()  # each tag's newest committed row that nexus_latest lacks
        latest_at = -math.inf
        try:
            while not self._abort.is_set():
                backlog = self.spool.last_seq >= next_seq
                timeout = max(0.0, oldest + cfg.max_delay_s - time.monotonic()) if rows else 0.5
                if latest and not rows:  # with rows, the chunk's transaction takes it
                    timeout = min(timeout, max(0.0, latest_at + cfg.latest_interval_s - time.monotonic()))
                if not backlog and rows:  # a chunk is open: wait for its deadline (or ``_urgent``)
                    with self._lock:
                        self._wake_rows = cfg.batch_rows - rows
                        enough = self._queued_rows >= self._wake_rows
                    if not enough:
                        self._urgent.wait(timeout)
                    self._urgent.clear()
                elif not backlog:  # nothing open: the next batch starts a chunk
                    try:
                        item = self._queue.get(timeout=timeout)
                    except queue.Empty:
                        item = None
                    if item is not None:
                        cache[item[0]] = item[1]
                with self._lock:
                    self._queued_rows = 0
                    self.wakeups += 1
                # take whatever else is queued without waiting; while behind, keep at most
                # ``cache_max`` of them: the rest is read back from the spool when its turn comes
                # (the cache used to grow with the backlog: the soak's RSS rose with it)
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None and len(cache) < cache_max:
                        cache[item[0]] = item[1]
                self.cache_peak = max(self.cache_peak, len(cache))
                next_seq = max(next_seq, self.spool.acked + 1)
                for seq in [s for s in cache if s < next_seq]:
                    del cache[seq]
                # gather records in spool order: from the cache when there, else from the spool
                from_spool = 0
                while rows < cfg.batch_rows and next_seq <= self.spool.last_seq:
                    got = cache.pop(next_seq, None)
                    if got is not None:
                        if not rows:
                            oldest = time.monotonic()
                        parts.append(got)
                        rows += len(got)
                        last_in_buffer = next_seq
                        next_seq += 1
                        continue
                    records = self.spool.read(next_seq - 1, max_records=max(1, cfg.queue_batches * 4))
                    if not records:
                        before, next_seq = next_seq, max(next_seq, self.spool.acked + 1)
                        if next_seq == before and self._abort.wait(0.05):  # unreadable tail: don't spin
                            raise _Aborted
                        break
                    for seq, rec in records:
                        cached = cache.pop(seq, None)
                        b = cached if cached is not None else _decode(seq, rec)
                        next_seq = seq + 1
                        last_in_buffer = seq
                        if b is None or not len(b):
                            continue
                        if not rows:
                            oldest = time.monotonic()
                        parts.append(b)
                        rows += len(b)
                        if cached is None:
                            from_spool += len(b)
                        if rows >= cfg.batch_rows:
                            break
                behind = next_seq <= self.spool.last_seq
                catching_up = catching_up and behind
                due = (
                    rows >= cfg.batch_rows
                    or behind
                    or (rows and time.monotonic() - oldest >= cfg.max_delay_s)
                )
                flush_wanted = self._flush_waiting()
                latest_due = flush_wanted or time.monotonic() - latest_at >= cfg.latest_interval_s
                if rows and (due or flush_wanted):
                    started = time.monotonic()
                    chunk = self._gather(parts)
                    if latest_due and not latest and len(chunk) <= INSERT_MAX_ROWS:
                        newest: _Chunk | None = chunk  # the statement takes them from the chunk
                    else:
                        latest.merge(chunk.time_us, chunk.tag_ids, chunk.values, chunk.quality)
                        newest = _Chunk(*latest.peek()) if latest_due else None
                    if self._write_with_retry(chunk, newest):
                        catching_up = True  # an outage: its backlog is paced
                    if latest_due:
                        latest.clear()
                        latest_at = time.monotonic()
                    with self._lock:
                        self.backlog_rows += from_spool
                    if catching_up and behind:  # so live rows and other clients keep room
                        spare = rows / cfg.drain_rows_per_s - (time.monotonic() - started)
                        if spare > 0:
                            self.paced_s += spare
                            if self._abort.wait(spare):
                                break
                    parts, rows = [], 0
                elif not rows and latest and latest_due:  # only nexus_latest is behind
                    if self._write_with_retry(None, _Chunk(*latest.peek())):
                        catching_up = True
                    latest.clear()
                    latest_at = time.monotonic()
                if not rows and (last_in_buffer > self._done_seq or self._latest_behind != bool(latest)):
                    self.spool.ack(last_in_buffer)
                    with self._committed:
                        self._done_seq = max(self._done_seq, last_in_buffer)
                        self._latest_behind = bool(latest)
                        self._committed.notify_all()
        except _Aborted:
            pass
        except BaseException as exc:
            self._failure = exc
            with self._lock:
                self.errors += 1
                self.last_error = repr(exc)
            log.exception("historian writer stopped")
        finally:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            with self._committed:
                self._committed.notify_all()

    def _flush_waiting(self) -> bool:
        return self._flush_target > self._done_seq or (self._latest_behind and self._flushers > 0)

    def _connect(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = psycopg.connect(
            self.config.url,
            autocommit=True,
            connect_timeout=self.config.connect_timeout_s,
            application_name="nexus-historian",
        )
        try:
            self._mode = ensure_schema(conn, self.config)
            with self._lock:
                tags, self._new_tags = list(self._tags), []
            upsert_tags(conn, tags)
        except BaseException:
            conn.close()
            raise
        self._partitions.clear()
        self._conn = conn
        return conn

    def _write_with_retry(self, chunk: _Chunk | None, latest: _Chunk | None) -> bool:
        """Write ``chunk`` (and upsert ``latest`` into ``nexus_latest`` in the same transaction),
        retrying until it is stored; whether it had to wait for the database."""
        attempt = 0
        outage_since: float | None = None
        while True:
            try:
                conn = self._connect()
                with self._lock:
                    new_tags, self._new_tags = self._new_tags, []
                if new_tags:  # a hot change added tags: registered before their first points
                    try:
                        upsert_tags(conn, new_tags)
                    except BaseException:
                        with self._lock:
                            self._new_tags[:0] = new_tags
                        raise
                if self._mode == "native" and chunk is not None:
                    self._ensure_partitions(conn, chunk.time_us)
                self._copy(conn, chunk, latest)
                if outage_since is not None:
                    log.warning("historian: database back after %.1f s", time.monotonic() - outage_since)
                return outage_since is not None
            except psycopg.Error as exc:  # connection lost, server restarting, deadlock...
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                delay = min(self.config.retry_max_s, self.config.retry_initial_s * 2**attempt)
                attempt += 1
                with self._lock:
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc.sqlstate or 'connection'}"
                if outage_since is None:
                    outage_since = time.monotonic()
                    level = logging.WARNING if isinstance(exc, psycopg.OperationalError) else logging.ERROR
                    log.log(
                        level,
                        "historian: write failed (%s); rows stay in the spool, retrying",
                        self.last_error,
                    )
                else:
                    log.debug("historian: retry %d failed (%s)", attempt, self.last_error)
                if self._abort.wait(delay):
                    raise _Aborted from None

    def _ensure_partitions(self, conn: psycopg.Connection, time_us: npt.NDArray[np.int64]) -> None:
        # partitions are aligned on the Unix epoch, in UTC
        iv = self._interval_us
        first, last = (int(time_us.min()) + PG_EPOCH_US) // iv, (int(time_us.max()) + PG_EPOCH_US) // iv
        if last - first < 4 and all(k * iv in self._partitions for k in range(first, last + 1)):
            return  # the common case: every row in a partition made before (no sort needed)
        unix_us = time_us + PG_EPOCH_US
        starts = (np.unique(unix_us // iv) * iv).tolist()
        # bounded: only ranges near the clock get their own partition, the rest go to DEFAULT
        now_us = self._clock() * 1e6
        lo = now_us - self.config.partition_past_s * 1e6 - self._interval_us
        hi = now_us + self.config.partition_future_s * 1e6
        missing = [s for s in starts if lo <= s <= hi and s not in self._partitions]
        if missing:
            self._partitions.update(ensure_partitions(conn, missing, self._interval_us // 1_000_000))

    def _gather(self, parts: list[PointBatch]) -> _Chunk:
        """``parts`` as one chunk, in column arrays the writer thread reuses from commit to commit
        (valid until the next call; see :func:`encode_copy_binary` on why). The timestamps are
        converted once, after the concatenation (per part it was ~40 us each on a cold thread)."""
        if len(parts) == 1:
            return _chunk(parts[0])
        n = sum(len(p) for p in parts)
        cols = self._cols
        if len(cols) < n:
            cap = n + n // 4
            cols = self._cols = _Chunk(
                np.empty(cap, np.int64),
                np.empty(cap, np.int64),
                np.empty(cap, np.float64),
                np.empty(cap, np.uint8),
            )
        out = _Chunk(cols.time_us[:n], cols.tag_ids[:n], cols.values[:n], cols.quality[:n])
        np.concatenate([p.ts_ns for p in parts], out=out.time_us)
        np.floor_divide(out.time_us, 1000, out=out.time_us)
        out.time_us -= PG_EPOCH_US
        np.concatenate([p.tag_ids for p in parts], out=out.tag_ids)
        np.concatenate([p.values for p in parts], out=out.values)
        np.concatenate([p.quality for p in parts], out=out.quality)
        return out

    def _insert(self, conn: psycopg.Connection, chunk: _Chunk | None, latest: _Chunk | None) -> None:
        """Write a chunk of at most :data:`INSERT_MAX_ROWS` (and ``nexus_latest``) in one statement:
        one round trip instead of the COPY path's four, a replay's duplicates skipped by the statement
        itself (see :data:`INSERT_MAX_ROWS`). ``latest`` may be the chunk itself: each tag's newest row
        of it, picked by the statement."""
        if chunk is None:
            if latest is not None:
                _execute(conn, UPSERT_LATEST_SQL, _arrays(latest))
            return
        if latest is None:
            inserted = _execute(conn, INSERT_SQL, _arrays(chunk))
        elif latest is chunk:
            inserted = _execute(conn, INSERT_WITH_OWN_LATEST_SQL, _arrays(chunk))
        else:
            inserted = _execute(conn, INSERT_WITH_LATEST_SQL, _arrays(latest) + _arrays(chunk))
        with self._lock:
            self.rows_written += inserted
            self.duplicates_skipped += len(chunk) - inserted
            self.batches_written += 1

    def _encode(self, chunk: _Chunk) -> memoryview:
        """``chunk`` as a COPY payload in the writer's reused buffer."""
        view = encode_copy_binary(chunk.time_us, chunk.tag_ids, chunk.values, chunk.quality, self._buf)
        assert isinstance(view, memoryview) and isinstance(view.obj, bytearray)
        self._buf = view.obj  # grown if it had to be
        return view

    def _copy(self, conn: psycopg.Connection, chunk: _Chunk | None, latest: _Chunk | None) -> None:
        if chunk is None or len(chunk) <= INSERT_MAX_ROWS:
            self._insert(conn, chunk, latest)
            return
        if latest is chunk:  # (the caller picks this for small chunks only: each tag once here)
            newest = LatestRows()
            newest.merge(chunk.time_us, chunk.tag_ids, chunk.values, chunk.quality)
            latest = _Chunk(*newest.peek())
        latest_arrays = None if latest is None else _arrays(latest)
        payload = self._encode(chunk)
        n = len(chunk)
        try:
            _copy_transaction(conn, payload, latest_arrays)
            inserted = n
        except psycopg.errors.UniqueViolation:
            # a replay: some rows are already stored; keep the stored ones
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS nexus_points_stage "
                    "(time timestamptz, tag_id bigint, value double precision, quality smallint) "
                    "ON COMMIT DELETE ROWS"
                )
                with cur.copy(COPY_STAGE) as copy:
                    copy.write(payload)
                cur.execute(
                    "INSERT INTO nexus_points (time, tag_id, value, quality) "
                    "SELECT time, tag_id, value, quality FROM nexus_points_stage "
                    "ON CONFLICT (tag_id, time) DO NOTHING"
                )
                inserted = max(cur.rowcount, 0)
                if latest_arrays is not None:
                    _execute(conn, UPSERT_LATEST_SQL, latest_arrays)
        with self._lock:
            self.rows_written += inserted
            self.duplicates_skipped += n - inserted
            self.batches_written += 1


class _Aborted(Exception):  # noqa: N818
    """Internal: close() gave up while the database was unreachable."""


def _rows_in(record: memoryview) -> int:
    """Rows of one spooled batch (the spool counts what it drops)."""
    return len(decode_batch(record))


def _decode(seq: int, record: memoryview) -> PointBatch | None:
    try:
        return decode_batch(record)
    except (ValueError, UnicodeDecodeError) as exc:
        log.error("historian: spool record %d is not a point batch (%s); skipped", seq, exc)
        return None
