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
``--concurrent`` runs A and B at the same time against the same simulators and measures both over
the same seconds, so the neighbours' load of the moment falls on both sides alike (rounds measured
one after the other moved 10-30 %, and a full / UNS-only ratio once came out 0.88); each side's
``window`` gives its measuring window on the harness's monotonic clock. A round in which a side's UNS
publisher spooled messages (``uns_spooled``: the broker fell behind, the box is full; two full flows
at once at 500 devices do this) is flagged on stderr, and ``median_b_over_a_unspooled`` leaves such
rounds out.
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


class _Running:
    """A started cost flow process, polling (see :func:`start`)."""

    def __init__(self, proc: subprocess.Popen[bytes], folder: Path) -> None:
        self.proc, self.folder, self.ps = proc, folder, psutil.Process(proc.pid)
        self.stats = folder / "stats"

    def mark(self) -> dict[str, Any]:
        """The flow's counters, CPU clocks and threads now."""
        return {
            "stats": cli._flow_stats(self.stats), "cpu": _cpu(self.ps), "t": time.monotonic(),
            "threads": cost_threads.sample(self.proc.pid), "sys": self.ps.cpu_times().system,
        }  # fmt: skip

    def figures(self, m0: dict[str, Any], m1: dict[str, Any]) -> dict[str, Any]:
        """CPU per point and per poll between two marks (and the threads' cores)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the flow exited early; see {self.folder}")

        def d(key: str, sub: str | None = None) -> float:
            return cli._get(m1["stats"], key, sub) - cli._get(m0["stats"], key, sub)

        cpu, dt = m1["cpu"] - m0["cpu"], m1["t"] - m0["t"]
        out = _figures(cpu, d("points_read"), d("completed"), dt, d("report_time"))
        out["skipped_polls"] = int(d("skipped_polls"))
        # messages the UNS publisher put in its spool instead of sending (the broker fell behind: the
        # box is full, and the round's CPU includes a spool and its drain)
        out["uns_spooled"] = int(d("uns", "spooled"))
        out["system_share"] = round((m1["sys"] - m0["sys"]) / cpu, 3) if cpu > 0 else None  # the kernel part
        out["threads"] = cost_threads.rates(m0["threads"], m1["threads"], dt)
        out["window"] = [round(m0["t"], 3), round(m1["t"], 3)]  # this process's monotonic clock
        return out

    def stop(self) -> None:
        cli.stop_procs([self.proc])


def start(
    root: Path, load: Load, ports: list[int], mqtt_url: str, *, work: Path, env_extra: dict[str, str],
    flow: str = "uns", pg_url: str = "", historian_delay_s: float | None = None,
    historian_fields: dict[str, Any] | None = None,
) -> _Running:  # fmt: skip
    """One cost flow process (UNS-only unless ``flow``) started from checkout ``root``, once it polls."""
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
    running = _Running(proc, folder)
    try:
        deadline = time.monotonic() + 120
        while not cli._flow_stats(running.stats).get("polls"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the flow did not poll; see {folder}")
            time.sleep(0.2)
    except BaseException:
        running.stop()
        raise
    return running


def measure(runs: list[_Running], warmup: float, seconds: float) -> list[dict[str, Any]]:
    """The figures of ``runs`` (started flows) over one window of ``seconds`` after ``warmup``: the
    same seconds for all of them when there are several (``--concurrent``)."""
    time.sleep(warmup)
    m0 = [r.mark() for r in runs]
    time.sleep(seconds)
    m1 = [r.mark() for r in runs]
    return [r.figures(a, b) for r, a, b in zip(runs, m0, m1, strict=True)]


def run_uns(
    root: Path, load: Load, ports: list[int], mqtt_url: str, *, work: Path, env_extra: dict[str, str],
    warmup: float, seconds: float, flow: str = "uns", pg_url: str = "",
    historian_delay_s: float | None = None, historian_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One cost flow process (UNS-only unless ``flow``) started from checkout ``root``: its CPU over
    the window."""
    running = start(
        root, load, ports, mqtt_url, work=work, env_extra=env_extra, flow=flow, pg_url=pg_url,
        historian_delay_s=historian_delay_s, historian_fields=historian_fields,
    )  # fmt: skip
    try:
        return measure([running], warmup, seconds)[0]
    finally:
        running.stop()


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
    p.add_argument(
        "--concurrent",
        action="store_true",
        help="run A and B at the same time, polling the same simulators, measured over the same seconds",
    )
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
        "flow_b": flows["b"], "concurrent": args.concurrent, "loads": {},
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
                        pg_url = pg.url if pg is not None else ""
                        if args.concurrent:
                            runs: list[_Running] = []
                            try:
                                for side in order:
                                    root, env = sides[side]
                                    runs.append(start(
                                        root, load, ports, broker.url, work=Path(tmp), env_extra=env,
                                        flow=flows[side], pg_url=pg_url, historian_delay_s=args.historian_delay,
                                        historian_fields=fields[side],
                                    ))  # fmt: skip
                                row.update(zip(order, measure(runs, args.warmup, args.seconds), strict=True))
                            finally:
                                for running in runs:
                                    running.stop()
                        else:
                            for side in order:
                                root, env = sides[side]
                                row[side] = run_uns(
                                    root, load, ports, broker.url, work=Path(tmp), env_extra=env,
                                    warmup=args.warmup, seconds=args.seconds, flow=flows[side], pg_url=pg_url,
                                    historian_delay_s=args.historian_delay, historian_fields=fields[side],
                                )  # fmt: skip
                        a, b = row["a"]["cpu_s_per_10k_points"], row["b"]["cpu_s_per_10k_points"]
                        row["b_over_a"] = round(b / a, 3) if a and b else None
                        rounds.append(row)
                        spooled = {
                            side: row[side]["uns_spooled"] for side in "ab" if row[side]["uns_spooled"]
                        }
                        note = (
                            f" (UNS messages spooled: {spooled}: the broker fell behind)" if spooled else ""
                        )
                        print(
                            f"{devices} devices round {r + 1}: a {a} b {b} b/a {row['b_over_a']}{note}",
                            file=sys.stderr,
                        )
                finally:
                    cli._stop_sim(sim)
                ratios = [x["b_over_a"] for x in rounds if x["b_over_a"] is not None]
                clean = [
                    x["b_over_a"]
                    for x in rounds
                    if x["b_over_a"] is not None and not (x["a"]["uns_spooled"] or x["b"]["uns_spooled"])
                ]
                result["loads"][str(devices)] = {
                    "rounds": rounds,
                    "median_a": statistics.median(x["a"]["cpu_s_per_10k_points"] for x in rounds),
                    "median_b": statistics.median(x["b"]["cpu_s_per_10k_points"] for x in rounds),
                    "median_b_over_a": statistics.median(ratios) if ratios else None,
                    "median_b_over_a_unspooled": statistics.median(clean) if clean else None,
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
