"""The ``query`` stage: historian read latency through the API and as bare SQL, in the same run.

Data (its own database on the bench's PostgreSQL):

- ``nexus_points``: ``rows`` points of ``tags`` tags, one point per tag every ``interval_s`` seconds up to
  now (50 M rows of 10,000 tags at 5 s ≈ 7 hours), loaded with binary COPY (the writer's encoder) in time
  order — the heap layout the historian writer produces — into daily partitions whose primary key is
  built after the load (a bulk load's usual order; the key and layout are the writer's);
- ``nexus_agg_1m``: one day of 1-minute aggregates of every tag (``tags`` x 1440 rows), time-ordered;
- ``nexus_latest``: filled from ``nexus_points`` as the writer's schema set-up does on an existing store.

Queries, each run ``samples`` times with random tags and ranges, the bare SQL and the API call taking
turns with the same parameters (``API / SQL`` is the ratio of their p50 and of their p99):

- (a) one tag's raw points over one hour: ``GET /api/v1/historian/points``;
- (b) 1-minute aggregates (min, max, avg: a chart's band) of 100 tags over one day:
  ``GET /api/v1/historian/aggregates?bucket=1m&fields=min,max,avg``;
- (c) latest value of every one of the 10,000 tags: ``POST /api/v1/historian/latest`` (ids in the body);
  measured against the same read of ``nexus_latest`` and, for scale, the per-tag index descent on
  ``nexus_points`` that the table replaces.

The API runs as ``uvicorn api.app:create_app`` in its own process and is called over loopback HTTP with a
keep-alive client, so the API figures include HTTP, routing, JSON encoding and the pool checkout.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from connectors.historian.config import HistorianConfig
from connectors.historian.derived import AGG_KEY, ensure_derived_schema
from connectors.historian.latest import backfill_latest, ensure_latest
from connectors.historian.schema import PG_EPOCH_US, ensure_schema, partition_name
from connectors.historian.writer import encode_copy_binary

DAY_US = 86_400 * 1_000_000
_AGG_ROW = np.dtype(
    [("n", ">i2"), ("l0", ">i4"), ("b", ">i8"), ("l1", ">i4"), ("id", ">i8"),
     ("l2", ">i4"), ("min", ">f8"), ("l3", ">i4"), ("max", ">f8"), ("l4", ">i4"), ("avg", ">f8"),
     ("l5", ">i4"), ("count", ">i8"), ("l6", ">i4"), ("sum", ">f8"), ("l7", ">i4"), ("first", ">f8"),
     ("l8", ">i4"), ("last", ">f8"), ("l9", ">i4"), ("twa", ">f8")]
)  # fmt: skip
_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)

SQL_A = "SELECT time, value, quality FROM nexus_points WHERE tag_id = %s AND time >= %s AND time < %s ORDER BY time"
SQL_B = (
    "SELECT bucket, tag_id, min, max, avg FROM nexus_agg_1m "
    "WHERE tag_id = ANY(%s) AND bucket >= %s AND bucket < %s ORDER BY tag_id, bucket"
)
SQL_C = "SELECT tag_id, time, value, quality FROM nexus_latest WHERE tag_id = ANY(%s) ORDER BY tag_id"
SQL_C_POINTS = (
    "SELECT t.tag_id, p.time, p.value, p.quality FROM unnest(%s::bigint[]) AS t(tag_id) LEFT JOIN LATERAL ("
    "SELECT time, value, quality FROM nexus_points WHERE tag_id = t.tag_id ORDER BY time DESC LIMIT 1) p ON true"
)


TUNING = {
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "effective_cache_size": "8GB",
    "random_page_cost": "1.1",
    "max_wal_size": "8GB",
}
"""Server settings of the stage (a historian's PostgreSQL is tuned like this; the embedded defaults are
for a laptop demo): the same server serves the API and the bare SQL."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _agg_payload(bucket_us: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> bytes:
    n = len(ids)
    rows = np.empty(n, _AGG_ROW)
    rows["n"] = 10
    for i in range(10):
        rows[f"l{i}"] = 8
    avg = rng.normal(50.0, 10.0, n)
    rows["b"], rows["id"] = bucket_us, ids
    rows["min"], rows["max"], rows["avg"] = avg - 5, avg + 5, avg
    rows["count"], rows["sum"] = 12, avg * 12
    rows["first"], rows["last"], rows["twa"] = avg - 1, avg + 1, avg
    return _HEADER + rows.tobytes() + b"\xff\xff"


def load(url: str, *, rows: int, tags: int, interval_s: float, seed: int = 7) -> dict[str, Any]:
    """Create and fill the tables; returns what was loaded and how long each step took."""
    rng = np.random.default_rng(seed)
    tag_ids = np.unique(rng.integers(1, 2**62, tags + 16, dtype=np.int64))[:tags]
    rng.shuffle(tag_ids)
    per_tag = max(1, rows // tags)
    step_us = int(interval_s * 1_000_000)
    end_us = (time.time_ns() // 1000 // step_us) * step_us - PG_EPOCH_US  # PostgreSQL epoch µs
    start_us = end_us - per_tag * step_us
    out: dict[str, Any] = {"rows": per_tag * tags, "tags": tags, "interval_s": interval_s}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET max_parallel_maintenance_workers = 2")
        ensure_schema(conn, HistorianConfig(url=url))
        ensure_derived_schema(conn, ["1m"])
        with (
            conn.cursor() as cur,
            cur.copy("COPY nexus_tags (tag_id, device_id, name, unit, uns_path) FROM STDIN") as cp,
        ):
            for i, t in enumerate(tag_ids.tolist()):
                dev = f"dev-{i // 100:04d}"
                cp.write_row((t, dev, f"t{i % 100:02d}", "degC", f"acme/p1/a/l1/{dev}/t{i % 100:02d}"))
        # daily partitions as plain tables first, keyed after the load, then attached
        t0 = time.perf_counter()
        day0 = (start_us + PG_EPOCH_US) // DAY_US * DAY_US
        days = list(range(day0, end_us + PG_EPOCH_US + 1, DAY_US))
        parts = [partition_name(d, 86_400) for d in days]
        for name in parts:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE nexus_points)").format(sql.Identifier(name)))
        chunk_steps = max(1, 1_000_000 // tags)
        ts_grid = start_us + np.arange(per_tag, dtype=np.int64) * step_us
        done = 0
        for k in range(0, per_tag, chunk_steps):
            ts = np.repeat(ts_grid[k : k + chunk_steps], tags)
            ids = np.tile(tag_ids, len(ts) // tags)
            values = rng.normal(50.0, 10.0, len(ts))
            quality = np.zeros(len(ts), np.uint8)
            day_of = (ts + PG_EPOCH_US) // DAY_US
            for d in np.unique(day_of).tolist():
                m = day_of == d
                target = partition_name(int(d) * DAY_US, 86_400)
                with (
                    conn.cursor() as cur,
                    cur.copy(
                        sql.SQL("COPY {} (time, tag_id, value, quality) FROM STDIN (FORMAT BINARY)").format(
                            sql.Identifier(target)
                        )
                    ) as cp,
                ):
                    cp.write(encode_copy_binary(ts[m], ids[m], values[m], quality[m]))
            done += len(ts)
            print(
                f"\r\033[K  query: COPY {done:,}/{per_tag * tags:,} rows", end="", file=sys.stderr, flush=True
            )
        _say("")
        out["copy_s"] = round(time.perf_counter() - t0, 1)
        out["copy_rows_per_s"] = round(per_tag * tags / max(out["copy_s"], 0.1))  # copy_s is rounded to 0.1
        t0 = time.perf_counter()
        for d, name in zip(days, parts, strict=True):
            lo = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=d)
            hi = lo + timedelta(days=1)
            ident = sql.Identifier(name)
            _say(f"  query: primary key and attach of {name} ...")
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (tag_id, time)").format(ident))
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (time >= {} AND time < {})").format(
                    ident, sql.Identifier(f"{name}_range"), sql.Literal(lo), sql.Literal(hi)
                )
            )
            conn.execute(
                sql.SQL("ALTER TABLE nexus_points ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                    ident, sql.Literal(lo), sql.Literal(hi)
                )
            )
        out["index_s"] = round(time.perf_counter() - t0, 1)
        # one day of 1-minute aggregates per tag, time-ordered like the derived writer's
        t0 = time.perf_counter()
        conn.execute("ALTER TABLE nexus_agg_1m DROP CONSTRAINT nexus_agg_1m_pkey")
        agg_end = end_us // 60_000_000 * 60_000_000
        minutes = agg_end - np.arange(1440, 0, -1, dtype=np.int64) * 60_000_000
        for k in range(0, 1440, 60):
            b = np.repeat(minutes[k : k + 60], tags)
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY nexus_agg_1m (bucket, tag_id, min, max, avg, count, sum, first, last, twa) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as cp,
            ):
                cp.write(_agg_payload(b, np.tile(tag_ids, len(b) // tags), rng))
        conn.execute(sql.SQL("ALTER TABLE nexus_agg_1m ADD PRIMARY KEY {}").format(sql.SQL(AGG_KEY)))
        out["agg_rows"] = 1440 * tags
        out["agg_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        conn.execute("DROP TABLE IF EXISTS nexus_latest")
        ensure_latest(conn)
        out["latest_rows"] = backfill_latest(conn)
        out["latest_s"] = round(time.perf_counter() - t0, 1)
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        out["database_gb"] = round(int(size[0]) / 2**30, 2) if size else None
    pg_epoch = datetime(2000, 1, 1, tzinfo=UTC)
    out["start"] = (pg_epoch + timedelta(microseconds=start_us)).isoformat()
    out["end"] = (pg_epoch + timedelta(microseconds=end_us)).isoformat()
    out["tag_ids"] = tag_ids.tolist()
    return out


def _pct(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_ms": round(statistics.median(s) * 1000, 2),
        "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))] * 1000, 2),
        "max_ms": round(s[-1] * 1000, 2),
    }


def _start_api(url: str, work: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEXUS_DATABASE_URL": url, "NEXUS_LOG_LEVEL": "WARNING"}
    log = (work / "api.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _viewer_key(url: str) -> str:
    """An API key with the viewer role in the benchmark's database (the API answers no one without one)."""
    from control.accounts import Accounts
    from control.store import ConfigStore

    store = ConfigStore(url)
    try:
        store.migrate()
        return Accounts(store.engine).create_key("bench-query", "viewer", created_by="bench")[1]
    finally:
        store.close()


class _Http:
    """A keep-alive HTTP/1.1 client on the stdlib (less client overhead than httpx for tiny answers)."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.auth = {"Authorization": f"Bearer {key}"}

    def _send(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/json", **self.auth} if body is not None else dict(self.auth)
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path[:80]}: HTTP {r.status}: {data[:300]!r}")
        return data

    def get(self, path: str, params: dict[str, Any]) -> bytes:
        return self._send("GET", f"{path}?{urlencode(params, doseq=True)}")

    def post(self, path: str, body: Any) -> bytes:
        return self._send("POST", path, json.dumps(body).encode())


def measure(
    url: str, loaded: dict[str, Any], *, work: Path, port: int, samples: int, seed: int = 11
) -> dict[str, Any]:
    rng = random.Random(seed)
    tag_ids: list[int] = loaded["tag_ids"]
    start = datetime.fromisoformat(loaded["start"])
    end = datetime.fromisoformat(loaded["end"])
    key = _viewer_key(url)
    api = _start_api(url, work, port)
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                probe.request("GET", "/health")
                if probe.getresponse().status == 200:
                    probe.close()
                    break
            except OSError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {work / 'api.log'}")
            time.sleep(0.2)
        client = _Http(port, key)
        with psycopg.connect(url, autocommit=True) as conn:

            def run(
                name: str,
                n: int,
                *,
                params: Callable[[], dict[str, Any]],
                bare: Callable[[dict[str, Any]], int],
                call: Callable[[dict[str, Any]], bytes],
                count: Callable[[bytes], int],
            ) -> None:
                for _ in range(3):  # warm the pool, the plan cache and the pages
                    p = params()
                    bare(p)
                    call(p)
                t_sql: list[float] = []
                t_api: list[float] = []
                counts: set[tuple[int, int]] = set()
                for i in range(n):
                    p = params()
                    if i % 2 == 0:
                        t0 = time.perf_counter()
                        n_sql = bare(p)
                        t1 = time.perf_counter()
                        body = call(p)
                        t2 = time.perf_counter()
                        t_sql.append(t1 - t0)
                        t_api.append(t2 - t1)
                    else:
                        t0 = time.perf_counter()
                        body = call(p)
                        t1 = time.perf_counter()
                        n_sql = bare(p)
                        t2 = time.perf_counter()
                        t_api.append(t1 - t0)
                        t_sql.append(t2 - t1)
                    counts.add((n_sql, count(body)))  # parsing the answer is the client's, not timed
                if any(a != b for a, b in counts):
                    raise RuntimeError(
                        f"{name}: the API and the SQL disagree on row counts: {sorted(counts)[:5]}"
                    )
                s, a = _pct(t_sql), _pct(t_api)
                out[name] = {
                    "sql": s,
                    "api": a,
                    "rows": sorted({c[0] for c in counts}),
                    "ratio_p50": round(a["p50_ms"] / s["p50_ms"], 2),
                    "ratio_p99": round(a["p99_ms"] / s["p99_ms"], 2),
                }
                _say(
                    f"  {name}: SQL p50/p99 {s['p50_ms']}/{s['p99_ms']} ms, API {a['p50_ms']}/{a['p99_ms']} ms"
                )

            span = (end - start).total_seconds()

            def params_a() -> dict[str, Any]:
                t = start + timedelta(seconds=rng.uniform(0, span - 3600))
                return {"tag": rng.choice(tag_ids), "start": t, "end": t + timedelta(hours=1)}

            def bare_a(p: dict[str, Any]) -> int:
                return len(conn.execute(SQL_A, (p["tag"], p["start"], p["end"]), binary=True).fetchall())

            def api_a(p: dict[str, Any]) -> bytes:
                return client.get(
                    "/api/v1/historian/points",
                    {"tag": p["tag"], "start": p["start"].isoformat(), "end": p["end"].isoformat()},
                )

            def count_a(body: bytes) -> int:
                return len(json.loads(body)["series"][0]["time"])

            _say(f"  (a) one tag's raw points over one hour, {samples} samples ...")
            run("a_raw_1h", samples, params=params_a, bare=bare_a, call=api_a, count=count_a)

            day_end = datetime.fromisoformat(loaded["end"]).replace(second=0, microsecond=0)

            def params_b() -> dict[str, Any]:
                back = timedelta(minutes=rng.randrange(0, 60))  # stays inside the loaded day
                return {
                    "tags": rng.sample(tag_ids, 100),
                    "start": day_end - timedelta(days=1),
                    "end": day_end - back,
                }

            def bare_b(p: dict[str, Any]) -> int:
                return len(conn.execute(SQL_B, (p["tags"], p["start"], p["end"]), binary=True).fetchall())

            def api_b(p: dict[str, Any]) -> bytes:
                return client.get(
                    "/api/v1/historian/aggregates",
                    {
                        "tag": p["tags"],
                        "start": p["start"].isoformat(),
                        "end": p["end"].isoformat(),
                        "bucket": "1m",
                        "max_points": 2000,
                        "fields": "min,max,avg",
                    },
                )

            def count_b(raw: bytes) -> int:
                body = json.loads(raw)
                if body["source"] != "nexus_agg_1m":
                    raise RuntimeError(f"(b) read {body['source']}, not nexus_agg_1m")
                return sum(len(s["bucket"]) for s in body["series"])

            _say(f"  (b) 1-minute aggregates of 100 tags over one day, {max(20, samples // 4)} samples ...")
            run(
                "b_agg_1m_100_tags_1d",
                max(20, samples // 4),
                params=params_b,
                bare=bare_b,
                call=api_b,
                count=count_b,
            )

            def params_c() -> dict[str, Any]:
                ids = list(tag_ids)
                rng.shuffle(ids)
                return {"tags": ids}

            def bare_c(p: dict[str, Any]) -> int:
                return len(conn.execute(SQL_C, (p["tags"],), binary=True).fetchall())

            def api_c(p: dict[str, Any]) -> bytes:
                return client.post("/api/v1/historian/latest", {"tags": p["tags"]})

            def count_c(body: bytes) -> int:
                return len(json.loads(body))

            _say(f"  (c) latest value of {len(tag_ids):,} tags, {samples // 2} samples ...")
            run(
                "c_latest_all_tags",
                max(20, samples // 2),
                params=params_c,
                bare=bare_c,
                call=api_c,
                count=count_c,
            )
            t_pts = []
            for _ in range(5):
                t0 = time.perf_counter()
                conn.execute(SQL_C_POINTS, (tag_ids,)).fetchall()
                t_pts.append(time.perf_counter() - t0)
            out["c_latest_from_points_sql"] = _pct(t_pts)
            _say(
                f"  (c) without nexus_latest (index descent per tag): p50 {out['c_latest_from_points_sql']['p50_ms']} ms"
            )
    finally:
        api.terminate()
        try:
            api.wait(10)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
    return out


def stage_query(
    pg_url: str,
    *,
    rows: int,
    tags: int,
    interval_s: float,
    samples: int,
    work: Path,
    port: int,
    restart: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Load the query database, then measure (a), (b), (c) through the API and as bare SQL."""
    name = "nexus_query"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for key, value in TUNING.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(key), sql.Literal(value)))
    if restart is not None:
        restart()  # shared_buffers needs a restart
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(pg_url, dbname=name)
    _say(f"  query: loading {rows:,} rows of {tags:,} tags ...")
    loaded = load(url, rows=rows, tags=tags, interval_s=interval_s)
    result: dict[str, Any] = {k: v for k, v in loaded.items() if k != "tag_ids"}
    result["server_settings"] = TUNING
    _say(
        f"  query: loaded in {loaded['copy_s']} s COPY + {loaded['index_s']} s keys; "
        f"{loaded['database_gb']} GB"
    )
    result.update(measure(url, loaded, work=work, port=port, samples=samples))
    targets = {"a_raw_1h": 100.0, "b_agg_1m_100_tags_1d": 500.0, "c_latest_all_tags": 100.0}
    result["targets"] = {
        k: {
            "p99_target_ms": t,
            "api_p99_ok": result[k]["api"]["p99_ms"] < t,
            "api_within_1_5x_p50": result[k]["ratio_p50"] <= 1.5,
            "api_within_1_5x_p99": result[k]["ratio_p99"] <= 1.5,
        }
        for k, t in targets.items()
    }
    return result
