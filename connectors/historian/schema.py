"""Historian schema: the tag dimension and the raw points table, on TimescaleDB or plain PostgreSQL.

``nexus_points`` has the same columns and key on both: a hypertable with compression when TimescaleDB is
available, else a table range-partitioned by time (partitions created on demand, plus a DEFAULT partition
so no row is ever refused). Tag ids are 63-bit (``bigint``).

>>> partition_name(19675 * 86_400_000_000, 86_400)
'nexus_points_p20231114'
>>> partition_name(19675 * 86_400_000_000, 3_600)
'nexus_points_p2023111400'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

import psycopg
from psycopg import sql

from connectors.historian.config import HistorianConfig
from connectors.historian.latest import backfill_latest, ensure_latest
from core.tags import TagInfo

__all__ = [
    "PG_EPOCH_US",
    "SchemaError",
    "ensure_partitions",
    "ensure_schema",
    "partition_name",
    "upsert_tags",
]

log = logging.getLogger(__name__)

PG_EPOCH_US = 946_684_800_000_000
"""2000-01-01T00:00:00Z in microseconds since the Unix epoch (PostgreSQL's timestamp origin)."""
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCHEMA_LOCK = 0x6E657875_73000001  # advisory lock key: several processes may start at once


class SchemaError(RuntimeError):
    """The database holds tables this historian cannot use."""


Mode = Literal["timescaledb", "native"]

_TAGS_DDL = """
CREATE TABLE IF NOT EXISTS nexus_tags (
    tag_id bigint PRIMARY KEY,
    device_id text NOT NULL,
    name text NOT NULL,
    unit text,
    uns_path text,
    updated_at timestamptz NOT NULL DEFAULT now()
)"""

_POINTS_COLUMNS = """
    time timestamptz NOT NULL,
    tag_id bigint NOT NULL,
    value double precision,
    quality smallint NOT NULL,
    CONSTRAINT nexus_points_pkey PRIMARY KEY (tag_id, time)
"""


def _points_relkind(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = 'nexus_points' AND n.nspname = current_schema()"
    ).fetchone()
    return None if row is None else str(row[0])


def _timescale_available(conn: psycopg.Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        is not None
    )


def ensure_schema(conn: psycopg.Connection, config: HistorianConfig) -> Mode:
    """Create the tables if missing (idempotent, safe in parallel); returns the storage mode in use."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_TAGS_DDL)
        kind = _points_relkind(conn)
        if kind == "p":
            mode: Mode = "native"
        elif config.use_timescaledb and _timescale_available(conn) and kind in (None, "r"):
            try:
                with conn.transaction():  # a savepoint: fall back cleanly if the extension cannot load
                    _timescale_schema(conn, config)
                mode = "timescaledb"
            except psycopg.OperationalError:
                raise  # the connection, not the extension: let the caller retry
            except psycopg.DatabaseError as exc:  # e.g. not in shared_preload_libraries
                log.warning(
                    "TimescaleDB is installed but unusable (%s); using native partitioning", exc.sqlstate
                )
                mode = "native"
                if _points_relkind(conn) == "r":
                    raise SchemaError("nexus_points exists as a plain table, not a hypertable") from exc
        elif kind == "r":
            raise SchemaError("nexus_points exists as a plain table, neither partitioned nor a hypertable")
        else:
            mode = "native"
        if mode == "native":
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS nexus_points ({_POINTS_COLUMNS}) PARTITION BY RANGE (time)"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS nexus_points_default PARTITION OF nexus_points DEFAULT")
        if ensure_latest(conn):
            backfill_latest(conn)
    return mode


def _timescale_schema(conn: psycopg.Connection, config: HistorianConfig) -> None:
    """Hypertable with compression (segment by tag) and the optional retention policy.

    Not exercised by the test-suite (TimescaleDB is not installable here); kept in this one function.
    """
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    conn.execute(f"CREATE TABLE IF NOT EXISTS nexus_points ({_POINTS_COLUMNS})")
    conn.execute(
        "SELECT create_hypertable('nexus_points', 'time', chunk_time_interval => %s::interval, "
        "if_not_exists => TRUE, migrate_data => TRUE)",
        (config.partition_interval,),
    )
    if config.compress_after:
        row = conn.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'nexus_points' AND hypertable_schema = current_schema()"
        ).fetchone()
        if not (row and row[0]):
            conn.execute(
                "ALTER TABLE nexus_points SET (timescaledb.compress, "
                "timescaledb.compress_segmentby = 'tag_id', timescaledb.compress_orderby = 'time DESC')"
            )
        conn.execute(
            "SELECT add_compression_policy('nexus_points', %s::interval, if_not_exists => TRUE)",
            (config.compress_after,),
        )
    if config.retention:
        conn.execute(
            "SELECT add_retention_policy('nexus_points', %s::interval, if_not_exists => TRUE)",
            (config.retention,),
        )


def partition_name(start_us: int, interval_s: int) -> str:
    """Name of the partition starting at ``start_us`` (µs since the Unix epoch, UTC)."""
    start = _UNIX_EPOCH + timedelta(microseconds=start_us)
    return f"nexus_points_p{start:%Y%m%d}" if interval_s >= 86_400 else f"nexus_points_p{start:%Y%m%d%H}"


def ensure_partitions(
    conn: psycopg.Connection, bucket_starts_us: Iterable[int], interval_s: int
) -> list[int]:
    """Create the native partitions starting at these instants if missing; returns the starts now covered.

    A range whose rows already sit in the DEFAULT partition is left there (its rows stay queryable).
    """
    done: list[int] = []
    for start_us in bucket_starts_us:
        name = partition_name(start_us, interval_s)
        lo = _UNIX_EPOCH + timedelta(microseconds=start_us)
        hi = lo + timedelta(seconds=interval_s)
        stmt = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF nexus_points FOR VALUES FROM ({}) TO ({})"
        ).format(sql.Identifier(name), sql.Literal(lo), sql.Literal(hi))
        try:
            with conn.transaction():
                conn.execute(stmt)
        except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            pass  # another writer created it at the same moment
        except psycopg.errors.CheckViolation:
            log.info("rows for %s already sit in nexus_points_default; leaving them there", name)
        except psycopg.errors.InvalidObjectDefinition:
            log.info("partition %s overlaps an existing one; rows go there", name)
        done.append(start_us)
    return done


def upsert_tags(conn: psycopg.Connection, tags: Iterable[TagInfo]) -> int:
    """Insert or update the tag dimension rows; returns how many tags were given."""
    rows = [(t.tag_id, t.device_id, t.name, t.unit, t.topic) for t in tags]
    if not rows:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO nexus_tags (tag_id, device_id, name, unit, uns_path, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, now()) "
            "ON CONFLICT (tag_id) DO UPDATE SET device_id = EXCLUDED.device_id, name = EXCLUDED.name, "
            "unit = EXCLUDED.unit, uns_path = EXCLUDED.uns_path, updated_at = now() "
            "WHERE (nexus_tags.device_id, nexus_tags.name, nexus_tags.unit, nexus_tags.uns_path) "
            "IS DISTINCT FROM (EXCLUDED.device_id, EXCLUDED.name, EXCLUDED.unit, EXCLUDED.uns_path)",
            rows,
        )
    return len(rows)
