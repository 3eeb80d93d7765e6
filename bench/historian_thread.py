"""The historian writer's threads in process, checkout A against checkout B (issue 16, the full flow).

A child process started from each checkout runs a ``HistorianWriter`` on one embedded PostgreSQL
(each child its own database) and feeds it as a live worker does: ``--devices`` x 100 tags polled
every second, handed over in ``--handovers`` ``write_many`` calls a second (a 100-device flow's
worker hands over ~5 times a second). After a warm-up (connection, schema, partitions, the
compiled kernels) it measures for ``--seconds`` the CPU of the writer thread and of its spool's
flusher (``/proc/self/task/<tid>/schedstat``, nanoseconds) and counts commits and fsyncs. Rounds
alternate A B / B A; the report gives each side's figures, the B / A ratio of the writer thread
per round and the median, and the load average.

    python -m bench.historian_thread --a /tmp/main-checkout --b . --devices 100 --rounds 3 --seconds 30

Prints one JSON document; run it under the shared measurement lock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.children import run_child
from nexus.embedded import EmbeddedPostgres, free_port

CHILD = r"""
import json, sys, tempfile, threading, time
import numpy as np
import connectors.historian.writer as writer_module
from connectors.historian.config import HistorianConfig
from connectors.historian.writer import HistorianWriter
from core.batch import PointBatch
from core.tags import TagInfo

url, devices, handovers, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ids = {d: np.arange(d * 1000 + 1, d * 1000 + 101, dtype=np.int64) for d in range(devices)}
tags = {int(t): TagInfo(int(t), f"d{d}", f"t{t}", "u", f"a/b/c/d/d{d}/t{t}") for d in ids for t in ids[d]}
groups = [list(range(devices))[g::handovers] for g in range(handovers)]
groups = [g for g in groups if g]
rng = np.random.default_rng(1)

def cpu(tid):
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9

def feed(w, until):
    while time.monotonic() < until:
        for g in groups:
            now = time.time_ns()
            w.write_many([PointBatch.from_values(f"d{d}", ids[d], rng.random(100), ts_ns=now) for d in g])
            time.sleep(1 / len(groups))

with tempfile.TemporaryDirectory() as spool:
    with HistorianWriter(HistorianConfig(url=url, spool_dir=spool), tags, name="h") as w:
        feed(w, time.monotonic() + 3)  # connection, schema, partitions, kernels: not measured
        w.flush(60)
        threads = {t.name: t.native_id for t in threading.enumerate()}
        writer_tid, flusher_tid = threads["h-writer"], threads["spool-h"]
        s0, c0, t0 = w.stats(), (cpu(writer_tid), cpu(flusher_tid)), time.monotonic()
        feed(w, t0 + seconds)
        s1, c1, dt = w.stats(), (cpu(writer_tid), cpu(flusher_tid)), time.monotonic() - t0
        w.flush(60)
print(json.dumps({
    "module": writer_module.__file__,
    "writer_cores": (c1[0] - c0[0]) / dt,
    "flusher_cores": (c1[1] - c0[1]) / dt,
    "commits_per_s": (s1["batches_written"] - s0["batches_written"]) / dt,
    "fsyncs_per_s": (s1["spool_fsyncs"] - s0["spool_fsyncs"]) / dt,
    "rows_per_s": (s1["rows_accepted"] - s0["rows_accepted"]) / dt,
}))
"""


def run_writer(
    root: Path, pg: EmbeddedPostgres, devices: int, handovers: int, seconds: float
) -> dict[str, Any]:
    """One child process from checkout ``root`` on a fresh database: its writer's figures."""
    args = [str(devices), str(handovers), str(seconds)]
    result = run_child(root, pg, CHILD, args, what="historian writer", timeout=600 + seconds)
    return {key: round(value, 5 if key.endswith("cores") else 2) for key, value in result.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B")
    parser.add_argument(
        "--devices", type=int, default=100, help="devices x 100 tags, each polled once a second"
    )
    parser.add_argument("--handovers", type=int, default=7, help="write_many calls a second")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    args = parser.parse_args(argv)
    if args.devices <= 0 or args.handovers <= 0 or args.rounds <= 0 or args.seconds <= 0:
        parser.error("--devices, --handovers, --rounds and --seconds must be positive")
    roots = {"a": args.a.resolve(), "b": args.b.resolve()}
    report: dict[str, Any] = {
        "a": str(roots["a"]),
        "b": str(roots["b"]),
        "devices": args.devices,
        "handovers": args.handovers,
        "seconds": args.seconds,
        "load_before": os.getloadavg(),
    }
    runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="historian-thread-") as work:
        pg = EmbeddedPostgres(Path(work) / "pg", port=free_port())
        pg.start()
        try:
            for r in range(args.rounds):
                for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                    runs[side].append(run_writer(roots[side], pg, args.devices, args.handovers, args.seconds))
        finally:
            pg.stop()
    ratios = [
        round(b["writer_cores"] / a["writer_cores"], 3) if a["writer_cores"] > 0 else None
        for a, b in zip(runs["a"], runs["b"], strict=True)
    ]
    known = [x for x in ratios if x is not None]
    report.update(runs)
    report["writer_b_over_a"] = {"rounds": ratios, "median": statistics.median(known) if known else None}
    report["load_after"] = os.getloadavg()
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
