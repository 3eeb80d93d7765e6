"""Client CPU of one historian commit: the one-statement ``INSERT ... unnest`` against the COPY
transaction (``connectors.historian.writer.INSERT_MAX_ROWS``), on embedded PostgreSQL.

    python -m bench.historian_commit --rows 1000,2000,4000,10000 --commits 100 --rounds 2

For each chunk size, rounds alternate the two paths (insert, copy / copy, insert); each writes
``--commits`` chunks of that many rows (one tag each, ``nexus_latest`` upserted with every chunk)
through a :class:`HistorianWriter`, one flush per chunk, and reports the writer thread's CPU per
commit (user + system, from ``/proc``) next to the PostgreSQL server's (the same box pays both).
Prints one JSON document; run it under the shared lock.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from connectors.historian import writer as writer_module
from connectors.historian.config import HistorianConfig
from connectors.historian.writer import HistorianWriter
from core.batch import PointBatch
from core.tags import TagInfo
from nexus.embedded import EmbeddedPostgres, free_port


def _thread_cpu(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return float(t.user_time + t.system_time)
    raise RuntimeError(f"thread {native_id} is gone")


def _server_cpu(pg: EmbeddedPostgres) -> float:
    """CPU of the PostgreSQL server: the postmaster and its children (the backends, the WAL writer)."""
    master = psutil.Process(int((pg.pgdata / "postmaster.pid").read_text().split()[0]))
    total = 0.0
    for proc in [master, *master.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_path(pg: EmbeddedPostgres, rows: int, commits: int, path: str, t0_ns: int) -> dict[str, Any]:
    """``commits`` commits of ``rows`` rows on ``path`` (``insert`` or ``copy``): writer CPU per commit."""
    tags = {i: TagInfo(i, "dev", f"t{i}", "u", f"a/b/c/d/dev/t{i}") for i in range(1, rows + 1)}
    saved = writer_module.INSERT_MAX_ROWS
    writer_module.INSERT_MAX_ROWS = rows if path == "insert" else 0
    ids = np.arange(1, rows + 1, dtype=np.int64)
    try:
        cfg = HistorianConfig(url=pg.url, batch_rows=rows * 2, max_delay_s=600, latest_interval_s=1e-3)
        with HistorianWriter(cfg, tags) as w:
            w.write(PointBatch.from_values("dev", ids, np.zeros(rows), ts_ns=t0_ns))
            w.flush(60)  # connected, schema and partition made: not measured
            native = w._thread.native_id
            assert native is not None
            cpu0, srv0, wall0 = _thread_cpu(native), _server_cpu(pg), time.monotonic()
            for k in range(1, commits + 1):
                w.write(PointBatch.from_values("dev", ids, np.random.rand(rows), ts_ns=t0_ns + k * 1000))
                w.flush(60)
            cpu, wall = _thread_cpu(native) - cpu0, time.monotonic() - wall0
            server = _server_cpu(pg) - srv0
            assert w.stats()["rows_written"] == rows * (commits + 1)
    finally:
        writer_module.INSERT_MAX_ROWS = saved
    return {
        "cpu_us_per_commit": round(cpu / commits * 1e6),
        "server_cpu_us_per_commit": round(server / commits * 1e6),
        "wall_ms_per_commit": round(wall / commits * 1e3, 2),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1000,10000", help="rows per commit (comma-separated)")
    p.add_argument("--commits", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    out: dict[str, Any] = {"load_avg": [round(x, 2) for x in os.getloadavg()], "rows": {}}
    t0_ns = time.time_ns() - 3600 * 10**9
    with tempfile.TemporaryDirectory(prefix="nexus-commit-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", port=free_port())
        pg.start()
        try:
            step = 0
            for rows in [int(x) for x in args.rows.split(",") if x]:
                rounds = []
                for r in range(args.rounds):
                    order = ("insert", "copy") if r % 2 == 0 else ("copy", "insert")
                    row = {}
                    for path in order:
                        step += 1  # each run its own microseconds: no run replays another's rows
                        row[path] = run_path(pg, rows, args.commits, path, t0_ns + step * 10**7)
                    row["insert_over_copy"] = round(
                        row["insert"]["cpu_us_per_commit"] / max(1, row["copy"]["cpu_us_per_commit"]), 3
                    )
                    rounds.append(row)
                out["rows"][str(rows)] = rounds
        finally:
            pg.stop()
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
