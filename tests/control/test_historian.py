"""Historian queries and their API routes against a real PostgreSQL, loaded through the project's writers."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg
import pytest
from litestar.testing import TestClient

from api.app import create_app
from connectors.historian.config import HistorianConfig
from connectors.historian.derived import DerivedWriter
from connectors.historian.writer import HistorianWriter
from control.errors import InvalidError, NotFoundError
from control.historian import Historian
from core.batch import PointBatch
from core.quality import Quality
from core.records import AggBatch, Alert, OeeResult
from core.settings import Settings
from core.tags import TagInfo
from tests.auth_helpers import login, prepare

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
T0_NS = int(T0.timestamp()) * 10**9
N = 7200  # one point a second for two hours
BIG = 2**63 - 5
TAGS = {
    1: TagInfo(1, "press-01", "temp", "degC", "acme/p1/press/l1/press-01/temp"),
    2: TagInfo(2, "press-01", "speed", "rpm", "acme/p1/press/l1/press-01/speed"),
    BIG: TagInfo(BIG, "oven, 2", 'name "q"', "", "acme/p1/oven/l1/oven_2/name_q"),
}


def _values(tag: int) -> np.ndarray:
    return np.arange(N, dtype=np.float64) * (1.0 if tag == 1 else 2.0)


def _agg_1m(tag: int) -> AggBatch:
    """nexus_agg_1m rows for ``tag`` as the window operator would emit them (1-minute buckets)."""
    v = _values(tag).reshape(-1, 60)
    buckets = T0_NS + np.arange(len(v), dtype=np.int64) * 60 * 10**9
    k = len(v)
    return AggBatch(
        "press-01", "1m", 60 * 10**9, buckets, np.full(k, tag, np.int64), np.full(k, 60, np.int64),
        v.sum(axis=1), v.min(axis=1), v.max(axis=1), v[:, 0], v[:, -1], v.mean(axis=1),
    )  # fmt: skip


@pytest.fixture(scope="module")
def loaded(postgres_url: str) -> Iterator[str]:
    """One database for the module: two hours of 1 Hz points for tags 1 and 2, 1-minute aggregates for
    tag 1 only (tag 2 has no window operator), an alert pair and an OEE period."""
    import uuid

    from psycopg.conninfo import make_conninfo

    name = f"test_hist_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(postgres_url, dbname=name)
    ts = T0_NS + np.arange(N, dtype=np.int64) * 10**9
    with HistorianWriter(HistorianConfig(url=url), TAGS) as w:
        for tag in (1, 2):
            q = np.zeros(N, np.uint8)
            if tag == 2:
                q[10] = Quality.COMM_ERROR
            w.write(
                PointBatch.from_values(
                    "press-01", np.full(N, tag, np.int64), _values(tag), ts_ns=ts, quality=q
                )
            )
        w.flush(30)
    d = DerivedWriter(url, ["1m"])
    d.write_aggs([_agg_1m(1)])
    d.write_alerts(
        [
            Alert(
                "press-01", 1, "range_high", "raised", "warning", 99.0, 90.0, T0_NS + 60 * 10**9, "temp high"
            ),
            Alert("press-01", 1, "range_high", "cleared", "warning", 80.0, 90.0, T0_NS + 120 * 10**9, "ok"),
        ]
    )
    d.write_oee(
        [
            OeeResult(
                "press-01", "shift", T0_NS, T0_NS + 3600 * 10**9, 0.9, 0.8, 0.95, 0.684, 3240.0, 0.0, 360.0,
                1000.0, 950.0, 50.0, (("jam", 360.0),),
            )
        ]
    )  # fmt: skip
    d.close()
    prepare(url)  # the API's users live in the same database
    yield url
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def with_historian(url: str, fn: Any) -> Any:
    h = Historian(url)
    await h.open()
    try:
        return await fn(h)
    finally:
        await h.close()


@pytest.fixture
def client(loaded: str) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(app=create_app(Settings(database_url=loaded))) as c:
        c.headers.update(login(c, "viewer"))
        yield c


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------- module level


def test_decides_date_bin_on_plain_postgres(loaded: str) -> None:
    assert run(with_historian(loaded, lambda h: asyncio.sleep(0, h.bucket_function))) == "date_bin"


def test_raw_points_of_one_tag(loaded: str) -> None:
    out = run(
        with_historian(loaded, lambda h: h.raw([1], T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)))
    )
    (s,) = out["series"]
    assert s["tag_id"] == 1 and len(s["time"]) == 600 and out["next"] is None
    assert s["time"][0] == T0 + timedelta(minutes=10) and s["value"][0] == 600.0
    assert s["value"][-1] == 1199.0 and all(q == 0 for q in s["quality"])


def test_raw_pages_never_split_an_instant(loaded: str) -> None:
    start, end = T0, T0 + timedelta(seconds=10)
    first = run(with_historian(loaded, lambda h: h.raw([1, 2], start, end, limit=5)))
    # 5 rows = t0 (1, 2), t1 (1, 2), t2 (1): the partial t2 is dropped and next starts there
    assert first["next"] == T0 + timedelta(seconds=2)
    assert [len(s["time"]) for s in first["series"]] == [2, 2]
    rest = run(with_historian(loaded, lambda h: h.raw([1, 2], first["next"], end, limit=100)))
    assert [len(s["time"]) for s in rest["series"]] == [8, 8] and rest["next"] is None


def test_aggregates_from_agg_1m_and_raw_fallback(loaded: str) -> None:
    out = run(
        with_historian(loaded, lambda h: h.aggregates([1, 2], T0, T0 + timedelta(hours=2), max_points=60))
    )
    assert out["bucket"] == 120.0 and out["source"] == "nexus_agg_1m"
    s1, s2 = out["series"]
    assert s1["source"] == "nexus_agg_1m" and s2["source"] == "nexus_points"
    expect1 = _values(1).reshape(-1, 120)
    assert len(s1["bucket"]) == 60 and s1["bucket"][1] == T0 + timedelta(minutes=2)
    np.testing.assert_allclose(s1["avg"], expect1.mean(axis=1))
    np.testing.assert_allclose(s1["min"], expect1.min(axis=1))
    np.testing.assert_allclose(s1["last"], expect1[:, -1])
    assert s1["count"] == [120] * 60
    # tag 2 from raw points: the comm-error point (index 10) is left out of the first bucket
    v2 = _values(2).reshape(-1, 120)
    assert s2["count"][0] == 119 and s2["count"][1] == 120
    np.testing.assert_allclose(s2["avg"][0], np.delete(v2[0], 10).mean())
    np.testing.assert_allclose(s2["max"], v2.max(axis=1))


def test_explicit_bucket_not_a_window_multiple_reads_raw(loaded: str) -> None:
    out = run(
        with_historian(
            loaded,
            lambda h: h.aggregates([1], T0, T0 + timedelta(minutes=5), bucket=timedelta(seconds=45)),
        )
    )
    assert out["source"] == "nexus_points"
    (s,) = out["series"]
    assert s["bucket"][:2] == [T0, T0 + timedelta(seconds=45)]  # 45 s buckets from the epoch
    assert s["count"][:2] == [45, 45] and s["first"][1] == 45.0 and s["last"][1] == 89.0
    assert s["bucket"][-1] == T0 + timedelta(seconds=270) and s["count"][-1] == 30


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"max_points": 10**9}, "query.max_points"),
        ({"max_points": 0}, "query.max_points"),
        ({"bucket": timedelta(seconds=1), "max_points": 100}, "query.bucket"),
        ({"bucket": timedelta(milliseconds=1500)}, "query.bucket"),
    ],
)
def test_aggregates_refuse_bad_buckets(loaded: str, kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidError) as info:
        run(with_historian(loaded, lambda h: h.aggregates([1], T0, T0 + timedelta(hours=1), **kwargs)))
    assert info.value.problems[0][0] == path


def test_inverted_and_naive_ranges_and_unknown_tags(loaded: str) -> None:
    with pytest.raises(InvalidError) as info:
        run(with_historian(loaded, lambda h: h.raw([1], T0, T0 - timedelta(seconds=1))))
    assert info.value.problems[0][0] == "query.end"
    with pytest.raises(InvalidError) as info:
        run(with_historian(loaded, lambda h: h.raw([1], T0.replace(tzinfo=None), T0 + timedelta(1))))
    assert info.value.problems[0][0] == "query.start"
    with pytest.raises(NotFoundError, match="424242"):
        run(with_historian(loaded, lambda h: h.aggregates([1, 424242], T0, T0 + timedelta(hours=1))))


def test_far_offsets_and_nul_characters_are_bad_input_not_errors(loaded: str) -> None:
    """A time whose UTC falls outside Python's years, and text PostgreSQL cannot hold (found by
    schemathesis: both used to escape as a 500)."""
    year_one = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59)))
    with pytest.raises(InvalidError) as info:
        run(with_historian(loaded, lambda h: h.raw([1], year_one, T0)))
    assert info.value.problems[0][0] == "query.start"
    with pytest.raises(InvalidError) as info:
        run(with_historian(loaded, lambda h: h.tags(device="press\x0001")))
    assert info.value.problems[0][0] == "query"
    # an offset PostgreSQL would not take itself (beyond 15:59) is a plain UTC instant
    far = (T0 + timedelta(seconds=3)).astimezone(timezone(-timedelta(hours=18, minutes=9)))
    got = run(with_historian(loaded, lambda h: h.raw([1], far, T0 + timedelta(seconds=5))))
    assert got["series"][0]["value"] == [3.0, 4.0]


def test_latest_from_nexus_latest_and_from_points(loaded: str, db: str) -> None:
    got = run(with_historian(loaded, lambda h: h.latest([2, 1, BIG])))
    assert [(r["tag_id"], r["value"]) for r in got] == [(1, N - 1.0), (2, 2.0 * (N - 1)), (BIG, None)]
    assert got[0]["time"] == T0 + timedelta(seconds=N - 1)
    # the same answer on a store without nexus_latest (one index descent per tag)
    ts = T0_NS + np.arange(5, dtype=np.int64) * 10**9
    with HistorianWriter(HistorianConfig(url=db), TAGS) as w:
        w.write(PointBatch.from_values("press-01", np.full(5, 1, np.int64), np.arange(5.0), ts_ns=ts))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP TABLE nexus_latest")
    got = run(with_historian(db, lambda h: h.latest(None)))
    assert [(r["tag_id"], r["value"]) for r in got] == [(1, 4.0), (2, None), (BIG, None)]


def test_writer_keeps_latest_moving_forward_only(db: str) -> None:
    def batch(t0: int, values: list[float]) -> PointBatch:
        ts = t0 + np.arange(len(values), dtype=np.int64) * 10**9
        return PointBatch.from_values(
            "press-01", np.full(len(values), 1, np.int64), np.array(values), ts_ns=ts
        )

    with HistorianWriter(HistorianConfig(url=db), TAGS) as w:
        w.write(batch(T0_NS, [1.0, 2.0, 3.0]))
        w.flush(10)
        w.write(batch(T0_NS - 3600 * 10**9, [-1.0]))  # an older chunk (backfill) arrives later
        w.write(batch(T0_NS, [1.0, 2.0, 3.0]))  # a replay
        w.flush(10)
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT time, value FROM nexus_latest WHERE tag_id = 1").fetchone()
    assert row == (T0 + timedelta(seconds=2), 3.0)


def test_alerts_and_oee(loaded: str) -> None:
    alerts = run(with_historian(loaded, lambda h: h.alerts(T0, T0 + timedelta(hours=1))))
    assert [(a["state"], a["tag"], a["value"]) for a in alerts] == [
        ("cleared", "temp", 80.0),
        ("raised", "temp", 99.0),
    ]
    raised = run(with_historian(loaded, lambda h: h.alerts(T0, T0 + timedelta(hours=1), state="raised")))
    assert len(raised) == 1
    oee = run(with_historian(loaded, lambda h: h.oee(T0 + timedelta(minutes=30), T0 + timedelta(hours=3))))
    assert len(oee) == 1 and oee[0]["oee"] == pytest.approx(0.684) and oee[0]["downtime"] == {"jam": 360.0}
    assert (
        run(with_historian(loaded, lambda h: h.oee(T0 + timedelta(hours=2), T0 + timedelta(hours=3)))) == []
    )


# ---------------------------------------------------------------------------------- HTTP


def test_http_tags_points_and_aggregates(client: TestClient) -> None:  # type: ignore[type-arg]
    tags = client.get("/api/v1/historian/tags", params={"device": "press-01"}).json()
    assert [(t["tag_id"], t["name"], t["unit"]) for t in tags] == [(2, "speed", "rpm"), (1, "temp", "degC")]
    assert client.get("/api/v1/historian/tags/1").json()["uns_path"] == TAGS[1].topic
    r = client.get(
        "/api/v1/historian/points",
        params={"tag": 1, "start": iso(T0), "end": iso(T0 + timedelta(seconds=3))},
    )
    assert r.status_code == 200, r.text
    assert r.json()["series"][0]["value"] == [0.0, 1.0, 2.0]
    r = client.get(
        "/api/v1/historian/aggregates",
        params={"tag": [1, 2], "start": iso(T0), "end": iso(T0 + timedelta(hours=1)), "bucket": "15m"},
    )
    body = r.json()
    assert r.status_code == 200 and body["bucket"] == 900.0 and body["source"] == "nexus_agg_1m"
    assert body["series"][0]["avg"][0] == pytest.approx(449.5)


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        (
            "/points",
            {"tag": 1, "start": "2026-11-30T12:00:00Z", "end": "2026-11-30T11:00:00Z"},
            422,
            "query.end",
        ),
        (
            "/aggregates",
            {"tag": 1, "start": "2026-11-30T10:00:00Z", "end": "2026-11-30T11:00:00Z", "max_points": 10**12},
            422,
            "query.max_points",
        ),
        (
            "/aggregates",
            {"tag": 1, "start": "2026-11-30T10:00:00Z", "end": "2026-11-30T11:00:00Z", "bucket": "fortnight"},
            422,
            "query.bucket",
        ),
        ("/points", {"tag": 99, "start": "2026-11-30T10:00:00Z", "end": "2026-11-30T11:00:00Z"}, 404, None),
        ("/tags/99", {}, 404, None),
        # a parameter of the wrong type is 422 with its path (api.errors maps every validation error)
        ("/points", {"tag": 1, "start": "yesterday", "end": "2026-11-30T11:00:00Z"}, 422, None),
    ],
)
def test_http_bad_requests_are_problems_not_500(
    client: TestClient,
    path: str,
    params: dict[str, Any],
    status: int,
    field: str | None,  # type: ignore[type-arg]
) -> None:
    r = client.get("/api/v1/historian" + path, params=params)
    assert r.status_code == status, r.text
    if status != 400:
        assert r.headers["content-type"].startswith("application/problem+json")
        body = r.json()
        assert body["status"] == status and body["detail"]
        if field:
            assert body["problems"][0]["path"] == field


def test_http_latest_many(client: TestClient) -> None:  # type: ignore[type-arg]
    r = client.post("/api/v1/historian/latest", json={"tags": [1, 2]})
    assert r.status_code == 200, r.text
    assert [x["value"] for x in r.json()] == [N - 1.0, 2.0 * (N - 1)]
    assert client.post("/api/v1/historian/latest", json={"tags": [1, 7]}).status_code == 404
    assert len(client.get("/api/v1/historian/latest").json()) == 3


def test_http_csv_export_streams_every_row(client: TestClient) -> None:  # type: ignore[type-arg]
    with client.stream(
        "GET",
        "/api/v1/historian/export.csv",
        params={"tag": [1, BIG, 2], "start": iso(T0), "end": iso(T0 + timedelta(hours=2))},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        text = "".join(r.iter_text())
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["time", "tag_id", "device", "tag", "value", "quality"]
    assert len(rows) == 1 + 2 * N
    assert rows[1] == ["2026-11-30T10:00:00.000000Z", "1", "press-01", "temp", "0.0", "0"]
    assert rows[-1][1:] == ["2", "press-01", "speed", str(2.0 * (N - 1)), "0"]


def test_http_csv_export_refuses_before_streaming(client: TestClient) -> None:  # type: ignore[type-arg]
    r = client.get("/api/v1/historian/export.csv", params={"tag": 5, "start": iso(T0), "end": iso(T0)})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "query.end"


def test_bucket_equal_to_the_window_reads_the_rows_as_stored(loaded: str) -> None:
    out = run(
        with_historian(
            loaded, lambda h: h.aggregates([1], T0, T0 + timedelta(hours=1), bucket=timedelta(minutes=1))
        )
    )
    (s,) = out["series"]
    agg = _agg_1m(1)
    assert out["source"] == "nexus_agg_1m" and len(s["bucket"]) == 60
    np.testing.assert_allclose(s["twa"], agg.twa[:60])
    np.testing.assert_allclose(s["sum"], agg.sum[:60])
    assert s["first"][:2] == [0.0, 60.0]


def test_fields_select_columns_and_unknown_fields_are_refused(client: TestClient) -> None:  # type: ignore[type-arg]
    params = {"tag": 1, "start": iso(T0), "end": iso(T0 + timedelta(minutes=10)), "bucket": "5m"}
    body = client.get("/api/v1/historian/aggregates", params={**params, "fields": "avg,max"}).json()
    assert set(body["series"][0]) == {"tag_id", "source", "bucket", "avg", "max"}
    assert body["series"][0]["max"] == [299.0, 599.0]
    r = client.get("/api/v1/historian/aggregates", params={**params, "fields": "avg,median"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "query.fields"


def test_database_down_is_503_not_500() -> None:
    from nexus.embedded import free_port

    settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nexus")
    with TestClient(app=create_app(settings)) as c:
        r = c.get("/api/v1/historian/tags", headers={"X-API-Key": "nxk_" + "0" * 18 + "_" + "A" * 43})
    assert r.status_code == 503 and r.json()["title"] == "Service unavailable"


@pytest.mark.parametrize(
    ("bucket", "fields"),
    [
        (timedelta(minutes=1), None),
        (timedelta(minutes=2), ["avg", "last"]),
        (timedelta(seconds=45), ["first"]),
    ],
)
def test_json_built_by_postgres_equals_the_python_answer(
    loaded: str, bucket: timedelta, fields: list[str] | None
) -> None:
    """The API passes PostgreSQL's JSON through; it must say exactly what the row path says."""

    async def both(h: Historian) -> tuple[Any, Any]:
        args = ([2, 1], T0, T0 + timedelta(minutes=20))
        py = await h.aggregates(*args, bucket=bucket, fields=fields)
        js = json.loads(await h.aggregates_json(*args, bucket=bucket, fields=fields))
        return py, js

    py, js = run(with_historian(loaded, both))
    for s in py["series"]:
        s["bucket"] = [t.isoformat() for t in s["bucket"]]
    assert js == py
    assert [s["source"] for s in js["series"]] == (
        ["nexus_points", "nexus_points"] if bucket.total_seconds() % 60 else ["nexus_points", "nexus_agg_1m"]
    )


def test_http_acknowledge_a_raised_alert(client: TestClient) -> None:  # type: ignore[type-arg]
    window = {"start": iso(T0), "end": iso(T0 + timedelta(hours=1))}
    alerts = client.get("/api/v1/historian/alerts", params=window).json()
    raised = next(a for a in alerts if a["state"] == "raised")
    cleared = next(a for a in alerts if a["state"] == "cleared")
    assert cleared["id"] is None and raised["acked_by"] is None
    path = f"/api/v1/historian/alerts/{raised['id']}/ack"
    assert client.post(path).status_code == 403  # the client is a viewer: acknowledging needs alerts:ack
    operator = login(client, "operator")
    r = client.post(path, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json()["acked_by"] == "operator"
    again = client.post(path, headers=login(client, "admin"))
    assert again.json()["acked_by"] == "operator"  # the first acknowledgement stands
    listed = {a["id"]: a for a in client.get("/api/v1/historian/alerts", params=window).json()}
    assert listed[raised["id"]]["acked_by"] == "operator" and listed[raised["id"]]["acked_at"]
    tag, kind, micros = raised["id"].split(":")
    missing = client.post(f"/api/v1/historian/alerts/{tag}:{kind}:{int(micros) + 1}/ack", headers=operator)
    assert missing.status_code == 404, missing.text
    bad = client.post("/api/v1/historian/alerts/not-an-id/ack", headers=operator)
    assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "path.alert_id"
