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

from connectors.derived import DerivedSink, DerivedTargets
from connectors.historian.derived import DerivedWriter
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
