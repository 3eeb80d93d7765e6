"""The historian writer against a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import psycopg
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.historian import writer as writer_module
from connectors.historian.config import HistorianConfig
from connectors.historian.sink import HistorianSink
from connectors.historian.writer import HistorianWriter, encode_copy_binary
from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.quality import Quality
from core.tags import TagInfo
from nexus.embedded import EmbeddedPostgres, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, params=["insert", "copy"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both ways a chunk is written: one ``INSERT ... unnest`` statement (chunks up
    to ``INSERT_MAX_ROWS``, the live case) and the COPY transaction (larger chunks, catch-ups)."""
    if request.param == "copy":
        monkeypatch.setattr(writer_module, "INSERT_MAX_ROWS", 0)
    return str(request.param)


T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
BIG = 2**63 - 5
TAGS = {
    1: TagInfo(1, "press-01", "temp", "degC", "acme/p1/press/l1/press-01/temp"),
    BIG: TagInfo(BIG, "press-01", "speed", "rpm", "acme/p1/press/l1/press-01/speed"),
}


def batch(n: int = 3, t0: int = T0, step_ns: int = 1_000_000) -> PointBatch:
    ids = np.array([1, BIG] * n, dtype=np.int64)[:n]
    ts = t0 + np.arange(n, dtype=np.int64) * step_ns
    return PointBatch.from_values("press-01", ids, np.arange(n, dtype=np.float64) + 0.5, ts_ns=ts)


def rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT time, tag_id, value, quality FROM nexus_points ORDER BY time, tag_id"
        ).fetchall()


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM nexus_points").fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return 0


def test_round_trip_values_time_quality_nan(db: str) -> None:
    b = PointBatch.from_values(
        "press-01",
        [1, BIG, 1],
        [21.5, float("nan"), -3.25],
        ts_ns=np.array([T0, T0, T0 + 1_000], dtype=np.int64),
        quality=np.array([Quality.GOOD, Quality.COMM_ERROR, Quality.CLAMPED], dtype=np.uint8),
    )
    with HistorianWriter(HistorianConfig(url=db), TAGS, clock=lambda: T0 / 1e9) as w:
        w.write(b)
        w.flush(10)
        assert w.stats()["rows_written"] == 3
        assert w.mode == "native"
    t = datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    t2 = datetime(2023, 11, 14, 22, 13, 20, 123457, tzinfo=UTC)  # +1000 ns = +1 µs
    assert rows(db) == [(t, 1, 21.5, 0), (t, BIG, None, Quality.COMM_ERROR), (t2, 1, -3.25, Quality.CLAMPED)]
    with psycopg.connect(db) as conn:
        where = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM nexus_points").fetchall()
        tags = conn.execute("SELECT tag_id, uns_path FROM nexus_tags ORDER BY tag_id").fetchall()
    assert where == [("nexus_points_p20231114",)]
    assert tags == [(1, TAGS[1].topic), (BIG, TAGS[BIG].topic)]


def test_rows_on_several_days_go_to_their_partitions(db: str) -> None:
    day = 86_400 * 10**9
    with HistorianWriter(HistorianConfig(url=db), TAGS, clock=lambda: (T0 + 2 * day) / 1e9) as w:
        w.write(batch(4, t0=T0, step_ns=day))
        w.flush(10)
    with psycopg.connect(db) as conn:
        parts = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM nexus_points GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert parts == [(f"nexus_points_p202311{d}", 1) for d in (14, 15, 16, 17)]


def test_partition_creation_is_bounded_by_the_clock(db: str) -> None:
    """Issue 12.1: 30 rows dated on 30 days of 1950 created 30 partitions; now they go to DEFAULT."""
    day = 86_400 * 10**9
    t1950 = -631_152_000 * 10**9  # 1950-01-01
    with HistorianWriter(HistorianConfig(url=db), TAGS, clock=lambda: T0 / 1e9) as w:
        w.write(batch(30, t0=t1950, step_ns=day))
        w.write(batch(2, t0=T0 + 30 * day, step_ns=day))  # a month ahead of the clock: DEFAULT too
        w.write(batch(1, t0=T0))
        w.flush(10)
    with psycopg.connect(db) as conn:
        parts = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM nexus_points GROUP BY 1 ORDER BY 1"
        ).fetchall()
        n_partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'nexus_points'::regclass"
        ).fetchone()
    assert parts == [("nexus_points_default", 32), ("nexus_points_p20231114", 1)]
    assert n_partitions == (2,)


def test_replay_is_idempotent(db: str) -> None:
    with HistorianWriter(HistorianConfig(url=db), TAGS) as w:
        w.write(batch(10))
        w.flush(10)
        w.write(batch(10))  # the same rows again (a replay after a crash)
        w.write(batch(20))  # overlapping: 10 old + 10 new
        w.flush(10)
        s = w.stats()
    assert count(db) == 20
    assert s["rows_written"] == 20 and s["duplicates_skipped"] == 20 and s["rows_pending"] == 0


def latest(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT tag_id, time, value FROM nexus_latest ORDER BY tag_id").fetchall()


def test_nexus_latest_is_upserted_at_most_every_interval_and_by_every_flush(
    db: str, wait_for: Callable[..., Any]
) -> None:
    """Issue 15: one upsert per ``latest_interval_s`` with each tag's newest row since, never ahead
    of ``nexus_points``; a flush returns only once ``nexus_latest`` shows every committed row."""
    cfg = HistorianConfig(url=db, batch_rows=10, max_delay_s=600, latest_interval_s=3600)
    with HistorianWriter(cfg, TAGS) as w:
        w.write(batch(10, t0=T0))
        w.flush(30)
        after_first = latest(db)
        for i in (1, 2):  # two chunks (10 rows each) committed without an upsert of nexus_latest
            w.write(batch(10, t0=T0 + i * 10**9))
        wait_for(lambda: count(db) == 30, timeout=30, what="30 rows committed")
        lagging = latest(db)
        w.flush(30)
        current = latest(db)
    newest = {r[1]: (r[0], r[2]) for r in rows(db)}  # tag -> its newest (time, value): rows sort by time
    assert [(t, v) for _, t, v in current] == [newest[1], newest[BIG]]
    assert lagging == after_first != current  # behind by the interval, never ahead
    assert all(t < current[0][1] for _, t, _ in after_first)


def test_a_chunk_due_for_nexus_latest_gives_each_tag_its_newest_row(db: str) -> None:
    """A first chunk (nothing left from earlier ones) takes ``nexus_latest`` from itself: per tag the
    row with the newest time, the later of two with the same time; NaN stored as NULL. On the
    INSERT path the statement picks them; on the COPY path the client does, as for any chunk."""
    b = PointBatch.from_values(
        "press-01",
        [1, BIG, 1, BIG, BIG],
        [1.0, 2.0, float("nan"), 4.0, 5.0],
        ts_ns=np.array([T0, T0 + 2_000, T0 + 1_000, T0, T0 + 2_000], dtype=np.int64),
    )
    with HistorianWriter(HistorianConfig(url=db), TAGS, clock=lambda: T0 / 1e9) as w:
        w.write(b)
        w.flush(30)
        assert w.stats()["rows_written"] == 4 and w.stats()["duplicates_skipped"] == 1
    got = {tag: (t, value) for tag, t, value in latest(db)}
    at = lambda ns: datetime.fromtimestamp(ns // 1000 / 1e6, UTC)  # noqa: E731 - the stored microseconds
    assert got == {1: (at(T0 + 1_000), None), BIG: (at(T0 + 2_000), 5.0)}


def test_time_bounded_flush_without_calling_flush(db: str, wait_for: Callable[..., Any]) -> None:
    w = HistorianWriter(HistorianConfig(url=db, batch_rows=1_000_000, max_delay_s=0.3), TAGS)
    try:
        w.write(batch(5))
        wait_for(lambda: count(db) == 5, timeout=10, what="5 rows after max_delay")
    finally:
        w.close()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=False), max_size=40), min_size=1, max_size=4)
)
def test_a_payload_in_a_reused_buffer_equals_a_fresh_one(chunks: list[list[float]]) -> None:
    """The writer encodes every commit into the same buffer: stale bytes of a larger earlier payload
    never leak into a later one, and a buffer too small is replaced by a larger one."""
    buf = bytearray(b"\xaa" * 700)
    for i, vals in enumerate(chunks):
        n = len(vals)
        args = (
            np.arange(n, dtype=np.int64) * 1000 + i,
            np.arange(n, dtype=np.int64) + 7,
            np.array(vals, dtype=np.float64),
            np.arange(n, dtype=np.uint8) % 3,
        )
        view = encode_copy_binary(*args, out=buf)
        assert isinstance(view, memoryview)
        assert bytes(view) == encode_copy_binary(*args)
        assert isinstance(view.obj, bytearray)
        buf = view.obj


def test_batches_of_an_open_chunk_do_not_wake_the_writer_each(db: str) -> None:
    """60 batches within one chunk's deadline wake the writer thread a few times, not 60: the first
    starts the chunk, the queue half full (32 of 64) drains it, the flush ends it."""
    cfg = HistorianConfig(url=db, batch_rows=1_000_000, max_delay_s=600, queue_batches=64)
    with HistorianWriter(cfg, TAGS) as w:
        w.flush(10)  # connected and idle
        before = w.stats()["wakeups"]
        for i in range(60):
            w.write(batch(4, t0=T0 + i * 10**9))
        w.flush(10)
        stats = w.stats()
        assert stats["rows_written"] == 240
        assert stats["batches_written"] == 1  # one chunk, one transaction
        assert stats["backlog_rows"] == 0  # every batch came through the queue, none read back
        assert stats["wakeups"] - before <= 10, stats["wakeups"] - before
    assert count(db) == 240


def test_size_bounded_flush(db: str, wait_for: Callable[..., Any]) -> None:
    w = HistorianWriter(HistorianConfig(url=db, batch_rows=100, max_delay_s=600), TAGS)
    try:
        for i in range(5):
            w.write(batch(50, t0=T0 + i * 10**9))
        wait_for(lambda: w.stats()["batches_written"] == 2, timeout=10, what="two size-bounded writes")
        assert count(db) == 200
        assert w.rows_pending == 50
        w.flush(10)
        assert count(db) == 250
    finally:
        w.close()


def test_survives_terminated_connections(db: str, wait_for: Callable[..., Any]) -> None:
    cfg = HistorianConfig(url=db, retry_initial_s=0.05, max_delay_s=0.1)
    with HistorianWriter(cfg, TAGS) as w:
        w.write(batch(10))
        w.flush(10)
        with psycopg.connect(db, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'nexus-historian' AND datname = current_database()"
            ).fetchone()
        assert killed == (1,)
        w.write(batch(10, t0=T0 + 10**9))
        w.flush(20)
        assert w.stats()["errors"] >= 1
    assert count(db) == 20


def test_survives_database_restart(tmp_path: Path, wait_for: Callable[..., Any]) -> None:
    pg = EmbeddedPostgres(tmp_path, port=free_port())
    pg.start()
    try:
        cfg = HistorianConfig(url=pg.url, retry_initial_s=0.05, retry_max_s=0.5, max_delay_s=0.1)
        w = HistorianWriter(cfg, TAGS)
        w.write(batch(10))
        w.flush(20)
        pg.stop()
        w.write(batch(10, t0=T0 + 10**9))  # accepted while the server is down
        wait_for(lambda: w.stats()["errors"] >= 2, timeout=20, what="failed retries")
        assert w.rows_pending == 10
        pg.start()  # same folder, data kept
        w.flush(30)
        w.close()
        assert count(pg.url) == 20
    finally:
        pg.stop()


def test_close_gives_up_with_a_typed_error_when_unreachable() -> None:
    from connectors.historian.writer import HistorianTimeout

    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/nexus"
    w = HistorianWriter(HistorianConfig(url=url, retry_initial_s=0.05, retry_max_s=0.2), TAGS)
    w.write(batch(3))
    with pytest.raises(HistorianTimeout) as info:
        w.close(timeout=1.0)
    assert "secret" not in str(info.value)
    assert w.rows_pending == 3


def test_bytewax_sink(db: str) -> None:
    flow = Dataflow("historian_sink_test")
    batches = [batch(5, t0=T0 + i * 10**9) for i in range(4)]
    stream = op.input("in", flow, TestingSource(batches))
    op.output("out", stream, HistorianSink(HistorianConfig(url=db, max_delay_s=0.1), TAGS))
    run_main(flow)
    assert count(db) == 20


def test_an_activation_s_batches_and_a_hot_change_between_them(db: str) -> None:
    """The sink hands an activation's batches over at once; a hot change between them registers
    its new tag before the points after it, and every row arrives."""
    new_tag = TagInfo(77, "press-01", "flow", "l/min", "acme/p1/press/l1/press-01/flow")
    config = DeviceConfig("press-01", 2, {**TAGS, 77: new_tag})
    after = PointBatch.from_values("press-01", [77, 1], [3.5, 4.5], ts_ns=T0 + 10 * 10**9)
    part = HistorianSink(HistorianConfig(url=db, max_delay_s=600), TAGS).build("h", 0, 1)
    try:
        part.write_batch([batch(4), batch(4, t0=T0 + 10**9), config, after])
        # two records: the batches before the config merged into one, the one after; none for the config
        assert part.writer.spool.last_seq == 2
        part.writer.flush(10)
        assert part.writer.stats()["rows_written"] == 10
    finally:
        part.close()
    with psycopg.connect(db) as conn:
        stored = conn.execute("SELECT value FROM nexus_points WHERE tag_id = 77").fetchall()
        tag = conn.execute("SELECT uns_path FROM nexus_tags WHERE tag_id = 77").fetchone()
    assert stored == [(3.5,)] and tag == (new_tag.topic,)


def test_an_activation_s_device_batches_are_spooled_as_few_records_and_every_row_lands(db: str) -> None:
    """A worker hands over one batch per device poll; they are spooled and queued as records of up to
    ``MERGE_ROWS`` rows (one encoding and one queue entry for many polls), and every row of every
    device is stored with its own time, value and quality."""
    devices = [f"press-{i:02d}" for i in range(12)]
    batches = [
        PointBatch(
            dev,
            np.full(100, T0 + i * 10**6, np.int64),
            np.arange(100, dtype=np.int64) + 1_000 * (i + 1),
            np.arange(100, dtype=np.float64) + i / 4,
            np.full(100, Quality.BAD if i % 3 == 0 else Quality.GOOD, np.uint8),
        )
        for i, dev in enumerate(devices)
    ]
    part = HistorianSink(HistorianConfig(url=db, max_delay_s=600), TAGS).build("h", 0, 1)
    try:
        part.write_batch(batches)
        assert writer_module.MERGE_ROWS == 1_024
        assert part.writer.spool.last_seq == 2  # 1,200 rows: ten polls in one record, two in the next
        part.writer.flush(10)
        assert part.writer.stats()["rows_written"] == 1_200
    finally:
        part.close()
    with psycopg.connect(db) as conn:
        stored = conn.execute(
            "SELECT tag_id, value, quality, extract(epoch FROM time) FROM nexus_points ORDER BY tag_id"
        ).fetchall()
    expected = sorted(
        (int(t), float(v), int(q), (T0 // 1_000 + i * 1_000) / 1e6)
        for i, b in enumerate(batches)
        for t, v, q in zip(b.tag_ids, b.values, b.quality, strict=True)
    )
    assert [(t, v, q, round(float(e), 6)) for t, v, q, e in stored] == [
        (t, v, q, round(e, 6)) for t, v, q, e in expected
    ]


# -- store and forward: the disk spool ----------------------------------------------------------------


def test_database_down_never_blocks_and_everything_arrives_in_order(
    tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    pg.start()
    try:
        cfg = HistorianConfig(
            url=pg.url,
            retry_initial_s=0.05,
            retry_max_s=0.5,
            max_delay_s=0.1,
            queue_batches=4,
            batch_rows=7,
            spool_dir=str(tmp_path / "spool"),
        )
        w = HistorianWriter(cfg, TAGS)
        w.write(batch(10))
        w.flush(20)
        pg.stop()
        for i in range(1, 201):  # 50x the in-memory queue: write() must not wait for the database
            w.write(batch(10, t0=T0 + i * 10**9))
        assert w.stats()["spool_pending_records"] >= 196
        pg.start()
        w.flush(60)
        s = w.stats()
        w.close()
        assert count(pg.url) == 2010 and s["rows_pending"] == 0 and s["spool_pending_records"] == 0
        assert s["backlog_rows"] > 0  # read back from the spool, not from memory
        with psycopg.connect(pg.url) as conn:
            # rows were committed in spool order: per tag, a later transaction never holds an earlier time
            late = conn.execute(
                "SELECT count(*) FROM (SELECT time, max(time) OVER (PARTITION BY tag_id ORDER BY "
                "xmin::text::bigint, time ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before "
                "FROM nexus_points) s WHERE time < before"
            ).fetchone()
        assert late == (0,)
    finally:
        pg.stop()


def test_rows_accepted_before_a_crash_are_written_after_the_restart(db: str, tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nexus"  # nobody listens: rows stay in the spool
    w = HistorianWriter(HistorianConfig(url=url, retry_initial_s=0.05, spool_dir=spool), TAGS)
    for i in range(5):
        w.write(batch(10, t0=T0 + i * 10**9))
    # a crash: the writer is never closed (its thread is a daemon, its spool files stay as they are)
    w._abort.set()
    again = HistorianWriter(HistorianConfig(url=db, spool_dir=spool), TAGS)
    try:
        assert again.recovered_records == 5
        again.flush(30)
    finally:
        again.close()
    assert count(db) == 50


def test_close_keeps_unwritten_rows_in_the_spool_folder(db: str, tmp_path: Path) -> None:
    from connectors.historian.writer import HistorianTimeout

    spool = str(tmp_path / "spool")
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nexus"
    w = HistorianWriter(HistorianConfig(url=url, retry_initial_s=0.05, spool_dir=spool), TAGS)
    w.write(batch(3))
    with pytest.raises(HistorianTimeout, match="stay in the spool"):
        w.close(timeout=0.5)
    with HistorianWriter(HistorianConfig(url=db, spool_dir=spool), TAGS) as again:
        again.flush(30)
    assert count(db) == 3


def _spool_backlog(spool: str, batches: int, t0: int = T0) -> None:
    """``batches`` x 100 rows from ``t0`` on, accepted by a writer whose database never answered, left
    in ``spool``."""
    from connectors.historian.writer import HistorianTimeout

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nexus"  # nobody listens
    w = HistorianWriter(HistorianConfig(url=url, retry_initial_s=0.05, spool_dir=spool), TAGS)
    for i in range(batches):
        w.write(batch(100, t0=t0 + i * 1_000_000_000))
    with pytest.raises(HistorianTimeout):
        w.close(timeout=0.2)


def test_batches_held_in_memory_stay_bounded_while_behind(
    db: str, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    """Issue 11 (soak RSS): behind the spool, the writer keeps at most 4x ``queue_batches`` batches in
    memory — the rest it reads back from the spool — instead of every batch that arrived meanwhile."""
    spool = str(tmp_path / "spool")
    _spool_backlog(spool, 200)
    cfg = HistorianConfig(url=db, queue_batches=4, batch_rows=200, drain_rows_per_s=2_000, spool_dir=spool)
    w = HistorianWriter(cfg, TAGS)
    try:
        assert w.recovered_records == 200  # a restart with a backlog: its catch-up is paced (10 s)
        for i in range(200, 260):  # live batches one at a time, each taken off the queue while behind
            w.write(batch(100, t0=T0 + i * 1_000_000_000))
            wait_for(lambda: w.stats()["queued_batches"] == 0, timeout=30, what="the writer taking it")
        w.flush(timeout=120)
        s = w.stats()
    finally:
        w.close()
    assert s["rows_written"] == 26_000 and count(db) == 26_000, s
    assert s["backlog_rows"] > 0, s  # it was behind: rows came back from the spool
    assert s["paced_s"] > 0, s
    assert 0 < s["cache_peak"] <= 16, s


def test_only_a_catch_up_is_paced_not_rows_that_arrive_fast(db: str, tmp_path: Path) -> None:
    """Rows faster than one COPY stream takes them fall behind into the spool and are written at full
    speed (pacing live rows would only grow the spool); the backlog of a restart is paced."""
    cfg = HistorianConfig(url=db, queue_batches=4, batch_rows=200, drain_rows_per_s=2_000)
    with HistorianWriter(cfg, TAGS) as live:
        for i in range(100):
            live.write(batch(100, t0=T0 + i * 1_000_000_000))
        live.flush(timeout=120)
        s = live.stats()
    assert s["rows_written"] == 10_000 and s["backlog_rows"] > 0, s  # it was behind
    assert s["paced_s"] == 0, s

    spool = str(tmp_path / "spool")
    _spool_backlog(spool, 10, t0=T0 + 10**12)
    with HistorianWriter(cfg.model_copy(update={"spool_dir": spool}), TAGS) as restarted:
        restarted.flush(timeout=120)
        s = restarted.stats()
    assert s["rows_written"] == 1_000 and s["paced_s"] > 0, s


def test_rows_of_dropped_spool_records_are_counted_exactly() -> None:
    """Database unreachable, spool bound small: the oldest records go, and ``rows_dropped`` is their
    rows, read back from the dropped segments (it used to be an estimate from the average batch)."""
    from connectors.historian.writer import HistorianTimeout

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nexus"
    cfg = HistorianConfig(url=url, retry_initial_s=0.05, retry_max_s=0.2, spool_max_bytes=16 * 1024)
    w = HistorianWriter(cfg, TAGS)
    sizes = {}
    try:
        for i in range(300):  # batches of 1 to 7 rows: an average says little about the dropped ones
            sizes[i + 1] = i % 7 + 1
            w.write(batch(i % 7 + 1, t0=T0 + i * 10**9))
        kept = {seq for seq, _rec in w.spool.read(0, max_records=10_000)}
        st = w.stats()
    finally:
        with pytest.raises(HistorianTimeout):
            w.close(timeout=0.5)
    dropped = set(sizes) - kept
    assert st["spool_dropped_records"] == len(dropped) > 0, st  # the case under test happened
    assert st["rows_dropped"] == sum(sizes[seq] for seq in dropped), st


def test_rows_the_database_commits_within_the_group_commit_are_not_fsynced(db: str) -> None:
    """The spool's group commit waits ``spool_sync_interval_s`` (1.5 s by default); a commit in that
    time acknowledges the rows and spares the fsync. Rows the database does not take are fsynced."""
    cfg = HistorianConfig(url=db, max_delay_s=0.05, spool_sync_interval_s=10.0)  # (slow CI: margin)
    with HistorianWriter(cfg, TAGS) as w:
        w.write(batch(4))
        w.flush(30)  # connected, the schema made (that may take longer than the group commit)
        synced = w.stats()["spool_fsyncs"]
        for k in range(1, 6):
            w.write(batch(4, t0=T0 + k * 10**9))
            w.flush(10)
        assert w.stats()["rows_written"] == 24
        assert w.stats()["spool_fsyncs"] == synced
    away = f"postgresql://postgres@127.0.0.1:{free_port()}/nexus"
    cfg = HistorianConfig(url=away, retry_initial_s=0.05, retry_max_s=0.2, spool_sync_interval_s=0.05)
    w = HistorianWriter(cfg, TAGS)
    try:
        w.write(batch(4))
        assert w.spool.wait_durable(w.spool.last_seq, timeout=10)
        assert w.stats()["spool_fsyncs"] >= 1
    finally:
        with pytest.raises(writer_module.HistorianTimeout):
            w.close(timeout=0.2)
