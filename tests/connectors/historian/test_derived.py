"""Aggregates, alerts and OEE results stored in a real PostgreSQL and published on a real broker."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psycopg
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import input as op_input
from bytewax.operators import output as op_output
from bytewax.testing import TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from connectors.derived import DerivedSink, DerivedTargets
from connectors.historian.derived import DerivedWriter, agg_table
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.url import parse_mqtt_url
from core.records import AggBatch, Alert, OeeResult
from core.tags import TagInfo
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_040 * 10**9  # a minute boundary
TAGS = {
    11: TagInfo(11, "press-01", "temp", "degC", "acme/p1/press/l1/press-01/temp"),
    12: TagInfo(12, "press-01", "pressure", "bar", "acme/p1/press/l1/press-01/pressure"),
}


def agg(first_avg: float, count: int = 2) -> AggBatch:
    n = 2
    return AggBatch(
        device_id="press-01",
        window="1m",
        window_ns=60 * 10**9,
        bucket_ns=np.full(n, T0, dtype=np.int64),
        tag_ids=np.array([11, 12], dtype=np.int64),
        count=np.full(n, count, dtype=np.int64),
        sum=np.array([first_avg * count, 20.0]),
        min=np.array([1.0, 9.0]),
        max=np.array([3.0, 11.0]),
        first=np.array([1.0, 9.0]),
        last=np.array([3.0, 11.0]),
        twa=np.array([np.nan, 10.0]),
    )


ALERT = Alert(
    "press-01", 11, "high", "raised", "warning", 212.5, 200.0, T0 + 5 * 10**9, "value 212.5 above 200"
)
OEE = OeeResult(
    "press-01",
    "window:5m",
    T0,
    T0 + 300 * 10**9,
    0.9,
    0.8,
    0.95,
    0.684,
    270.0,
    0.0,
    30.0,
    100.0,
    95.0,
    5.0,
    {"jam": 30.0},
)


def test_aggregates_replace_alerts_dedupe_oee_upserts(db: str) -> None:
    writer = DerivedWriter(db, ["1m"])
    try:
        assert writer.write_aggs([agg(2.0)]) == 2
        assert writer.write_aggs([agg(2.5, count=4)]) == 2  # the bucket again (a replay): replaced
        assert writer.write_alerts([ALERT, ALERT]) == 2
        assert writer.write_oee([OEE]) == 1
        assert writer.write_oee([OEE]) == 1
    finally:
        writer.close()
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT tag_id, extract(epoch FROM bucket)::bigint, avg, count, twa FROM nexus_agg_1m ORDER BY tag_id"
        ).fetchall()
        assert rows == [(11, T0 // 10**9, 2.5, 4, None), (12, T0 // 10**9, 5.0, 4, 10.0)]
        alerts = conn.execute('SELECT kind, state, value, "limit" FROM nexus_alerts').fetchall()
        assert alerts == [("high", "raised", 212.5, 200.0)]
        oee = conn.execute("SELECT machine, oee, downtime FROM nexus_oee").fetchall()
        assert oee == [("press-01", 0.684, {"jam": 30.0})]


FLOATS = ("min", "max", "avg", "sum", "first", "last", "twa")
SELECT_AGGS = (
    "SELECT extract(epoch FROM bucket)::bigint * 1000000000, tag_id, min, max, avg, count, sum, first, last, twa "
    "FROM {} ORDER BY tag_id, bucket"
)


def rows_of(batch: AggBatch) -> list[tuple[Any, ...]]:
    """What the table should hold for ``batch``: one row per (tag, bucket), non-finite floats as NULL."""
    out = []
    for i in range(len(batch)):
        fl = {name: float(getattr(batch, name)[i]) for name in FLOATS}
        fl = {name: (v if np.isfinite(v) else None) for name, v in fl.items()}
        out.append(
            (
                int(batch.bucket_ns[i]), int(batch.tag_ids[i]), fl["min"], fl["max"], fl["avg"],
                int(batch.count[i]), fl["sum"], fl["first"], fl["last"], fl["twa"],
            )
        )  # fmt: skip
    return sorted(out, key=lambda r: (r[1], r[0]))


def stored(db: str, window: str = "1m") -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(sql.SQL(SELECT_AGGS).format(sql.Identifier(agg_table(window)))).fetchall()


def columns_batch(window: str, device: str, tag_ids: list[int], buckets: list[int], seed: int) -> AggBatch:
    rng = np.random.default_rng(seed)
    n = len(tag_ids)
    count = rng.integers(1, 100, n)
    return AggBatch(
        device, window, 60 * 10**9, np.array(buckets, dtype=np.int64), np.array(tag_ids, dtype=np.int64),
        count, rng.normal(size=n) * count, rng.normal(size=n), rng.normal(size=n), rng.normal(size=n),
        rng.normal(size=n), rng.normal(size=n),
    )  # fmt: skip


def test_an_existing_bucket_is_replaced_whole(db: str) -> None:
    writer = DerivedWriter(db, ["1m"])
    try:
        old = columns_batch("1m", "press-01", [11, 12, 13], [T0, T0, T0], seed=1)
        new = columns_batch("1m", "press-01", [12], [T0], seed=2)
        new.twa[0] = np.nan
        assert writer.write_aggs([old]) == 3
        assert writer.write_aggs([new]) == 1
    finally:
        writer.close()
    expected = rows_of(old)
    expected[1] = rows_of(new)[0]
    assert stored(db) == expected
    assert expected[1][-1] is None and expected[1][1] == 12


def test_several_windows_and_devices_in_one_call(db: str) -> None:
    batches = [
        columns_batch("1m", "press-01", [11, 12], [T0, T0], seed=3),
        columns_batch("1m", "press-02", [21, 22], [T0, T0 + 60 * 10**9], seed=4),
        columns_batch("5m", "press-01", [11, 12], [T0, T0], seed=5),
    ]
    writer = DerivedWriter(db, ["1m", "5m"])
    try:
        assert writer.write_aggs(batches) == 6
        assert writer.rows_written == 6
    finally:
        writer.close()
    assert stored(db, "1m") == sorted(rows_of(batches[0]) + rows_of(batches[1]), key=lambda r: (r[1], r[0]))
    assert stored(db, "5m") == rows_of(batches[2])


def test_a_replay_is_idempotent_and_a_repeated_key_keeps_its_last_row(db: str) -> None:
    first = columns_batch("1m", "press-01", [11, 12, 13], [T0, T0, T0], seed=6)
    again = columns_batch("1m", "press-01", [13, 11], [T0, T0], seed=7)
    writer = DerivedWriter(db, ["1m"])
    try:
        writer.write_aggs([first])
        once = stored(db)
        writer.write_aggs([first])
        assert stored(db) == once == rows_of(first)
        assert writer.write_aggs([first, again]) == 3  # 11 and 13 twice in one call: the later rows win
    finally:
        writer.close()
    assert stored(db) == sorted([*rows_of(again), rows_of(first)[1]], key=lambda r: (r[1], r[0]))


def test_plain_postgresql_gets_ordinary_tables(db: str) -> None:
    """The TimescaleDB-less path (TimescaleDB is not installable here): plain tables, rows in them."""
    batch = columns_batch("1m", "press-01", [11], [T0], seed=8)
    writer = DerivedWriter(db, ["1m"])
    try:
        assert writer.write_aggs([batch]) == 1
    finally:
        writer.close()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'nexus_agg_1m'").fetchone()
        assert kind == ("r",)
    assert stored(db) == rows_of(batch)


FLOAT_OR_NOT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([np.nan, np.inf, -np.inf]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(*[FLOAT_OR_NOT] * 6, st.integers(0, 10**6)), min_size=1, max_size=12))
def test_nulls_in_any_float_column_land_as_null(db: str, rows: list[tuple[Any, ...]]) -> None:
    n = len(rows)  # avg = sum / count: NaN or inf where count is 0
    cols = np.array([r[:6] for r in rows], dtype=np.float64).T
    count = np.array([r[6] for r in rows], dtype=np.int64)
    batch = AggBatch(
        "press-01", "1m", 60 * 10**9, T0 + np.arange(n, dtype=np.int64) * 60 * 10**9,
        np.full(n, 11, dtype=np.int64), count, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5],
    )  # fmt: skip
    writer = DerivedWriter(db, ["1m"])
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS nexus_agg_1m")
        writer.write_aggs([batch])
    finally:
        writer.close()
    assert stored(db) == rows_of(batch)


def test_derived_sink_publishes_and_stores(db: str, mqtt_url: str) -> None:
    got: dict[str, Any] = {}
    subscribed = threading.Event()
    u = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("acme/#", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, m: got.__setitem__(m.topic, json.loads(m.payload))
    client.connect(u.host, u.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        targets = DerivedTargets(
            mqtt=MqttSinkConfig(url=mqtt_url),
            database_url=db,
            windows=["1m"],
            tags=TAGS,
            machine_topics={"press-01": "acme/p1/press/l1/press-01"},
        )
        flow = Dataflow("derived")
        op_output("out", op_input("in", flow, TestingSource([agg(2.0), ALERT, OEE])), DerivedSink(targets))
        run_main(flow)
        wait_for(lambda: len(got) == 4, timeout=10, what="2 aggregates, 1 alert and 1 OEE message")
    finally:
        client.loop_stop()
        client.disconnect()
    assert got["acme/p1/press/l1/press-01/temp/_agg/1m"]["avg"] == 2.0
    assert got["acme/p1/press/l1/press-01/temp/_agg/1m"]["twa"] is None
    assert got["acme/p1/press/l1/press-01/_alerts"]["kind"] == "high"
    assert got["acme/p1/press/l1/press-01/_oee"]["oee"] == pytest.approx(0.684)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM nexus_agg_1m").fetchone() == (2,)


def test_derived_store_spools_while_the_database_is_down(tmp_path: Path) -> None:
    from connectors.derived import _DerivedPartition
    from nexus.embedded import EmbeddedPostgres, free_port

    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    pg.start()
    spool = str(tmp_path / "spool")
    try:
        targets = DerivedTargets(mqtt=None, database_url=pg.url, windows=["1m"], tags=TAGS, spool_dir=spool)
        part = _DerivedPartition(targets)
        part.write_batch([agg(2.0)])
        wait_for(lambda: part.stats()["db"]["records_written"] == 1, timeout=30, what="the first write")
        pg.stop()
        part.write_batch([ALERT])  # returns at once: the record waits in the spool, not in the flow
        part.write_batch([OEE])
        assert part.stats()["db"]["spool_pending_records"] >= 1
        pg.start()
        wait_for(
            lambda: part.stats()["db"]["spool_pending_records"] == 0, timeout=60, what="the spool to drain"
        )
        part.close()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT count(*) FROM nexus_alerts").fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM nexus_oee").fetchone() == (1,)
    finally:
        pg.stop()
