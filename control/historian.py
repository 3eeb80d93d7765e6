"""Historian queries: the one module of SQL the API reads the historian with.

Tables (``connectors/historian``): ``nexus_tags`` (tag dimension), ``nexus_points`` (raw), ``nexus_latest``
(newest point per tag, kept by the writer), ``nexus_agg_10s`` / ``nexus_agg_1m`` (window aggregates, when a
flow has those windows), ``nexus_alerts``, ``nexus_oee``.

- Bucketing uses ``time_bucket`` when TimescaleDB is installed in the database and ``date_bin`` otherwise,
  decided once in :meth:`Historian.open`; both are anchored on the Unix epoch so buckets line up with the
  pre-aggregated tables.
- A range query picks its source by bucket: a bucket that is a whole number of minutes reads
  ``nexus_agg_1m``, of 10 seconds ``nexus_agg_10s``, anything else raw ``nexus_points``. Tags the
  aggregate table has no rows for (no window operator covers them) are answered from raw points.
- ``max_points`` sets the bucket (the smallest "nice" step that gives at most that many buckets).
- Bad requests raise :mod:`control.errors` classes (the API maps them to problem+json), never a database
  error: inverted or empty ranges, too many buckets, unknown tags.

>>> nice_bucket(timedelta(days=1), 1000)
datetime.timedelta(seconds=120)
>>> nice_bucket(timedelta(hours=1), 10_000)
datetime.timedelta(seconds=1)
>>> pick_source(timedelta(minutes=5), {"nexus_agg_1m", "nexus_agg_10s"})
'nexus_agg_1m'
>>> pick_source(timedelta(seconds=30), {"nexus_agg_1m", "nexus_agg_10s"})
'nexus_agg_10s'
>>> pick_source(timedelta(seconds=30), set())
'nexus_points'
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from control.errors import InvalidError, NotFoundError, TooLargeError, UnavailableError, aware_utc

__all__ = [
    "AGG_FIELDS",
    "MAX_BUCKETS",
    "MAX_RAW_POINTS",
    "MAX_TAGS",
    "Historian",
    "nice_bucket",
    "pick_source",
]

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_BUCKETS = 10_000
"""``max_points`` (buckets per tag) above this is refused: a chart needs a few thousand at most."""
MAX_RAW_POINTS = 100_000
"""One raw page holds at most this many points; ``next`` continues."""
MAX_TAGS = 10_000
"""Tags in one request."""
MAX_SPAN = timedelta(days=3660)
_ALERT_ID = re.compile(r"^(-?[0-9]{1,19}):([A-Za-z0-9_.\-]{1,64}):(-?[0-9]{1,19})$")
_ACKS_DDL = """
CREATE TABLE IF NOT EXISTS nexus_alert_acks (
    tag_id bigint NOT NULL,
    kind text NOT NULL,
    raised_at timestamptz NOT NULL,
    acked_by text NOT NULL,
    acked_at timestamptz NOT NULL,
    PRIMARY KEY (tag_id, kind, raised_at)
)"""
"""Who acknowledged which raised alert (the alert rows themselves are written by the flows only)."""
AGG_FIELDS = ("min", "max", "avg", "count", "sum", "first", "last", "twa")
_NICE_STEPS_S = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
    172800, 604800,
)  # fmt: skip
_AGG_TABLES = {"nexus_agg_1m": 60, "nexus_agg_10s": 10}
_RAW_EXPR = {
    "min": "min(value)",
    "max": "max(value)",
    "avg": "avg(value)",
    "count": "count(value)",
    "sum": "sum(value)",
    "first": "(array_agg(value ORDER BY time))[1]",
    "last": "(array_agg(value ORDER BY time DESC))[1]",
    "twa": "NULL::float8",
}
_REAGG_EXPR = {
    "min": "min(min)",
    "max": "max(max)",
    "avg": "CASE WHEN sum(count) > 0 THEN sum(sum) / sum(count) END",
    "count": "sum(count)::bigint",
    "sum": "sum(sum)",
    "first": "(array_agg(first ORDER BY bucket))[1]",
    "last": "(array_agg(last ORDER BY bucket DESC))[1]",
    "twa": "avg(twa)",
}
_CSV_FETCH = 5000

Source = Literal["nexus_points", "nexus_agg_10s", "nexus_agg_1m"]


def nice_bucket(span: timedelta, max_points: int) -> timedelta:
    """The smallest step of 1-2-5 style (1 s ... 1 week, then whole weeks) giving ≤ ``max_points`` buckets."""
    need = span.total_seconds() / max(1, max_points)
    for step in _NICE_STEPS_S:
        if step >= need:
            return timedelta(seconds=step)
    return timedelta(seconds=604800 * math.ceil(need / 604800))


def pick_source(bucket: timedelta, available: set[str]) -> Source:
    """The coarsest pre-aggregated table whose window divides the bucket, else raw points."""
    seconds = bucket.total_seconds()
    for table, window in _AGG_TABLES.items():
        if table in available and seconds >= window and seconds % window == 0:
            return table  # type: ignore[return-value]
    return "nexus_points"


def check_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Both ends timezone-aware, ``start < end``, not longer than ten years."""
    start, end = aware_utc(start, "query.start"), aware_utc(end, "query.end")
    if end <= start:
        raise InvalidError(
            "the range is empty or inverted",
            [("query.end", f"end ({end.isoformat()}) must be after start ({start.isoformat()})")],
        )
    if end - start > MAX_SPAN:
        raise InvalidError("the range is too long", [("query.start", "at most 3660 days per query")])
    return start, end


def _check_tags(tag_ids: Sequence[int]) -> list[int]:
    ids = list(dict.fromkeys(int(t) for t in tag_ids))
    if not ids:
        raise InvalidError("no tag given", [("query.tag", "give at least one tag id")])
    if len(ids) > MAX_TAGS:
        raise InvalidError("too many tags", [("query.tag", f"at most {MAX_TAGS} tags per request")])
    bad = [t for t in ids if not -(2**63) <= t < 2**63]
    if bad:
        raise InvalidError("tag id out of range", [("query.tag", f"{bad[0]} is not a 64-bit integer")])
    return ids


@dataclass(frozen=True, slots=True)
class AggregatePlan:
    """How an aggregate query is answered (returned with the result so a client can see it)."""

    bucket: timedelta
    source: Source


class Historian:
    """Read access to the historian through a small async connection pool.

    Use a read-only database role in production (the queries never write); each session is put in
    read-only mode and UTC regardless.
    """

    def __init__(
        self,
        database_url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        statement_timeout_ms: int = 30_000,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.database_url = database_url
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self._pool_args = {"min_size": min_size, "max_size": max_size}
        self._pool = self._new_pool()
        self.bucket_function: Literal["time_bucket", "date_bin"] = "date_bin"
        self._tables: set[str] = set()
        self._tables_checked = 0.0
        self._opened = False
        self._open_lock = asyncio.Lock()

    def _new_pool(self) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            self.database_url,
            min_size=self._pool_args["min_size"],
            max_size=self._pool_args["max_size"],
            open=False,
            configure=self._configure,
            kwargs={"connect_timeout": math.ceil(self.connect_timeout_s), "application_name": "nexus-api"},
            name="nexus-historian",
        )

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            "SELECT set_config('TimeZone', 'UTC', false), "
            "set_config('default_transaction_read_only', 'on', false), "
            "set_config('statement_timeout', %s, false)",
            (str(self.statement_timeout_ms),),
        )
        await conn.commit()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the pool and decide once between ``time_bucket`` and ``date_bin``."""
        async with self._open_lock:
            if self._opened:
                return
            await self._pool.open(wait=False)
            try:
                async with self._conn() as conn:
                    row = await (
                        await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
                    ).fetchone()
                    self.bucket_function = "time_bucket" if row else "date_bin"
                    await self._load_tables(conn)
            except psycopg.OperationalError as exc:  # PoolTimeout included
                await self._pool.close()
                self._pool = self._new_pool()
                raise UnavailableError("historian database unavailable") from exc
            except BaseException:
                await self._pool.close()
                self._pool = self._new_pool()
                raise
            self._opened = True
            log.info("historian queries use %s", self.bucket_function)

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._pool.close()

    async def _ensure_open(self) -> None:
        if not self._opened:
            await self.open()

    def _conn(self) -> Any:
        try:
            return self._pool.connection(timeout=self.connect_timeout_s)
        except Exception as exc:  # pragma: no cover - pool closed
            raise UnavailableError("historian database unavailable") from exc

    async def _load_tables(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rows = await (
            await conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')",
                ([*_AGG_TABLES, "nexus_latest", "nexus_alerts", "nexus_oee", "nexus_tags", "nexus_points"],),
            )
        ).fetchall()
        self._tables = {r[0] for r in rows}
        self._tables_checked = time.monotonic()

    async def _tables_now(self, conn: psycopg.AsyncConnection[Any]) -> set[str]:
        """Known tables; re-read every 30 s so a flow that adds a window is picked up."""
        if time.monotonic() - self._tables_checked > 30.0:
            await self._load_tables(conn)
        return self._tables

    async def _fetch(self, query: Any, params: Any = None, *, dicts: bool = False) -> list[Any]:
        await self._ensure_open()
        try:
            async with self._conn() as conn:
                if not await self._has_core_tables(conn):
                    return []
                cur = conn.cursor(row_factory=dict_row) if dicts else conn.cursor()
                async with cur:
                    await cur.execute(query, params)
                    return await cur.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise TooLargeError("the query ran longer than the statement timeout; narrow it") from exc
        except psycopg.OperationalError as exc:
            raise UnavailableError("historian database unavailable") from exc
        except psycopg.DataError as exc:  # a filter PostgreSQL cannot hold (NUL in text): bad input
            raise InvalidError("a filter cannot be queried", [("query", type(exc).__name__)]) from None

    async def _has_core_tables(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        tables = await self._tables_now(conn)
        if "nexus_tags" not in tables or "nexus_points" not in tables:
            await self._load_tables(conn)  # a writer may have created them since
        return "nexus_tags" in self._tables and "nexus_points" in self._tables

    # ------------------------------------------------------------------ tags

    async def tags(
        self, *, device: str | None = None, search: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Tags with their metadata (device, name, unit, UNS path), ordered by device and name."""
        if not 1 <= limit <= MAX_TAGS:
            raise InvalidError("bad limit", [("query.limit", f"between 1 and {MAX_TAGS}")])
        if not 0 <= offset <= 2**31:
            raise InvalidError("bad offset", [("query.offset", "between 0 and 2147483648")])
        like = None if search is None else "%" + search.replace("\\", "\\\\").replace("%", "\\%") + "%"
        return await self._fetch(
            "SELECT tag_id, device_id, name, unit, uns_path, updated_at FROM nexus_tags "
            "WHERE (%(device)s::text IS NULL OR device_id = %(device)s) "
            "AND (%(like)s::text IS NULL OR name ILIKE %(like)s OR uns_path ILIKE %(like)s) "
            "ORDER BY device_id, name, tag_id LIMIT %(limit)s OFFSET %(offset)s",
            {"device": device, "like": like, "limit": limit, "offset": offset},
            dicts=True,
        )

    async def tag(self, tag_id: int) -> dict[str, Any]:
        rows = await self._fetch(
            "SELECT tag_id, device_id, name, unit, uns_path, updated_at FROM nexus_tags WHERE tag_id = %s",
            (int(tag_id),),
            dicts=True,
        )
        if not rows:
            raise NotFoundError(f"tag {tag_id} does not exist")
        return dict(rows[0])

    async def tag_topics(self, tag_ids: Sequence[int]) -> dict[int, str]:
        """UNS topic of each known tag (the live-values subscription needs it)."""
        rows = await self._fetch(
            "SELECT tag_id, uns_path FROM nexus_tags WHERE tag_id = ANY(%s) AND uns_path IS NOT NULL",
            (list(tag_ids),),
        )
        return {int(r[0]): str(r[1]) for r in rows}

    async def _require_tags(self, conn: psycopg.AsyncConnection[Any], ids: list[int]) -> None:
        rows = await (
            await conn.execute("SELECT tag_id FROM nexus_tags WHERE tag_id = ANY(%s)", (ids,))
        ).fetchall()
        known = {r[0] for r in rows}
        missing = [t for t in ids if t not in known]
        if missing:
            shown = ", ".join(str(t) for t in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise NotFoundError(f"unknown tag(s): {shown}{more}")

    # ------------------------------------------------------------------ raw points

    async def raw(
        self, tag_ids: Sequence[int], start: datetime, end: datetime, *, limit: int = 10_000
    ) -> dict[str, Any]:
        """Raw points of the tags in ``[start, end)``, time-ordered per tag, at most ``limit`` in all.

        Answer: ``{"series": [{"tag_id", "time": [...], "value": [...], "quality": [...]}], "next": t|None}``;
        when the page is full, ``next`` is the start of the rest (repeat the query from there).
        """
        ids = _check_tags(tag_ids)
        start, end = check_range(start, end)
        if not 1 <= limit <= MAX_RAW_POINTS:
            raise InvalidError("bad limit", [("query.limit", f"between 1 and {MAX_RAW_POINTS}")])
        await self._ensure_open()
        try:
            async with self._conn() as conn:
                if not await self._has_core_tables(conn):
                    raise NotFoundError(f"unknown tag(s): {ids[0]}")
                # one tag (the common chart query): a plain equality walks the (tag_id, time) key in order
                match = "tag_id = %s" if len(ids) == 1 else "tag_id = ANY(%s)"
                rows = await (
                    await conn.execute(
                        "SELECT time, tag_id, value, quality FROM nexus_points "
                        f"WHERE {match} AND time >= %s AND time < %s ORDER BY time, tag_id LIMIT %s",
                        (ids[0] if len(ids) == 1 else ids, start, end, limit + 1),
                        binary=True,
                    )
                ).fetchall()
                seen = {r[1] for r in rows}
                if len(seen) < len(ids):  # an empty series: is the tag known at all? (one more query)
                    await self._require_tags(conn, [t for t in ids if t not in seen])
        except psycopg.errors.QueryCanceled as exc:
            raise TooLargeError("the query ran longer than the statement timeout; narrow it") from exc
        except psycopg.OperationalError as exc:
            raise UnavailableError("historian database unavailable") from exc
        next_start = None
        if len(rows) > limit:
            next_start = rows[limit][0]
            # never split one instant across pages: drop the partial last timestamp
            rows = [r for r in rows[:limit] if r[0] < next_start]
        if len(ids) == 1:  # rows are in time order: transpose them in C
            cols = _columns(rows, 4)
            series = [{"tag_id": ids[0], "time": cols[0], "value": cols[2], "quality": cols[3]}]
            return {"series": series, "next": next_start}
        by_tag: dict[int, dict[str, Any]] = {
            t: {"tag_id": t, "time": [], "value": [], "quality": []} for t in ids
        }
        for t, tag_id, value, quality in rows:
            s = by_tag[tag_id]
            s["time"].append(t)
            s["value"].append(value)
            s["quality"].append(quality)
        return {"series": list(by_tag.values()), "next": next_start}

    # ------------------------------------------------------------------ aggregates

    def plan_aggregate(
        self,
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | None = None,
        max_points: int = 1000,
        tables: set[str] | None = None,
    ) -> AggregatePlan:
        """Choose the bucket (given, or from ``max_points``) and the table to read."""
        if not 1 <= max_points <= MAX_BUCKETS:
            raise InvalidError(
                "max_points out of range", [("query.max_points", f"between 1 and {MAX_BUCKETS}")]
            )
        span = end - start
        if bucket is None:
            bucket = nice_bucket(span, max_points)
        else:
            if bucket < timedelta(seconds=1) or bucket.microseconds:
                raise InvalidError(
                    "bad bucket", [("query.bucket", "a whole number of seconds, at least 1 s")]
                )
            if span / bucket > max_points:
                raise InvalidError(
                    "too many buckets",
                    [
                        (
                            "query.bucket",
                            f"{span / bucket:.0f} buckets over the range, more than max_points={max_points}",
                        )
                    ],
                )
        return AggregatePlan(bucket, pick_source(bucket, self._tables if tables is None else tables))

    def _bucket_expr(self, column: str) -> sql.Composed:
        fn = sql.SQL(self.bucket_function)
        if self.bucket_function == "time_bucket":
            return sql.SQL("{}(%(bucket)s, {}, origin => %(origin)s)").format(fn, sql.Identifier(column))
        return sql.SQL("{}(%(bucket)s, {}, %(origin)s)").format(fn, sql.Identifier(column))

    def _aggregate_sql(
        self, source: Source, fields: Sequence[str] = AGG_FIELDS, *, direct: bool = False
    ) -> sql.Composed:
        b: sql.Composable
        tail: sql.Composable
        if source == "nexus_points":
            exprs = _RAW_EXPR
            b = self._bucket_expr("time")
            tail = sql.SQL(
                "FROM nexus_points WHERE tag_id = ANY(%(ids)s) AND time >= %(start)s AND time < %(end)s "
                "AND quality = 0 GROUP BY tag_id, 1 ORDER BY tag_id, 1"
            )
        elif direct:  # the bucket is the table's window: its rows are the answer
            exprs = {f: f for f in AGG_FIELDS}
            b = sql.SQL("bucket")
            tail = sql.SQL(
                "FROM {t} WHERE tag_id = ANY(%(ids)s) AND bucket >= %(start)s AND bucket < %(end)s "
                "ORDER BY tag_id, bucket"
            ).format(t=sql.Identifier(source))
        else:
            exprs = _REAGG_EXPR
            b = self._bucket_expr("bucket")
            tail = sql.SQL(
                "FROM {t} WHERE tag_id = ANY(%(ids)s) AND bucket >= %(start)s AND bucket < %(end)s "
                "GROUP BY tag_id, 1 ORDER BY tag_id, 1"
            ).format(t=sql.Identifier(source))
        cols = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(sql.SQL(exprs[f]), sql.Identifier(f"f_{f}"))  # type: ignore[arg-type]
            for f in fields
        )
        return sql.SQL("SELECT {b} AS b, tag_id, {cols} {tail}").format(b=b, cols=cols, tail=tail)

    def _aggregate_json_sql(self, source: Source, fields: Sequence[str], *, direct: bool) -> sql.Composed:
        """One JSON text per tag, built by PostgreSQL: the API passes it through without touching a value."""
        parts: list[sql.Composable] = [
            sql.SQL("'tag_id', tag_id, 'source', {}::text, 'bucket', json_agg(b ORDER BY b)").format(
                sql.Literal(source)
            )
        ]
        for f in fields:
            parts.append(
                sql.SQL("{}, json_agg({} ORDER BY b)").format(sql.Literal(f), sql.Identifier(f"f_{f}"))
            )
        return sql.SQL("SELECT tag_id, json_build_object({})::text FROM ({}) s GROUP BY tag_id").format(
            sql.SQL(", ").join(parts), self._aggregate_sql(source, fields, direct=direct)
        )

    async def aggregates(
        self,
        tag_ids: Sequence[int],
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | None = None,
        max_points: int = 1000,
        fields: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Bucketed min/max/avg/count/sum/first/last/twa (or the ``fields`` asked for) of each tag over
        ``[start, end)``.

        Answer: ``{"bucket": seconds, "source": table, "series": [{"tag_id", "source", "bucket": [...],
        "min": [...], ...}]}``. Raw buckets count good-quality points only; ``twa`` is null for them.
        """
        plan, wanted, ids, by_tag = await self._aggregate(
            tag_ids, start, end, bucket=bucket, max_points=max_points, fields=fields
        )
        series = []
        for t in ids:
            got = by_tag.get(t)
            series.append(got or {"tag_id": t, "source": plan.source, **{k: [] for k in ("bucket", *wanted)}})
        return {"bucket": plan.bucket.total_seconds(), "source": plan.source, "series": series}

    async def aggregates_json(
        self,
        tag_ids: Sequence[int],
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | None = None,
        max_points: int = 1000,
        fields: Sequence[str] | None = None,
    ) -> bytes:
        """:meth:`aggregates` as a JSON document that PostgreSQL built (timestamps as ``+00:00``).

        For the API: a day of 1-minute buckets for 100 tags is 144,000 rows; turning them into Python
        objects and back into JSON costs the API process more than the query itself.
        """
        plan, wanted, ids, by_tag = await self._aggregate(
            tag_ids, start, end, bucket=bucket, max_points=max_points, fields=fields, as_json=True
        )
        empty = "".join(f', "{k}": []' for k in wanted)
        series = [
            by_tag.get(t) or f'{{"tag_id": {t}, "source": "{plan.source}", "bucket": []{empty}}}' for t in ids
        ]
        head = f'{{"bucket": {plan.bucket.total_seconds()!r}, "source": "{plan.source}", "series": ['
        return (head + ", ".join(series) + "]}").encode()

    async def _aggregate(
        self,
        tag_ids: Sequence[int],
        start: datetime,
        end: datetime,
        *,
        bucket: timedelta | None,
        max_points: int,
        fields: Sequence[str] | None,
        as_json: bool = False,
    ) -> tuple[AggregatePlan, tuple[str, ...], list[int], dict[int, Any]]:
        ids = _check_tags(tag_ids)
        start, end = check_range(start, end)
        wanted = _check_fields(fields)
        await self._ensure_open()
        try:
            async with self._conn() as conn:
                if not await self._has_core_tables(conn):
                    raise NotFoundError(f"unknown tag(s): {ids[0]}")
                plan = self.plan_aggregate(
                    start, end, bucket=bucket, max_points=max_points, tables=await self._tables_now(conn)
                )
                params = {
                    "bucket": plan.bucket,
                    "origin": EPOCH,
                    "start": start,
                    "end": end,
                    "fields": wanted,
                }
                rows_of = self._aggregate_json_rows if as_json else self._aggregate_rows
                by_tag = await rows_of(conn, plan.source, ids, params)
                missing = [t for t in ids if t not in by_tag]
                if missing:
                    await self._require_tags(conn, missing)
                if plan.source != "nexus_points" and missing:
                    # no window operator covers these tags: answer them from raw points
                    by_tag.update(await rows_of(conn, "nexus_points", missing, params))
        except psycopg.errors.QueryCanceled as exc:
            raise TooLargeError("the query ran longer than the statement timeout; narrow it") from exc
        except psycopg.OperationalError as exc:
            raise UnavailableError("historian database unavailable") from exc
        return plan, wanted, ids, by_tag

    async def _aggregate_json_rows(
        self, conn: psycopg.AsyncConnection[Any], source: Source, ids: list[int], params: dict[str, Any]
    ) -> dict[int, Any]:
        direct = _AGG_TABLES.get(source) == params["bucket"].total_seconds()
        query = self._aggregate_json_sql(source, params["fields"], direct=direct)
        rows = await (await conn.execute(query, {**params, "ids": ids})).fetchall()
        return {int(r[0]): r[1] for r in rows}

    async def _aggregate_rows(
        self, conn: psycopg.AsyncConnection[Any], source: Source, ids: list[int], params: dict[str, Any]
    ) -> dict[int, Any]:
        fields = params["fields"]
        direct = _AGG_TABLES.get(source) == params["bucket"].total_seconds()
        query = self._aggregate_sql(source, fields, direct=direct)
        rows = await (await conn.execute(query, {**params, "ids": ids}, binary=True)).fetchall()
        # rows come ordered by tag, then bucket: transpose once, then cut each column at the tag changes
        cols = _columns(rows, 2 + len(fields))
        out: dict[int, Any] = {}
        tags = cols[1]
        lo = 0
        for hi in (*_changes(tags), len(tags)):
            if hi > lo:
                out[tags[lo]] = {
                    "tag_id": tags[lo],
                    "source": source,
                    "bucket": cols[0][lo:hi],
                    **{k: c[lo:hi] for k, c in zip(fields, cols[2:], strict=True)},
                }
            lo = hi
        return out

    # ------------------------------------------------------------------ latest

    async def latest(self, tag_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Newest stored point of each tag, by tag id (all tags when ``tag_ids`` is None); unknown ids → 404.

        With ``nexus_latest`` the common case is one primary-key read of the ids asked for; only when some
        have no row does a second query tell tags without a value (nulls) from unknown ids (404).
        """
        ids = None if tag_ids is None else _check_tags(tag_ids)
        await self._ensure_open()
        try:
            async with self._conn() as conn:
                if not await self._has_core_tables(conn):
                    if ids:
                        raise NotFoundError(f"unknown tag(s): {ids[0]}")
                    return []
                tables = await self._tables_now(conn)
                if "nexus_latest" in tables and ids is not None:
                    rows = await (
                        await conn.execute(
                            "SELECT tag_id, time, value, quality FROM nexus_latest "
                            "WHERE tag_id = ANY(%s) ORDER BY tag_id",
                            (ids,),
                            binary=True,
                        )
                    ).fetchall()
                    if len(rows) < len(ids):
                        have = {r[0] for r in rows}
                        rest = [t for t in ids if t not in have]
                        await self._require_tags(conn, rest)  # raises for unknown ids
                        rows = sorted([*rows, *((t, None, None, None) for t in rest)], key=lambda r: r[0])
                else:
                    rows = await self._latest_joined(conn, ids, "nexus_latest" in tables)
        except psycopg.errors.QueryCanceled as exc:
            raise TooLargeError("the query ran longer than the statement timeout; narrow it") from exc
        except psycopg.OperationalError as exc:
            raise UnavailableError("historian database unavailable") from exc
        return [{"tag_id": r[0], "time": r[1], "value": r[2], "quality": r[3]} for r in rows]

    async def _latest_joined(
        self, conn: psycopg.AsyncConnection[Any], ids: list[int] | None, has_latest: bool
    ) -> list[Any]:
        """Every tag (``ids`` None), or a store without ``nexus_latest`` (one index descent per tag)."""
        tags = (
            sql.SQL("nexus_tags t")
            if ids is None
            else sql.SQL(
                "unnest(%(ids)s::bigint[]) AS r(tag_id) LEFT JOIN nexus_tags t ON t.tag_id = r.tag_id"
            )
        )
        key = sql.SQL("t.tag_id" if ids is None else "r.tag_id")
        if has_latest:
            query = sql.SQL(
                "SELECT {k}, l.time, l.value, l.quality, t.tag_id IS NOT NULL FROM {tags} "
                "LEFT JOIN nexus_latest l ON l.tag_id = t.tag_id ORDER BY {k}"
            ).format(k=key, tags=tags)
        else:
            query = sql.SQL(
                "SELECT {k}, p.time, p.value, p.quality, t.tag_id IS NOT NULL FROM {tags} "
                "LEFT JOIN LATERAL (SELECT time, value, quality FROM nexus_points "
                "WHERE tag_id = t.tag_id ORDER BY time DESC LIMIT 1) p ON true ORDER BY {k}"
            ).format(k=key, tags=tags)
        rows = await (await conn.execute(query, {"ids": ids}, binary=True)).fetchall()
        unknown = [r[0] for r in rows if not r[4]]
        if unknown:
            await self._require_tags(conn, unknown)  # raises with the list
        return rows

    # ------------------------------------------------------------------ alerts, OEE

    async def alerts(
        self,
        start: datetime,
        end: datetime,
        *,
        device: str | None = None,
        tag_id: int | None = None,
        state: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Alert raises and clears in ``[start, end)``, newest first."""
        start, end = check_range(start, end)
        if tag_id is not None:
            tag_id = _check_tags([tag_id])[0]
        if not 1 <= limit <= MAX_RAW_POINTS:
            raise InvalidError("bad limit", [("query.limit", f"between 1 and {MAX_RAW_POINTS}")])
        await self._ensure_open()
        async with self._conn() as conn:
            if "nexus_alerts" not in await self._tables_now(conn):
                await self._load_tables(conn)
                if "nexus_alerts" not in self._tables:
                    return []
        await self._ensure_acks()
        return await self._fetch(
            'SELECT a.time, a.device_id, a.tag_id, t.name AS tag, a.kind, a.state, a.severity, a.value, a."limit", '
            "a.message, CASE WHEN a.state = 'raised' THEN a.tag_id::text || ':' || a.kind || ':' || "
            "(extract(epoch FROM a.time) * 1000000)::bigint::text END AS id, k.acked_by, k.acked_at "
            "FROM nexus_alerts a LEFT JOIN nexus_tags t ON t.tag_id = a.tag_id "
            "LEFT JOIN nexus_alert_acks k ON a.state = 'raised' AND k.tag_id = a.tag_id AND k.kind = a.kind "
            "AND k.raised_at = a.time "
            "WHERE a.time >= %(start)s AND a.time < %(end)s "
            "AND (%(device)s::text IS NULL OR a.device_id = %(device)s) "
            "AND (%(tag)s::bigint IS NULL OR a.tag_id = %(tag)s) "
            "AND (%(state)s::text IS NULL OR a.state = %(state)s) "
            "ORDER BY a.time DESC LIMIT %(limit)s",
            {"start": start, "end": end, "device": device, "tag": tag_id, "state": state, "limit": limit},
            dicts=True,
        )

    async def _ensure_acks(self) -> None:
        """The acknowledgements table (made by the API on first use: the flows never write it)."""
        if getattr(self, "_acks_ready", False):
            return
        async with self._conn() as conn:
            await conn.execute("SET TRANSACTION READ WRITE")
            await conn.execute(_ACKS_DDL)
        self._acks_ready = True

    async def ack_alert(self, alert_id: str, *, actor: str) -> dict[str, Any]:
        """Acknowledge a raised alert (its ``id`` from :meth:`alerts`: ``tag_id:kind:epoch µs``).

        The first acknowledgement stands (a second one answers the first's who and when); an id that
        names no raised alert is a 404, a malformed one a 422 on ``path.alert_id``.
        """
        m = _ALERT_ID.match(alert_id)
        if m is None:
            raise InvalidError(
                "bad alert id",
                [("path.alert_id", f"{alert_id[:80]!r} is not like 4242:high:1795000000000000")],
            )
        tag_id, kind, micros = int(m.group(1)), m.group(2), int(m.group(3))
        raised_at = datetime.fromtimestamp(micros // 1_000_000, UTC) + timedelta(
            microseconds=micros % 1_000_000
        )
        await self._ensure_open()
        async with self._conn() as conn:
            if "nexus_alerts" not in await self._tables_now(conn):
                raise NotFoundError(f"no alert {alert_id}")
        await self._ensure_acks()
        async with self._conn() as conn:
            await conn.execute("SET TRANSACTION READ WRITE")  # the pool's sessions default to read-only
            found = await (
                await conn.execute(
                    "SELECT 1 FROM nexus_alerts WHERE tag_id = %s AND kind = %s AND state = 'raised' AND time = %s",
                    (tag_id, kind, raised_at),
                )
            ).fetchone()
            if found is None:
                raise NotFoundError(f"no raised alert {alert_id}")
            await conn.execute(
                "INSERT INTO nexus_alert_acks (tag_id, kind, raised_at, acked_by, acked_at) "
                "VALUES (%s, %s, %s, %s, now()) ON CONFLICT DO NOTHING",
                (tag_id, kind, raised_at, actor),
            )
            row = await (
                await conn.execute(
                    "SELECT acked_by, acked_at FROM nexus_alert_acks WHERE tag_id = %s AND kind = %s AND raised_at = %s",
                    (tag_id, kind, raised_at),
                )
            ).fetchone()
        assert row is not None
        return {"id": alert_id, "acked_by": row[0], "acked_at": row[1]}

    async def oee(
        self, start: datetime, end: datetime, *, machine: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """OEE periods of machines that overlap ``[start, end)``, oldest first."""
        start, end = check_range(start, end)
        if not 1 <= limit <= MAX_RAW_POINTS:
            raise InvalidError("bad limit", [("query.limit", f"between 1 and {MAX_RAW_POINTS}")])
        await self._ensure_open()
        async with self._conn() as conn:
            if "nexus_oee" not in await self._tables_now(conn):
                await self._load_tables(conn)
                if "nexus_oee" not in self._tables:
                    return []
        return await self._fetch(
            "SELECT machine, period, start_time, end_time, availability, performance, quality, oee, run_s, "
            "planned_stop_s, unplanned_stop_s, total_count, good_count, reject_count, downtime "
            "FROM nexus_oee WHERE start_time < %(end)s AND end_time > %(start)s "
            "AND (%(machine)s::text IS NULL OR machine = %(machine)s) ORDER BY start_time, machine LIMIT %(limit)s",
            {"start": start, "end": end, "machine": machine, "limit": limit},
            dicts=True,
        )

    # ------------------------------------------------------------------ CSV export

    async def export_csv(
        self, tag_ids: Sequence[int], start: datetime, end: datetime
    ) -> AsyncIterator[bytes]:
        """Raw points as CSV (``time,tag_id,device,tag,value,quality``), streamed from a server-side cursor.

        Validation and the tag check run before the first byte, so a bad request still gets a clean
        error; after that rows flow in chunks of a few thousand, whatever the range's size.
        """
        ids = _check_tags(tag_ids)
        start, end = check_range(start, end)
        await self._ensure_open()
        async with self._conn() as conn:
            if not await self._has_core_tables(conn):
                raise NotFoundError(f"unknown tag(s): {ids[0]}")
            await self._require_tags(conn, ids)
        return self._csv_rows(ids, start, end)

    async def _csv_rows(self, ids: list[int], start: datetime, end: datetime) -> AsyncIterator[bytes]:
        yield b"time,tag_id,device,tag,value,quality\r\n"
        async with self._conn() as conn, conn.transaction():
            cur = conn.cursor(name="nexus_csv_export")
            cur.itersize = _CSV_FETCH
            async with cur:
                await cur.execute(
                    "SELECT to_char(p.time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), p.tag_id, "
                    "t.device_id, t.name, p.value, p.quality FROM nexus_points p "
                    "JOIN nexus_tags t ON t.tag_id = p.tag_id "
                    "WHERE p.tag_id = ANY(%s) AND p.time >= %s AND p.time < %s ORDER BY p.time, p.tag_id",
                    (ids, start, end),
                )
                while True:
                    rows = await cur.fetchmany(_CSV_FETCH)
                    if not rows:
                        break
                    yield "".join(
                        f"{t},{tag},{_csv(dev)},{_csv(name)},{'' if v is None else repr(v)},{q}\r\n"
                        for t, tag, dev, name, v, q in rows
                    ).encode()


def _check_fields(fields: Sequence[str] | None) -> tuple[str, ...]:
    if not fields:
        return AGG_FIELDS
    bad = [f for f in fields if f not in AGG_FIELDS]
    if bad:
        raise InvalidError(
            "unknown aggregate field", [("query.fields", f"{bad[0]!r} is not one of {', '.join(AGG_FIELDS)}")]
        )
    return tuple(dict.fromkeys(fields))


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows → one list per column (``zip`` runs in C; no per-row Python)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


def _changes(keys: list[Any]) -> list[int]:
    """Indices where ``keys`` (sorted runs) changes value."""
    if len(keys) < 2:
        return []
    a = np.asarray(keys)
    return (np.flatnonzero(a[1:] != a[:-1]) + 1).tolist()  # type: ignore[no-any-return]


def _csv(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
