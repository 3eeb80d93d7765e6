"""The historian writer: a background thread that batches points and writes them by binary COPY.

Rows are buffered until ``batch_rows`` are waiting or the oldest has waited ``max_delay_s``, then written
in one transaction. A replayed chunk (unique violation on ``(tag_id, time)``) is rewritten through a
staging table with ``ON CONFLICT DO NOTHING``, so replays never duplicate. Connection failures are
retried with exponential backoff; meanwhile accepted rows stay in memory and :meth:`HistorianWriter.write`
blocks once the bounded queue is full (back-pressure). There is no disk spool.

>>> payload = encode_copy_binary(np.array([0]), np.array([7]), np.array([1.5]), np.array([0], np.uint8))
>>> payload[:11], len(payload)
(b'PGCOPY\\n\\xff\\r\\n\\x00', 65)
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from connectors.historian.config import INTERVAL_SECONDS, HistorianConfig
from connectors.historian.latest import last_per_tag, write_latest
from connectors.historian.schema import PG_EPOCH_US, ensure_partitions, ensure_schema, upsert_tags
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
) -> bytes:
    """One PostgreSQL binary COPY payload for ``(time, tag_id, value, quality)`` rows; NaN becomes NULL.

    ``time_us`` counts microseconds since 2000-01-01 UTC. Rows with a NULL value are written after the
    others (row order means nothing to COPY).
    """
    null = np.isnan(values)
    parts = [_HEADER]
    for dtype, mask in ((_ROW, ~null), (_ROW_NULL, null)):
        count = int(mask.sum())
        if count == 0:
            continue
        every = count == len(values)
        rows = np.empty(count, dtype)
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
        parts.append(rows.tobytes())
    parts.append(_TRAILER)
    return b"".join(parts)


class HistorianError(RuntimeError):
    """The historian writer failed; accepted rows may not be stored."""


class HistorianTimeout(HistorianError):  # noqa: N818 - the name says what happened
    """A flush or a blocked write did not finish within its deadline."""


class HistorianClosed(HistorianError):  # noqa: N818
    """The writer was closed."""


@dataclass(frozen=True)
class _Tags:
    tags: tuple[TagInfo, ...]


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


@dataclass
class _Chunk:
    time_us: npt.NDArray[np.int64]
    tag_ids: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.tag_ids)


class HistorianWriter:
    """Writes point batches to ``nexus_points`` from a background thread; see the module docstring."""

    def __init__(
        self, config: HistorianConfig, tags: Mapping[int, TagInfo], *, name: str = "historian"
    ) -> None:
        self.config = config
        self._tags = list(tags.values())
        self._new_tags: list[TagInfo] = []
        """Tags added since the connection upserted ``_tags`` (written before the next chunk)."""
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_batches)
        self._interval_us = INTERVAL_SECONDS[config.partition_interval] * 1_000_000
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._closed = False
        self._failure: BaseException | None = None
        self._conn: psycopg.Connection | None = None
        self._mode: str | None = None
        self._partitions: set[int] = set()
        self.rows_accepted = 0
        self.rows_written = 0
        self.duplicates_skipped = 0
        self.batches_written = 0
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API (caller threads)

    def write(self, batch: PointBatch) -> None:
        """Accept a batch; blocks while the queue is full (back-pressure)."""
        if len(batch) == 0:
            self._check()
            return
        self._put(batch, None)
        with self._lock:
            self.rows_accepted += len(batch)

    def add_tags(self, tags: Iterable[TagInfo]) -> None:
        """Register tags in ``nexus_tags`` before the points written after this call (a hot config
        change adds or renames tags; tag ids are stable hashes, so only new rows appear)."""
        self._put(_Tags(tuple(tags)), None)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every row accepted so far is committed; ``HistorianTimeout`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        marker = _Flush()
        self._put(marker, deadline)
        while not marker.done.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            self._check()
            if time.monotonic() >= deadline:
                raise HistorianTimeout(
                    f"historian: {self.rows_pending} rows not committed within {timeout:g} s"
                    f" (last error: {self.last_error})"
                )
        self._check()

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the thread and disconnect. Raises if rows could not be committed in time."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self.flush(timeout)
        finally:
            self._closed = True
            self._abort.set()
            with contextlib.suppress(queue.Full):  # when full, the thread sees the abort flag
                self._queue.put_nowait(_STOP)
            self._thread.join(timeout=10)
            pending = self.rows_pending
            if pending:
                log.error("historian writer closed with %d accepted rows not written", pending)

    @property
    def rows_pending(self) -> int:
        with self._lock:
            return self.rows_accepted - self.rows_written - self.duplicates_skipped

    @property
    def mode(self) -> str | None:
        """``"timescaledb"`` or ``"native"`` once connected."""
        return self._mode

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rows_accepted": self.rows_accepted,
                "rows_written": self.rows_written,
                "duplicates_skipped": self.duplicates_skipped,
                "rows_pending": self.rows_accepted - self.rows_written - self.duplicates_skipped,
                "batches_written": self.batches_written,
                "errors": self.errors,
                "last_error": self.last_error,
                "queued_batches": self._queue.qsize(),
                "connected": self._conn is not None and not self._conn.closed,
                "mode": self._mode,
            }

    def __enter__(self) -> HistorianWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._failure is not None:
            raise HistorianError(f"historian writer failed: {self._failure!r}") from self._failure
        if self._closed:
            raise HistorianClosed("historian writer is closed")
        if not self._thread.is_alive():
            raise HistorianError("historian writer thread is not running")

    def _put(self, item: object, deadline: float | None) -> None:
        while True:
            self._check()
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                raise HistorianTimeout("historian: the write queue stayed full until the deadline")
            try:
                self._queue.put(item, timeout=wait)
                return
            except queue.Full:
                continue  # re-check the writer's health, then keep waiting

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        parts: list[_Chunk] = []
        rows = 0
        oldest = 0.0
        cfg = self.config
        try:
            while True:
                timeout = None if not rows else max(0.0, oldest + cfg.max_delay_s - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if isinstance(item, _Tags):
                    known = {t.tag_id: t for t in self._tags}
                    known.update((t.tag_id, t) for t in item.tags)
                    self._tags = list(known.values())
                    self._new_tags.extend(item.tags)
                    if rows:  # points of the old tags go first; the new tags are upserted before them
                        self._write_with_retry(_concat(parts))
                        parts, rows = [], 0
                    self._register_new_tags()
                elif isinstance(item, PointBatch):
                    if not rows:
                        oldest = time.monotonic()
                    parts.append(
                        _Chunk(item.ts_ns // 1000 - PG_EPOCH_US, item.tag_ids, item.values, item.quality)
                    )
                    rows += len(item)
                due = rows >= cfg.batch_rows or (rows and time.monotonic() - oldest >= cfg.max_delay_s)
                if rows and (due or isinstance(item, _Flush) or item is _STOP):
                    self._write_with_retry(_concat(parts))
                    parts, rows = [], 0
                if isinstance(item, _Flush):
                    item.done.set()
                if item is _STOP:
                    break
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
            # wake anyone waiting on a flush marker; they will see the failure or the close
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Flush):
                    item.done.set()

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
            upsert_tags(conn, self._tags)
        except BaseException:
            conn.close()
            raise
        self._partitions.clear()
        self._new_tags.clear()  # all of `_tags` were just upserted
        self._conn = conn
        return conn

    def _register_new_tags(self) -> None:
        """Upsert the tags added since the last connect; on a database outage the next connect
        upserts every tag anyway, so a failure here is only logged."""
        if not self._new_tags or self._conn is None or self._conn.closed:
            return
        try:
            upsert_tags(self._conn, self._new_tags)
            self._new_tags.clear()
        except psycopg.OperationalError as exc:
            log.warning(
                "historian: registering %d new tags failed (%s); retried at reconnect",
                len(self._new_tags),
                type(exc).__name__,
            )
            self._conn.close()
            self._conn = None

    def _write_with_retry(self, chunk: _Chunk) -> None:
        attempt = 0
        outage_since: float | None = None
        while True:
            try:
                conn = self._connect()
                if self._new_tags:
                    upsert_tags(conn, self._new_tags)
                    self._new_tags.clear()
                if self._mode == "native":
                    self._ensure_partitions(conn, chunk.time_us)
                self._copy(conn, chunk)
                if outage_since is not None:
                    log.warning("historian: database back after %.1f s", time.monotonic() - outage_since)
                return
            except psycopg.OperationalError as exc:  # connection lost, server restarting, deadlock...
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
                    log.warning("historian: write failed (%s); retrying with backoff", self.last_error)
                else:
                    log.debug("historian: retry %d failed (%s)", attempt, self.last_error)
                if self._abort.wait(delay):
                    raise _Aborted from None

    def _ensure_partitions(self, conn: psycopg.Connection, time_us: npt.NDArray[np.int64]) -> None:
        # partitions are aligned on the Unix epoch, in UTC
        unix_us = time_us + PG_EPOCH_US
        starts = (np.unique(unix_us // self._interval_us) * self._interval_us).tolist()
        missing = [s for s in starts if s not in self._partitions]
        if missing:
            self._partitions.update(ensure_partitions(conn, missing, self._interval_us // 1_000_000))

    def _copy(self, conn: psycopg.Connection, chunk: _Chunk) -> None:
        payload = encode_copy_binary(chunk.time_us, chunk.tag_ids, chunk.values, chunk.quality)
        n = len(chunk)
        latest = last_per_tag(chunk.time_us, chunk.tag_ids)
        latest_payload = encode_copy_binary(
            chunk.time_us[latest], chunk.tag_ids[latest], chunk.values[latest], chunk.quality[latest]
        )
        try:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(COPY_POINTS) as copy:
                    copy.write(payload)
                write_latest(cur, latest_payload)
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
                write_latest(cur, latest_payload)
        with self._lock:
            self.rows_written += inserted
            self.duplicates_skipped += n - inserted
            self.batches_written += 1


class _Aborted(Exception):  # noqa: N818
    """Internal: close() gave up while the database was unreachable."""


def _concat(parts: list[_Chunk]) -> _Chunk:
    if len(parts) == 1:
        return parts[0]
    return _Chunk(
        np.concatenate([p.time_us for p in parts]),
        np.concatenate([p.tag_ids for p in parts]),
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.quality for p in parts]),
    )
