"""``python -m bench.spool``: the disk spool's candidates measured on this machine.

Appends point batches (``--points`` per batch, like one device poll) as fast as they go for
``--seconds``, with group commit (an fsync at most every ``--sync-ms``), into (a) the project's
segment-file spool (:mod:`connectors.spool`) and (b) SQLite in WAL mode (one blob row per batch,
one transaction per commit interval, ``synchronous=NORMAL`` plus a checkpoint-free fsync of the WAL at
each commit); then reads everything back and acknowledges it. Prints points/s per candidate and the
ratio; the spool must take at least 200,000 points/s.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from connectors.spool import Spool, decode_batch, encode_batch
from core.batch import PointBatch


def _batches(points: int, count: int = 64) -> list[PointBatch]:
    rng = np.random.default_rng(1)
    ids = np.arange(1, points + 1, dtype=np.int64)
    return [
        PointBatch.from_values("dev-0001", ids, rng.normal(size=points), ts_ns=1_700_000_000_000_000_000 + i)
        for i in range(count)
    ]


def segments(folder: Path, batches: list[PointBatch], seconds: float, sync_s: float) -> dict[str, float]:
    spool = Spool(folder / "seg", name="bench", sync_interval_s=sync_s, max_bytes=8 << 30)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in batches:
            spool.append(encode_batch(b))
        n += len(batches)
    spool.sync()
    write_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    read = 0
    while True:
        recs = spool.read(max_records=2000)
        if not recs:
            break
        for _seq, rec in recs:
            read += len(decode_batch(rec))
        spool.ack(recs[-1][0])
    read_s = time.perf_counter() - t1
    spool.close()
    pts = n * len(batches[0])
    return {"points": pts, "write_pts_per_s": pts / write_s, "read_pts_per_s": read / read_s}


def sqlite_wal(folder: Path, batches: list[PointBatch], seconds: float, sync_s: float) -> dict[str, float]:
    db = sqlite3.connect(folder / "spool.db", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # fsync at each commit: the group commit is the transaction
    db.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY, t INTEGER, body BLOB)")
    n = 0
    t0 = time.perf_counter()
    last_commit = t0
    db.execute("BEGIN")
    while time.perf_counter() - t0 < seconds:
        rows = [(time.time_ns(), encode_batch(b)) for b in batches]
        db.executemany("INSERT INTO spool (t, body) VALUES (?, ?)", rows)
        n += len(batches)
        if time.perf_counter() - last_commit >= sync_s:
            db.execute("COMMIT")
            db.execute("BEGIN")
            last_commit = time.perf_counter()
    db.execute("COMMIT")
    write_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    read = 0
    after = 0
    while True:
        recs = db.execute(
            "SELECT seq, body FROM spool WHERE seq > ? ORDER BY seq LIMIT 2000", (after,)
        ).fetchall()
        if not recs:
            break
        for _seq, body in recs:
            read += len(decode_batch(body))
        after = recs[-1][0]
        db.execute("DELETE FROM spool WHERE seq <= ?", (after,))
    read_s = time.perf_counter() - t1
    db.close()
    pts = n * len(batches[0])
    return {"points": pts, "write_pts_per_s": pts / write_s, "read_pts_per_s": read / read_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spool", description=__doc__)
    p.add_argument("--points", type=int, default=100, help="points per batch (one device poll)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--sync-ms", type=float, default=100.0)
    p.add_argument("--dir", default=None, help="folder on the volume to measure (default: a temp folder)")
    args = p.parse_args(argv)
    batches = _batches(args.points)
    out: dict[str, Any] = {"points_per_batch": args.points, "sync_ms": args.sync_ms}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        out["segments"] = segments(Path(d), batches, args.seconds, args.sync_ms / 1000)
        out["sqlite_wal"] = sqlite_wal(Path(d), batches, args.seconds, args.sync_ms / 1000)
    seg, sql = out["segments"], out["sqlite_wal"]
    print(f"{'candidate':<12} {'append pts/s':>14} {'read+ack pts/s':>15}")
    for name in ("segments", "sqlite_wal"):
        r = out[name]
        print(f"{name:<12} {r['write_pts_per_s']:>14,.0f} {r['read_pts_per_s']:>15,.0f}")
    print(
        f"segments / sqlite: append {seg['write_pts_per_s'] / sql['write_pts_per_s']:.1f}x, "
        f"read {seg['read_pts_per_s'] / sql['read_pts_per_s']:.1f}x"
    )
    print(json.dumps(out), file=sys.stderr)
    return 0 if seg["write_pts_per_s"] >= 200_000 else 1


if __name__ == "__main__":
    raise SystemExit(main())
