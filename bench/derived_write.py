"""The window aggregates' database write, checkout A against checkout B (issue 16, the full flow).

A closing window writes one aggregate row per tag (``DerivedWriter.write_aggs``): 10,000 rows a
minute at 100 devices x 100 tags. This writes N rows (one ``AggBatch`` of 100 tags per device, as
the flow emits them) with the ``DerivedWriter`` of each checkout in a child process started from
that checkout, against one embedded PostgreSQL, rounds interleaved A B / B A, each child on a fresh
database (``--call-rows``: that many rows per ``write_aggs`` call, a transaction each, as when
the window closes reach the sink device by device). Per child: a warm-up write (connection, schema), then a timed write of new buckets
(inserts) and a timed write of the same rows again (the upsert of a replay). Reported per 10,000
rows: CPU-seconds of the writing process, of its server backend (``/proc``), and wall seconds; the
B / A ratios per round and their median; the load average.

    python -m bench.derived_write --a /work/main --b . --rows 10000,50000 --rounds 3

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
import json, os, sys, time
import numpy as np
import connectors.historian.derived as derived
from core.records import AggBatch

url, rows, call_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tags, t0 = 100, 1_700_000_040 * 10**9

def batches(bucket_ns, n):
    rng = np.random.default_rng(0)
    out = []
    for d in range(n // tags):
        ids = np.arange(d * tags, (d + 1) * tags, dtype=np.int64)
        count = np.full(tags, 60, dtype=np.int64)
        v = rng.normal(size=(6, tags))
        out.append(AggBatch(f"dev-{d}", "1m", 60 * 10**9, np.full(tags, bucket_ns, dtype=np.int64), ids,
                            count, v[0] * 60, v[1], v[2], v[3], v[4], v[5]))
    return out

def server_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

writer = derived.DerivedWriter(url, ["1m"])
writer.write_aggs(batches(t0 - 60 * 10**9, tags))  # connect, create the tables
pid = writer._conn.info.backend_pid
out = {"module": derived.__file__}
work = batches(t0, rows)
for phase in ("insert", "upsert"):
    c0, s0, w0 = time.process_time(), server_cpu(pid), time.perf_counter()
    for i in range(0, len(work), call_rows // tags):
        writer.write_aggs(work[i : i + call_rows // tags])
    c1, s1, w1 = time.process_time(), server_cpu(pid), time.perf_counter()
    out[phase] = {"client_cpu_s": c1 - c0, "server_cpu_s": s1 - s0, "wall_s": w1 - w0}
writer.close()
print(json.dumps(out))
"""


def run_writer(root: Path, pg: EmbeddedPostgres, rows: int, call_rows: int) -> dict[str, Any]:
    """One child process from checkout ``root`` writing ``rows`` rows, ``call_rows`` per call, to a
    fresh database."""
    result = run_child(root, pg, CHILD, [str(rows), str(call_rows or rows)], what="writer")
    per10k = 10_000 / rows
    return {
        phase: {key: round(value * per10k, 4) for key, value in result[phase].items()}
        for phase in ("insert", "upsert")
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B")
    parser.add_argument("--rows", default="10000,50000", help="rows per write, comma-separated (x100)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--call-rows", type=int, default=0, help="rows per write_aggs call (x100; default: all in one call)"
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",")]
    if any(n <= 0 or n % 100 for n in sizes):
        parser.error(f"--rows must be positive multiples of 100, got {args.rows!r}")
    if args.call_rows < 0 or args.call_rows % 100:
        parser.error(f"--call-rows must be a positive multiple of 100, got {args.call_rows}")
    roots = {"a": args.a.resolve(), "b": args.b.resolve()}
    report: dict[str, Any] = {
        "a": str(roots["a"]),
        "b": str(roots["b"]),
        "call_rows": args.call_rows or "all",
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="derived-write-") as work:
        pg = EmbeddedPostgres(Path(work) / "pg", port=free_port())
        pg.start()
        try:
            for rows in sizes:
                runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
                for r in range(args.rounds):
                    for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                        runs[side].append(run_writer(roots[side], pg, rows, args.call_rows))
                report[f"rows_{rows}"] = {**runs, "b_over_a": _ratios(runs)}
        finally:
            pg.stop()
    report["load_after"] = os.getloadavg()
    return report


def _ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """B / A per round and the median, per phase and figure."""
    out: dict[str, Any] = {}
    for phase in ("insert", "upsert"):
        for key in ("client_cpu_s", "server_cpu_s", "wall_s"):
            per_round = [
                round(b[phase][key] / a[phase][key], 3) if a[phase][key] > 0 else None
                for a, b in zip(runs["a"], runs["b"], strict=True)
            ]
            known = [x for x in per_round if x is not None]
            out[f"{phase}_{key}"] = {
                "rounds": per_round,
                "median": statistics.median(known) if known else None,
            }
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
