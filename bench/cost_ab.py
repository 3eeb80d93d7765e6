"""Interleaved A/B of a cost flow's CPU per point between two checkouts (or two settings).

The ``cost`` stage runs each flow once per device count, minutes apart; on this shared 2-core VM the
CPU time per unit of work moves by 20-40 % between such runs (the bare baselines with it), more
than most changes under test. This runs the UNS-only flow (``normalize -> mqtt_uns`` QoS 0, as the
``cost`` stage) of checkout A and checkout B against the same simulators and broker, alternating
A B / B A round after round, and reports each round's CPU-seconds per 10,000 points, the B / A
ratio per round and their median, the load average, and the worker / poll-loop threads' cores.

    python -m bench.cost_ab --a /tmp/main-checkout --b . --devices 10,100 --rounds 3

``--env-a`` / ``--env-b`` (``KEY=VALUE``, repeatable) set environment variables of one side only
(e.g. ``NEXUS_SOURCE_MAX_WAIT_MS=20`` to compare the nap on and off on one checkout). ``--flow full``
runs the ``cost`` stage's full flow instead (embedded PostgreSQL for its historian; both sides write
into the same database). ``--flow-a uns --flow-b full`` with one checkout on both sides measures the
full flow against the UNS-only one in the same minutes (B / A is then issue 16's "within 1.5x").
Prints one JSON document; run it under the shared measurement lock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench import cli, cost_threads
from bench.cost import FLOWS, REPORT_S, _cpu, _figures, cost_spec
from bench.load import Load
from nexus.embedded import EmbeddedPostgres, MosquittoBroker, free_port


def run_uns(
    root: Path, load: Load, ports: list[int], mqtt_url: str, *, work: Path, env_extra: dict[str, str],
    warmup: float, seconds: float, flow: str = "uns", pg_url: str = "",
    historian_delay_s: float | None = None, historian_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One cost flow process (UNS-only unless ``flow``) started from checkout ``root``: its CPU over
    the window."""
    folder = Path(tempfile.mkdtemp(prefix="ab-", dir=work))
    (folder / "stats").mkdir()
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(cost_spec(load, ports, flow, historian_delay_s, historian_fields)))
    env = {
        **os.environ,
        "NEXUS_SPEC": str(spec_path),
        "NEXUS_DATABASE_URL": pg_url,
        "NEXUS_MQTT_URL": mqtt_url,
        "NEXUS_DATA_DIR": str(folder / "data"),
        "NEXUS_BENCH_STATS": str(folder / "stats"),
        "NEXUS_BENCH_REPORT_S": REPORT_S,
        "NEXUS_BENCH_MALLOC": "0",  # harness: the heap census walks every arena (see bench.flow)
        "NEXUS_LOG_LEVEL": "WARNING",
        **env_extra,
    }
    log = (folder / "flow.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "bench.flow:flow"], env=env, cwd=root, stdout=log, stderr=log
    )
    log.close()
    ps = psutil.Process(proc.pid)
    stats = folder / "stats"
    try:
        deadline = time.monotonic() + 120
        while not cli._flow_stats(stats).get("polls"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the flow did not poll; see {folder}")
            time.sleep(0.2)
        time.sleep(warmup)
        s0, c0, t0, th0 = cli._flow_stats(stats), _cpu(ps), time.monotonic(), cost_threads.sample(proc.pid)
        sys0 = ps.cpu_times().system
        time.sleep(seconds)
        s1, c1, t1 = cli._flow_stats(stats), _cpu(ps), time.monotonic()
        sys1 = ps.cpu_times().system
        threads = cost_threads.rates(th0, cost_threads.sample(proc.pid), t1 - t0)
        if proc.poll() is not None:
            raise RuntimeError(f"the flow exited early; see {folder}")
    finally:
        cli.stop_procs([proc])

    def d(key: str) -> float:
        return cli._get(s1, key) - cli._get(s0, key)

    out = _figures(c1 - c0, d("points_read"), d("completed"), t1 - t0, d("report_time"))
    out["skipped_polls"] = int(d("skipped_polls"))
    out["system_share"] = round((sys1 - sys0) / (c1 - c0), 3) if c1 > c0 else None  # the kernel part
    out["threads"] = threads
    return out


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env-a/--env-b take KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _fields(pairs: list[str]) -> dict[str, float]:
    out = {}
    for key, value in _env(pairs).items():
        try:
            out[key] = float(value)
        except ValueError:
            raise SystemExit(f"--historian-a/--historian-b take FIELD=NUMBER, got {key}={value!r}") from None
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="checkout A (the baseline)")
    p.add_argument("--b", required=True, help="checkout B")
    p.add_argument("--env-a", action="append", default=[], help="KEY=VALUE for A's flow")
    p.add_argument("--env-b", action="append", default=[], help="KEY=VALUE for B's flow")
    p.add_argument("--devices", default="10,100", help="device counts (x --tags at 1 s)")
    p.add_argument("--tags", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--flow", choices=FLOWS, default="uns", help="the cost stage's flow to run")
    p.add_argument("--flow-a", choices=FLOWS, default=None, help="A's flow (default: --flow)")
    p.add_argument("--flow-b", choices=FLOWS, default=None, help="B's flow (default: --flow)")
    p.add_argument("--historian-delay", type=float, default=None, help="full flow: historian max_delay_s")
    p.add_argument(
        "--historian-a", action="append", default=[], help="FIELD=NUMBER of A's historian node (repeatable)"
    )
    p.add_argument("--historian-b", action="append", default=[], help="FIELD=NUMBER of B's historian node")
    args = p.parse_args(argv)
    flows = {"a": args.flow_a or args.flow, "b": args.flow_b or args.flow}
    sides = {
        "a": (Path(args.a).resolve(), _env(args.env_a)),
        "b": (Path(args.b).resolve(), _env(args.env_b)),
    }
    fields = {"a": _fields(args.historian_a), "b": _fields(args.historian_b)}
    result: dict[str, Any] = {
        "a": args.a, "b": args.b, "env_a": args.env_a, "env_b": args.env_b,
        "historian_a": fields["a"], "historian_b": fields["b"], "flow_a": flows["a"],
        "flow_b": flows["b"], "loads": {},
    }  # fmt: skip
    broker = MosquittoBroker(free_port())
    broker.start()
    pg = None
    try:
        with tempfile.TemporaryDirectory(prefix="nexus-ab-") as tmp:
            if set(flows.values()) - {"uns"}:  # a historian or the aggregates' store
                pg = EmbeddedPostgres(Path(tmp) / "pg", port=free_port())
                pg.start()
            for devices in [int(x) for x in args.devices.split(",") if x]:
                load = Load(devices=devices, tags=args.tags, poll_interval_s=1.0, qos=0)
                sim, ports = cli.start_sim(load)
                rounds = []
                try:
                    for r in range(args.rounds):
                        order = "ab" if r % 2 == 0 else "ba"
                        row: dict[str, Any] = {"load_avg": [round(x, 2) for x in os.getloadavg()]}
                        for side in order:
                            root, env = sides[side]
                            row[side] = run_uns(
                                root, load, ports, broker.url, work=Path(tmp), env_extra=env,
                                warmup=args.warmup, seconds=args.seconds, flow=flows[side],
                                pg_url=pg.url if pg is not None else "",
                                historian_delay_s=args.historian_delay, historian_fields=fields[side],
                            )  # fmt: skip
                        a, b = row["a"]["cpu_s_per_10k_points"], row["b"]["cpu_s_per_10k_points"]
                        row["b_over_a"] = round(b / a, 3) if a and b else None
                        rounds.append(row)
                        print(
                            f"{devices} devices round {r + 1}: a {a} b {b} b/a {row['b_over_a']}",
                            file=sys.stderr,
                        )
                finally:
                    cli._stop_sim(sim)
                ratios = [x["b_over_a"] for x in rounds if x["b_over_a"] is not None]
                result["loads"][str(devices)] = {
                    "rounds": rounds,
                    "median_a": statistics.median(x["a"]["cpu_s_per_10k_points"] for x in rounds),
                    "median_b": statistics.median(x["b"]["cpu_s_per_10k_points"] for x in rounds),
                    "median_b_over_a": statistics.median(ratios) if ratios else None,
                }
            if pg is not None:
                pg.stop()  # before its folder goes
                pg = None
    finally:
        if pg is not None:
            pg.stop()
        broker.stop()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
