"""Schema management on plain PostgreSQL (native partitioning)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from connectors.historian.config import HistorianConfig
from connectors.historian.schema import ensure_partitions, ensure_schema, partition_name, upsert_tags
from core.tags import TagInfo

pytestmark = pytest.mark.integration

DAY_US = 86_400_000_000


def test_schema_is_partitioned_and_idempotent(db: str) -> None:
    cfg = HistorianConfig(url=db)
    with psycopg.connect(db, autocommit=True) as conn:
        assert ensure_schema(conn, cfg) == "native"
        assert ensure_schema(conn, cfg) == "native"
        kinds: dict[str, str] = dict(
            conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relname IN ('nexus_points', 'nexus_tags')"
            ).fetchall()
        )
        assert kinds == {"nexus_points": "p", "nexus_tags": "r"}
        default = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'nexus_points'::regclass"
        ).fetchall()
        assert default == [("nexus_points_default",)]
        cols = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'nexus_points' ORDER BY ordinal_position"
        ).fetchall()
        assert cols == [
            ("time", "timestamp with time zone"),
            ("tag_id", "bigint"),
            ("value", "double precision"),
            ("quality", "smallint"),
        ]


def test_schema_in_parallel(db: str) -> None:
    cfg = HistorianConfig(url=db)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(db, autocommit=True) as conn:
                ensure_schema(conn, cfg)
                ensure_partitions(conn, [19_000 * DAY_US, 19_001 * DAY_US], 86_400)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with psycopg.connect(db) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relname LIKE 'nexus_points_p%' AND relkind = 'r'"
            )
        }
    assert names == {partition_name(19_000 * DAY_US, 86_400), partition_name(19_001 * DAY_US, 86_400)}


def test_partition_for_a_day_whose_rows_sit_in_default_is_skipped(db: str) -> None:
    cfg = HistorianConfig(url=db)
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_schema(conn, cfg)
        conn.execute("INSERT INTO nexus_points VALUES ('2024-03-01T12:00:00Z', 1, 1.0, 0)")
        start = 1_709_251_200  # 2024-03-01T00:00:00Z
        ensure_partitions(conn, [start * 1_000_000], 86_400)  # must not raise
        where = conn.execute("SELECT tableoid::regclass::text FROM nexus_points").fetchone()
        assert where == ("nexus_points_default",)


def test_upsert_tags(db: str) -> None:
    big = 2**63 - 1
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_schema(conn, HistorianConfig(url=db))
        upsert_tags(conn, [TagInfo(big, "press-01", "temp", "degC", "a/b/press-01/temp")])
        upsert_tags(
            conn,
            [
                TagInfo(big, "press-01", "temp", "K", "a/b/press-01/temp"),
                TagInfo(2, "press-02", "speed", "rpm", "a/b/press-02/speed"),
            ],
        )
        rows = conn.execute(
            "SELECT tag_id, device_id, name, unit, uns_path FROM nexus_tags ORDER BY tag_id"
        ).fetchall()
    assert rows == [
        (2, "press-02", "speed", "rpm", "a/b/press-02/speed"),
        (big, "press-01", "temp", "K", "a/b/press-01/temp"),
    ]
