"""``python -m bench``: run the stages, print the table, write ``bench-results/<timestamp>.json``.

Stages: ``micro`` (operator chain from memory), ``sinks`` (bare COPY vs the historian writer, bare paho
vs the UNS publisher), ``sparkplug`` (DDATA metrics/s of the Sparkplug edge node vs the UNS publisher's
messages/s on the same batches), ``modbus`` (bare pymodbus read loop), ``e2e`` (the dataflow as ``python -m
bytewax.run`` polling the simulators into the broker and the historian), ``cluster`` (the chain as a
1- and a 2-process Bytewax cluster), ``query`` (historian reads through the API vs bare SQL on a
50-million-row ``nexus_points``; see ``bench/query.py``). Not run by default (``just bench-full`` runs them): ``ramp``
(device counts stepped up at a 100 ms poll interval until polls are skipped) and ``memory`` (the RSS
of a flow configured with 100,000 tags).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import psycopg
import yaml

from bench import baselines as bl
from bench.chain import Chain, ChainResult
from bench.load import Load
from bench.monitor import Monitor
from dataflows.spec import parse_spec
from nexus.embedded import EmbeddedBroker, EmbeddedPostgres, MosquittoBroker, free_port

STAGES = ("micro", "sinks", "sparkplug", "modbus", "e2e", "cost", "ramp", "memory", "cluster", "query")
DEFAULT_STAGES = ("micro", "sinks", "sparkplug", "modbus", "e2e", "cost", "cluster", "query")
"""``ramp`` and ``memory`` take minutes of their own: ``just bench-full`` adds them."""
RAMP_SKIP_LIMIT = 0.001
"""A ramp step holds while at most this fraction of its poll slots is skipped (and of its polls fails)."""
ROOT = Path(__file__).resolve().parent.parent


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(msg: str) -> None:
    print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--tags", type=int, default=100)
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, s")
    p.add_argument("--change-rate", type=float, default=0.5)
    p.add_argument("--deadband", action="store_true", help="deadband on every tag (default: off)")
    p.add_argument("--qos", type=int, default=0, choices=(0, 1))
    p.add_argument("--processes", type=int, default=1, help="Bytewax processes of the e2e flow")
    p.add_argument(
        "--workers", type=int, default=1,
        help="Bytewax workers per e2e process (-w): 2 workers in 1 process against 2 processes",
    )  # fmt: skip
    p.add_argument("--duration", type=float, default=30.0, help="e2e measuring window, s")
    p.add_argument("--warmup", type=float, default=10.0, help="e2e warm-up before measuring, s")
    p.add_argument("--baseline-rows", type=int, default=300_000)
    p.add_argument("--baseline-messages", type=int, default=100_000)
    p.add_argument("--micro-points", type=int, default=1_000_000)
    p.add_argument(
        "--cluster-points", type=int, default=4_000_000,
        help="points per cluster run (a run under ~2 s per process measures the cluster's start, not its rate)",
    )  # fmt: skip
    p.add_argument(
        "--cluster-repeats", type=int, default=1,
        help="rounds of the cluster stage's variants (interleaved); the median of each variant is reported",
    )  # fmt: skip
    p.add_argument("--ramp-interval", type=float, default=0.1, help="ramp: poll interval, s")
    p.add_argument(
        "--ramp-devices",
        default="25,50,75,100,150,200,300,400,500",
        help="ramp: device counts to step through",
    )
    p.add_argument("--ramp-warmup", type=float, default=8.0, help="ramp: warm-up of each step, s")
    p.add_argument("--ramp-seconds", type=float, default=15.0, help="ramp: measuring window of each step, s")
    p.add_argument("--ramp-budget", type=float, default=300.0, help="ramp: no new step after this many s")
    p.add_argument(
        "--ramp-processes", default="1",
        help="ramp: Bytewax process counts to ramp with, one after the other (e.g. 1,2)",
    )  # fmt: skip
    p.add_argument(
        "--ramp-flow",
        choices=("e2e", "source"),
        default="e2e",
        help="ramp: the e2e flow (historian + UNS sinks) or the device source into a counting sink",
    )
    p.add_argument(
        "--cost-devices", default="10,100,500", help="cost: device counts (x --tags at --interval)"
    )
    p.add_argument("--cost-warmup", type=float, default=10.0, help="cost: warm-up of each run, s")
    p.add_argument("--cost-seconds", type=float, default=30.0, help="cost: measuring window of each run, s")
    p.add_argument(
        "--cost-historian-delay",
        type=float,
        default=None,
        help="cost: the full flow's historian max_delay_s (default: the historian's own, 1 s)",
    )
    p.add_argument(
        "--cost-profile",
        default=None,
        help="cost: folder for py-spy profiles of each flow run (collapsed stacks; needs py-spy)",
    )
    p.add_argument("--memory-devices", type=int, default=1000, help="memory: devices (x --tags tags)")
    p.add_argument("--memory-interval", type=float, default=5.0, help="memory: poll interval, s")
    p.add_argument("--memory-seconds", type=float, default=60.0, help="memory: running time after startup, s")
    p.add_argument("--query-rows", type=int, default=50_000_000, help="query: rows in nexus_points")
    p.add_argument("--query-tags", type=int, default=10_000, help="query: tags")
    p.add_argument("--query-interval", type=float, default=5.0, help="query: seconds between a tag's points")
    p.add_argument(
        "--query-samples", type=int, default=200, help="query: samples of (a); (b) a quarter, (c) half"
    )
    p.add_argument(
        "--stages",
        default=",".join(DEFAULT_STAGES),
        help=f"comma list of {', '.join(STAGES)} (default: {','.join(DEFAULT_STAGES)})",
    )
    p.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto")
    p.add_argument("--out", default="bench-results")
    a = p.parse_args(argv)
    bad = set(a.stages.split(",")) - set(STAGES)
    if bad:
        p.error(f"unknown stages {sorted(bad)}; choose from {', '.join(STAGES)}")
    return a


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ------------------------------------------------------------------------------------------ stages


def stage_micro(load: Load, points: int) -> dict[str, Any]:
    """The operator chain on 100-tag device batches: cores directly, and as a Bytewax flow (run_main)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    from bench.chain import CountingSink
    from dataflows.warm import warm_kernels

    warm_kernels()  # compiling on a fresh checkout is not the chain's speed
    devices = max(1, min(load.devices, 200))
    mload = Load(devices=devices, tags=load.tags, change_rate=load.change_rate)
    polls = max(2, points // (devices * load.tags))
    ts0 = time.time_ns() - polls * 10**9
    batches = mload.batches(polls, ts0)
    out: dict[str, Any] = {"devices": devices, "tags": load.tags, "polls": polls}
    chain = Chain.for_load(mload)
    chain.run_cores(batches[: devices * 2])  # warm the per-device alignment caches
    chain = Chain.for_load(mload)
    r: ChainResult = chain.run_cores(batches)
    out["cores"] = {**r.__dict__, "points_per_s": round(r.points_per_s)}
    # the same-run baseline: the four cores one by one on the same batches (each core with its own
    # compiled fast path), so runs on a faster or a slower box compare as ratios
    chain = Chain.for_load(mload)
    chain.fused = False
    chain.run_cores(batches[: devices * 2])
    chain = Chain.for_load(mload)
    chain.fused = False
    ru: ChainResult = chain.run_cores(batches)
    out["cores_one_by_one"] = {**ru.__dict__, "points_per_s": round(ru.points_per_s)}
    # the same chain once every device has state (its first two polls done): what a running
    # process sustains; the difference to "cores" is the one-time cost of new devices' state
    chain = Chain.for_load(mload)
    chain.run_cores(batches[: devices * 2])
    rw: ChainResult = chain.run_cores(batches[devices * 2 :])
    out["cores_warm"] = {**rw.__dict__, "points_per_s": round(rw.points_per_s)}
    # the same points coalesced into one batch per poll of all devices (one "device" per worker)
    import numpy as np

    from core.batch import PointBatch

    merged = []
    for k in range(polls):
        part = batches[k * devices : (k + 1) * devices]
        merged.append(
            PointBatch(
                "shard-0",
                np.concatenate([b.ts_ns for b in part]),
                np.concatenate([b.tag_ids for b in part]),
                np.concatenate([b.values for b in part]),
                np.concatenate([b.quality for b in part]),
            )
        )
    chain = Chain.for_load(mload)
    chain.run_cores(merged[:1])
    r2 = chain.run_cores(merged[1:])
    out["cores_coalesced"] = {**r2.__dict__, "points_per_s": round(r2.points_per_s)}
    chain = Chain.for_load(mload)
    flow = Dataflow("bench_micro")
    sink = CountingSink()
    chain.build_flow(flow, op.input("devices", flow, TestingSource(batches, batch_size=100)), sink)
    t0 = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - t0
    n = sum(len(b) for b in batches)
    out["bytewax"] = {
        **sink.counts,
        "points_in": n,
        "seconds": round(seconds, 3),
        "points_per_s": round(n / seconds),
    }
    return out


def stage_sinks(pg_url: str, mqtt_url: str, load: Load, rows: int, messages: int) -> dict[str, Any]:
    tags = parse_spec(load.spec({"modbus": [1] * load.ports_needed})).tag_infos()
    per_poll = load.devices * load.tags
    now = time.time_ns()
    batches = load.batches(max(1, rows // per_poll), now - 6 * 3600 * 10**9)
    # a day apart, so each starts on an empty daily partition (an empty primary key index); the writer
    # used to follow the baseline into its partition, where a second bare COPY measured ~15 % slower
    b_copy, b_writer = batches, bl.shifted(batches, 24 * 3600 * 10**9)
    bl.prepare_historian(pg_url, tags, b_copy + b_writer)
    out: dict[str, Any] = {}
    _say(f"  bare COPY of {sum(len(b) for b in b_copy):,} rows ...")
    out["copy_baseline"] = bl.copy_baseline(pg_url, b_copy)
    _say("  the same rows through HistorianWriter (then replayed) ...")
    out["historian_writer"] = bl.writer_capacity(pg_url, tags, b_writer)
    mb = batches[: max(1, messages // load.tags)]
    msgs = bl.messages_for(mb, tags)
    for qos in (0, 1):
        _say(f"  bare paho loop, {len(msgs):,} messages, QoS {qos} ...")
        out[f"paho_baseline_qos{qos}"] = bl.paho_baseline(mqtt_url, msgs, qos, 1000)
        _say(f"  UnsPublisher, the same messages, QoS {qos} ...")
        out[f"uns_publisher_qos{qos}"] = bl.publisher_capacity(mqtt_url, tags, mb, qos)
    return out


def stage_sparkplug(mqtt_url: str, load: Load, messages: int) -> dict[str, Any]:
    """DDATA metrics/s of the Sparkplug edge node against the UNS publisher, same batches, same broker.

    Both at QoS 0 (Sparkplug data is always QoS 0) and both without report by exception, so each
    point of each batch is one UNS message or one DDATA metric; done when paho wrote the last one."""
    doc = load.spec({"modbus": [1] * load.ports_needed})
    doc["sinks"] = [
        {
            "id": "spb",
            "type": "sparkplug_b",
            "group_id": "bench",
            "edge_node_id": "bench-edge",
            "report_by_exception": False,
        }
    ]
    spec = parse_spec(doc)
    tags = spec.tag_infos()
    batches = load.batches(max(1, messages // (load.devices * load.tags)) + 1, time.time_ns())
    out: dict[str, Any] = {}
    _say(f"  UnsPublisher, {sum(len(b) for b in batches[load.devices :]):,} points, QoS 0 ...")
    out["uns_publisher_qos0"] = bl.publisher_capacity(mqtt_url, tags, batches[load.devices :], 0)
    _say("  Sparkplug edge node, the same points as DDATA metrics ...")
    out["sparkplug_ddata"] = bl.sparkplug_capacity(
        mqtt_url, spec, batches[: load.devices], batches[load.devices :]
    )
    return out


def _wait_json(path: Path, key: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text())
            if data.get(key):
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not report {key!r} within {timeout:g} s")


def _flow_stats(folder: Path) -> dict[str, Any]:
    """The flow processes' reports summed; ``report_time``: the newest report's Unix time."""
    total: dict[str, Any] = {}
    for f in folder.glob("flow-*.json"):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        total["report_time"] = max(total.get("report_time", 0.0), float(data.get("time", 0.0)))
        for k, v in data.items():
            if k in ("pid", "time", "final"):
                continue
            if isinstance(v, dict):
                d = total.setdefault(k, {})
                for kk, vv in v.items():
                    if isinstance(vv, int | float):
                        d[kk] = d.get(kk, 0) + vv
            elif isinstance(v, int | float):
                total[k] = total.get(k, 0) + v
    return total


def _gc_window(folder: Path, t0: float, t1: float) -> dict[str, Any]:
    """Each flow process's collector pauses of 10 ms or more (or 5 ms of CPU) between Unix times ``t0``
    and ``t1`` (``bench.flow``'s ``gc_pauses``: ``[time, generation, wall ms, collected, cpu ms]``),
    the longest of them, and the object census when the flow took one (``NEXUS_BENCH_GC_CENSUS``)."""
    pauses: list[list[float]] = []
    census: list[dict[str, Any]] = []
    for f in folder.glob("flow-*.json"):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        pauses += [p for p in data.get("gc_pauses", []) if t0 <= p[0] <= t1]
        if data.get("gc_census"):
            census.append(data["gc_census"])
    full = [p for p in pauses if p[1] == 2]
    out: dict[str, Any] = {
        "max_pause_ms": max((p[2] for p in pauses), default=0.0),
        "max_pause_cpu_ms": max((p[4] for p in pauses if len(p) > 4), default=0.0),
        "full_collections_over_10ms": len(full),
        "full_max_ms": max((p[2] for p in full), default=0.0),
        "full_max_cpu_ms": max((p[4] for p in full if len(p) > 4), default=0.0),
        "pauses_over_10ms": sorted(pauses),
    }
    if census:
        out["census"] = census
    return out


def _bytewax_cmd(module: str, processes: int, index: int, addresses: str, workers: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "bytewax.run", module]
    if processes > 1:
        cmd += ["-i", str(index), "-a", addresses]
    if workers > 1:
        cmd += ["-w", str(workers)]
    return cmd


def start_flow(
    module: str, env: dict[str, str], processes: int, workdir: Path, workers: int = 1
) -> list[subprocess.Popen[bytes]]:
    """``processes`` Bytewax processes of ``module`` (a cluster when > 1), ``workers`` threads each."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = []
    for i in range(processes):
        log = (workdir / f"{module.replace(':', '_')}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                _bytewax_cmd(module, processes, i, addresses, workers),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,
            )
        )
        log.close()
    return procs


def stop_procs(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def historian_latency(pg_url: str, t0: float, t1: float) -> dict[str, Any]:
    """p50/p99 of commit time - source time over the rows stamped in [t0, t1] (commit timestamps)."""
    sql = (
        "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY "
        "extract(epoch FROM pg_xact_commit_timestamp(xmin) - time)) "
        "FROM nexus_points WHERE time >= to_timestamp(%s) AND time < to_timestamp(%s)"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(sql, (t0, t1)).fetchone()
    if not row or not row[0] or row[1] is None:
        return {"rows": 0}
    return {"rows": row[0], "p50_ms": round(row[1][0] * 1000, 1), "p99_ms": round(row[1][1] * 1000, 1)}


def _get(stats: dict[str, Any], key: str, sub: str | None = None) -> float:
    value = (stats.get(key) or {}).get(sub, 0) if sub else stats.get(key, 0)
    return float(value)


def _rate(now: dict[str, Any], before: dict[str, Any], dt: float, key: str, sub: str | None = None) -> float:
    return (_get(now, key, sub) - _get(before, key, sub)) / dt


def stage_e2e(
    args: argparse.Namespace,
    load: Load,
    *,
    pg_url: str,
    mqtt_url: str,
    ports: list[int],
    work: Path,
    mon: Monitor,
) -> dict[str, Any]:
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(load.spec({"modbus": ports})))
    stats = work / "stats-e2e"
    stats.mkdir()
    broker = bl.parse_mqtt_url(mqtt_url)
    sub_stats = work / "subscriber.json"
    sub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.subscriber",
            broker.host,
            str(broker.port),
            "bench/#",
            str(sub_stats),
            "20",
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    _wait_json(sub_stats, "subscribed", 15)
    mon.watch("subscriber", sub.pid)
    env = {
        **os.environ,
        "NEXUS_SPEC": str(spec_path),
        "NEXUS_DATABASE_URL": pg_url,
        "NEXUS_MQTT_URL": mqtt_url,
        "NEXUS_BENCH_STATS": str(stats),
        "NEXUS_LOG_LEVEL": "WARNING",
        "NEXUS_DATA_DIR": str(work / "data-e2e"),  # the run's own spools: none left over from another
    }
    procs = start_flow("bench.flow:flow", env, load.processes, work, args.workers)
    for i, p in enumerate(procs):
        mon.watch(f"bytewax-{i}", p.pid)
    try:
        # the warm-up starts at the flow's first poll (see the ramp stage)
        deadline = time.monotonic() + 120
        while not _flow_stats(stats).get("polls"):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"the dataflow did not poll; see {work}")
            time.sleep(0.2)
        t_start = time.monotonic()
        while time.monotonic() - t_start < args.warmup:
            s = _flow_stats(stats)
            _progress(
                f"  warm-up {time.monotonic() - t_start:4.0f}/{args.warmup:g} s  read {s.get('points_read', 0):,}"
            )
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the dataflow exited early; see {work}")
            time.sleep(1)
        mon.mark()
        s0, sub0, w0 = _flow_stats(stats), json.loads(sub_stats.read_text()), time.time()
        m0 = time.monotonic()
        prev, prev_t = s0, m0
        while (el := time.monotonic() - m0) < args.duration:
            time.sleep(1)
            s, now = _flow_stats(stats), time.monotonic()
            dt = max(1e-9, now - prev_t)

            _progress(
                f"  e2e {el:4.0f}/{args.duration:g} s  read {_rate(s, prev, dt, 'points_read'):9,.0f}/s  "
                f"stored {_rate(s, prev, dt, 'historian', 'rows_written'):9,.0f}/s  published {_rate(s, prev, dt, 'uns', 'acked'):9,.0f}/s  "
                f"skipped {s.get('skipped_polls', 0) - s0.get('skipped_polls', 0)}"
            )
            prev, prev_t = s, now
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the dataflow exited early; see {work}")
        s1, sub1, w1 = _flow_stats(stats), json.loads(sub_stats.read_text()), time.time()
        seconds = time.monotonic() - m0
        resources = mon.report()
        gc_window = _gc_window(stats, w0, w1)
        _say("")
    finally:
        stop_procs(procs)
        sub.terminate()
        sub.wait(10)
    for i in range(len(procs)):
        mon.unwatch(f"bytewax-{i}")
    mon.unwatch("subscriber")

    def delta(key: str, sub: str | None = None) -> float:
        return _get(s1, key, sub) - _get(s0, key, sub)

    final_sub = json.loads(sub_stats.read_text())
    lat = sorted(x[1] for x in final_sub.get("samples", []) if w0 <= x[0] <= w1)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None

    return {
        "seconds": round(seconds, 2),
        "workers_per_process": args.workers,
        "offered_points_per_s": load.points_per_s,
        "points_read_per_s": round(delta("points_read") / seconds, 1),
        "points_through_operators_per_s": round(delta("historian", "points_in") / seconds, 1),
        "rows_stored_per_s": round(delta("historian", "rows_written") / seconds, 1),
        "messages_published_per_s": round(delta("uns", "acked") / seconds, 1),
        "messages_received_per_s": round((sub1["messages"] - sub0["messages"]) / seconds, 1),
        "polls": delta("polls"),
        "skipped_polls": delta("skipped_polls"),
        "poll_failures": delta("failures"),
        "latency_historian": historian_latency(pg_url, w0, w1 - 2),
        "latency_subscriber": {"samples": len(lat), "p50_ms": pct(0.5), "p99_ms": pct(0.99)},
        "gc": {k: _get(s1, "gc", k) - _get(s0, "gc", k) for k in s1.get("gc", {}) if "max" not in k},
        "gc_max_pause_ms": max((v for k, v in s1.get("gc", {}).items() if "max" in k), default=None),
        "gc_window": gc_window,
        "resources": resources,
    }


def start_sim(load: Load, update_s: float | None = None) -> tuple[subprocess.Popen[bytes], list[int]]:
    """The simulators of ``load`` in their own process (registers change every ``update_s``, default
    the poll interval); the process and its ports."""
    config: dict[str, Any] = {"load": load.as_dict()}
    if update_s is not None:
        config["update_s"] = update_s
    sim = subprocess.Popen(
        [sys.executable, "-m", "bench.sim", json.dumps(config)], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert sim.stdout is not None
    line = sim.stdout.readline().decode()
    if not line.startswith("READY "):
        sim.terminate()
        sim.wait(10)
        raise RuntimeError(f"the simulators did not start: {line!r}")
    return sim, list(json.loads(line[6:])["ports"])


def _stop_sim(sim: subprocess.Popen[bytes]) -> None:
    sim.terminate()
    try:
        sim.wait(10)
    except subprocess.TimeoutExpired:
        sim.kill()
        sim.wait(5)


def _flow_env(load: Load, ports: list[int], folder: Path, pg_url: str, mqtt_url: str) -> dict[str, str]:
    """Environment of a ``bench.flow`` process polling ``load`` on ``ports``; counters go to ``folder/stats``."""
    folder.mkdir()
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(load.spec({"modbus": ports})))
    (folder / "stats").mkdir()
    return {
        **os.environ,
        "NEXUS_SPEC": str(spec_path),
        "NEXUS_DATABASE_URL": pg_url,
        "NEXUS_MQTT_URL": mqtt_url,
        "NEXUS_BENCH_STATS": str(folder / "stats"),
        "NEXUS_LOG_LEVEL": "WARNING",
        "NEXUS_DATA_DIR": str(folder / "data"),
    }


def _poll_counts(s0: dict[str, Any], s1: dict[str, Any], seconds: float) -> dict[str, Any]:
    polls = _get(s1, "polls") - _get(s0, "polls")
    skipped = _get(s1, "skipped_polls") - _get(s0, "skipped_polls")
    failures = _get(s1, "failures") - _get(s0, "failures")
    slots = polls + skipped
    return {
        "seconds": round(seconds, 2),
        "points_read_per_s": round((_get(s1, "points_read") - _get(s0, "points_read")) / seconds, 1),
        "polls": polls,
        "skipped_polls": skipped,
        "poll_failures": failures,
        "skipped_fraction": round(skipped / slots, 5) if slots else None,
        "failed_fraction": round(failures / polls, 5) if polls else None,
    }


def stage_ramp(
    args: argparse.Namespace, load: Load, *, pg_url: str, mqtt_url: str, work: Path, mon: Monitor
) -> dict[str, Any]:
    """Device counts x ``load.tags`` at ``--ramp-interval``, each as a fresh flow (``--ramp-processes``:
    as 1 process, then as a cluster of 2, ...); per process count, stops at the first step that skips or
    fails more than ``RAMP_SKIP_LIMIT`` of its polls (or at the time budget). The top-level ``steps``
    are those of the first process count; ``by_processes`` holds every count's."""
    steps = sorted({int(x) for x in args.ramp_devices.split(",") if x.strip()})
    counts = [int(x) for x in str(args.ramp_processes).split(",") if x.strip()]
    top = replace(load, devices=max(steps), poll_interval_s=args.ramp_interval, processes=1)
    # registers change once a second: at 0.1 s the simulators' own updates would eat a core
    sim, ports = start_sim(top, update_s=1.0)
    mon.watch("ramp-simulators", sim.pid)
    by: dict[str, Any] = {}
    try:
        for nproc in counts:
            by[str(nproc)] = _ramp(args, top, steps, nproc, ports, pg_url, mqtt_url, work, mon)
    finally:
        mon.unwatch("ramp-simulators")
        _stop_sim(sim)
    return {**by[str(counts[0])], "by_processes": by}


def _ramp(  # noqa: PLR0917 - the stage's context, passed through
    args: argparse.Namespace,
    top: Load,
    steps: list[int],
    nproc: int,
    ports: Any,
    pg_url: str,
    mqtt_url: str,
    work: Path,
    mon: Monitor,
) -> dict[str, Any]:
    module = "bench.flow:flow" if args.ramp_flow == "e2e" else "bench.flow:source_only"
    out: dict[str, Any] = {
        "interval_s": args.ramp_interval,
        "tags": top.tags,
        "flow": args.ramp_flow,
        "processes": nproc,
        "limit": RAMP_SKIP_LIMIT,
        "steps": [],
    }
    started = time.monotonic()
    for n in steps:
        if time.monotonic() - started > args.ramp_budget:
            out["stopped"] = f"time budget ({args.ramp_budget:g} s) spent before {n} devices"
            break
        step = replace(top, devices=n, processes=nproc)
        env = _flow_env(step, ports, work / f"ramp-{nproc}p-{n}", pg_url, mqtt_url)
        stats = Path(env["NEXUS_BENCH_STATS"])
        procs = start_flow(module, env, nproc, work)
        names = [f"ramp-bytewax-{i}" for i in range(nproc)]
        for name, p in zip(names, procs, strict=True):
            mon.watch(name, p.pid)
        label = f"ramp {n} devices, {nproc} process{'es' if nproc > 1 else ''}"

        def check_alive(procs: list[subprocess.Popen[bytes]] = procs) -> None:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the dataflow exited early; see {work}")

        try:
            # the warm-up starts at the flow's first poll, not at its spawn: on a loaded machine
            # the start-up alone can outlast a short warm-up and leave a step with no polls
            _progress(f"  {label}: waiting for the first poll")
            for p in procs:
                _wait_json(stats / f"flow-{p.pid}.json", "polls", 120)
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.ramp_warmup:
                _progress(f"  {label}: warm-up {time.monotonic() - t0:3.0f}/{args.ramp_warmup:g} s")
                check_alive()
                time.sleep(0.5)
            mon.mark()
            s0, m0, w0 = _flow_stats(stats), time.monotonic(), time.time()
            while (el := time.monotonic() - m0) < args.ramp_seconds:
                s = _flow_stats(stats)
                _progress(
                    f"  {label} x {top.tags} at {args.ramp_interval:g} s: {el:3.0f}/{args.ramp_seconds:g} s"
                    f"  skipped {_get(s, 'skipped_polls') - _get(s0, 'skipped_polls'):,.0f}"
                )
                check_alive()
                time.sleep(0.5)
            s1, seconds = _flow_stats(stats), time.monotonic() - m0
            res = mon.report()
            gc_window = _gc_window(stats, w0, time.time())
        finally:
            stop_procs(procs)
            for name in names:
                mon.unwatch(name)
        r = {"devices": n, "offered_points_per_s": step.points_per_s, **_poll_counts(s0, s1, seconds)}
        r["gc"] = {k: _get(s1, "gc", k) - _get(s0, "gc", k) for k in s1.get("gc", {}) if "max" not in k}
        r["gc_max_pause_ms"] = max((v for k, v in s1.get("gc", {}).items() if "max" in k), default=None)
        r["gc_window"] = gc_window
        r["bytewax"] = res.get(names[0]) if nproc == 1 else {name: res.get(name) for name in names}
        r["simulators"] = res.get("ramp-simulators")
        r["holds"] = bool(
            r["polls"]
            and (r["skipped_fraction"] or 0) <= RAMP_SKIP_LIMIT
            and (r["failed_fraction"] or 0) <= RAMP_SKIP_LIMIT
        )
        out["steps"].append(r)
        _say(
            f"\r\033[K  {label}: read {r['points_read_per_s']:,.0f} pts/s, skipped "
            f"{r['skipped_polls']:,.0f} ({100 * (r['skipped_fraction'] or 0):.2f} %), "
            f"failed {r['poll_failures']:,.0f}, full collections {r['gc'].get('gen2_count', 0):.0f} (longest pause"
            f" {gc_window['max_pause_ms']:.0f} ms, {gc_window['max_pause_cpu_ms']:.0f} ms CPU) -> {'holds' if r['holds'] else 'does not hold'}"
        )
        if not r["holds"]:
            break
    held = [r["devices"] for r in out["steps"] if r["holds"]]
    first_bad = next((r["devices"] for r in out["steps"] if not r["holds"]), None)
    out["largest_holding_devices"] = max(held) if held else 0
    out["first_failing_devices"] = first_bad
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def stage_memory(
    args: argparse.Namespace, load: Load, *, pg_url: str, mqtt_url: str, work: Path, mon: Monitor
) -> dict[str, Any]:
    """The e2e flow configured with ``--memory-devices`` x ``load.tags`` tags: the Bytewax process's
    peak RSS once every device has been polled (startup) and after ``--memory-seconds`` of running."""
    mload = replace(load, devices=args.memory_devices, poll_interval_s=args.memory_interval, processes=1)
    sim, ports = start_sim(mload)
    out: dict[str, Any] = {
        "devices": mload.devices,
        "tags_configured": mload.devices * mload.tags,
        "interval_s": mload.poll_interval_s,
        "offered_points_per_s": mload.points_per_s,
    }
    try:
        env = _flow_env(mload, ports, work / "memory", pg_url, mqtt_url)
        stats = Path(env["NEXUS_BENCH_STATS"])
        t0 = time.monotonic()
        procs = start_flow("bench.flow:flow", env, 1, work)
        proc = psutil.Process(procs[0].pid)
        mon.watch("memory-bytewax", procs[0].pid)
        try:
            limit = 60.0 + 2 * mload.poll_interval_s
            while True:  # startup: every device has handed over at least one poll
                s = _flow_stats(stats)
                done = s.get("devices", 0) >= mload.devices and s.get("completed", 0) >= mload.devices
                el = time.monotonic() - t0
                _progress(f"  memory: startup {el:4.0f} s  devices polled {s.get('completed', 0):,.0f}")
                if done or el > limit:
                    break
                if procs[0].poll() is not None:
                    raise RuntimeError(f"the dataflow exited early; see {work}")
                time.sleep(0.5)
            out["startup_s"] = round(time.monotonic() - t0, 1)
            out["startup_complete"] = bool(done)
            first = mon.report()["memory-bytewax"]
            out["rss_after_startup_mb"] = round(proc.memory_info().rss / 2**20, 1)
            out["peak_rss_after_startup_mb"] = first["peak_rss_mb"]
            mon.mark()
            s0, m0 = _flow_stats(stats), time.monotonic()
            while (el := time.monotonic() - m0) < args.memory_seconds:
                _progress(
                    f"  memory: running {el:4.0f}/{args.memory_seconds:g} s  rss {proc.memory_info().rss / 2**20:,.0f} MB"
                )
                if procs[0].poll() is not None:
                    raise RuntimeError(f"the dataflow exited early; see {work}")
                time.sleep(1)
            s1, seconds = _flow_stats(stats), time.monotonic() - m0
            second = mon.report()["memory-bytewax"]
            out["rss_after_running_mb"] = round(proc.memory_info().rss / 2**20, 1)
            out["peak_rss_mb"] = max(first["peak_rss_mb"], second["peak_rss_mb"])
            out["cpu_cores_running"] = second["cpu_cores"]
            out["running"] = _poll_counts(s0, s1, seconds)
            _say("")
        finally:
            stop_procs(procs)
            mon.unwatch("memory-bytewax")
    finally:
        _stop_sim(sim)
    return out


CLUSTER_VARIANTS = {
    "processes_1": (1, 1, "local"),
    "processes_2": (2, 1, "local"),
    "processes_2_bytewax": (2, 1, "bytewax"),
    "workers_2": (1, 2, "local"),
}
"""name -> (processes, workers per process, routing) of the ``cluster`` stage; ``bytewax``: Bytewax
places the source partitions (the layout before device-local routing), ``local``: each worker polls
the devices whose state it holds (``dataflows.routing``)."""


def stage_cluster(load: Load, points: int, work: Path, mon: Monitor, repeats: int = 1) -> dict[str, Any]:
    """The micro chain fed from memory as 1 process, 2 processes (device-local routing, and Bytewax's
    own placement as before) and 2 worker threads in 1 process; ratios against 1 process.

    With ``repeats`` > 1 the variants run round after round (so a burst of load from elsewhere hits
    them alike); each variant reports its median round, ``speedup`` the median of its per-round ratios.
    """
    devices = max(2, min(load.devices, 200))
    cload = Load(devices=devices, tags=load.tags, change_rate=load.change_rate)
    polls = max(2, points // (devices * load.tags))
    out: dict[str, Any] = {"devices": devices, "tags": load.tags, "polls": polls, "repeats": repeats}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CLUSTER_VARIANTS}
    for rep in range(repeats):
        for name, (n, workers, routing) in CLUSTER_VARIANTS.items():
            _progress(f"  cluster: round {rep + 1}/{repeats}, {name} ...")
            runs[name].append(
                _cluster_run(cload, polls, (n, workers, routing), work / f"cluster-{name}-{rep}", mon)
            )
    speedups: dict[str, list[float]] = {name: [] for name in CLUSTER_VARIANTS}
    cpu_speedups: dict[str, list[float]] = {name: [] for name in CLUSTER_VARIANTS}
    for rep in range(repeats):
        one = runs["processes_1"][rep]["points_per_s"]
        one_cpu = runs["processes_1"][rep]["points_per_cpu_s_busiest"]
        for name in CLUSTER_VARIANTS:
            if one:
                speedups[name].append(runs[name][rep]["points_per_s"] / one)
            if one_cpu:
                cpu_speedups[name].append(runs[name][rep]["points_per_cpu_s_busiest"] / one_cpu)
    for name, rounds in runs.items():
        ordered = sorted(rounds, key=lambda r: r["points_per_s"])
        out[name] = {**ordered[len(ordered) // 2], "rounds_points_per_s": [r["points_per_s"] for r in rounds]}
    out["speedup"] = {name: round(statistics.median(v), 2) if v else None for name, v in speedups.items()}
    out["speedup_rounds"] = {name: [round(x, 2) for x in v] for name, v in speedups.items()}
    out["speedup_cpu"] = {
        name: round(statistics.median(v), 2) if v else None for name, v in cpu_speedups.items()
    }
    out["speedup_cpu_rounds"] = {name: [round(x, 2) for x in v] for name, v in cpu_speedups.items()}
    return out


def _max_cpu(reports: list[dict[str, Any]]) -> float:
    return max((r["cpu_s"] for r in reports if r.get("cpu_s")), default=0.0)


def _cluster_run(
    cload: Load, polls: int, variant: tuple[int, int, str], stats: Path, mon: Monitor
) -> dict[str, Any]:
    n, workers, routing = variant
    stats.mkdir()
    env = {
        **os.environ,
        "NEXUS_BENCH_STATS": str(stats),
        "NEXUS_BENCH_SYNTH": json.dumps(
            {
                "load": cload.as_dict(),
                "polls": polls,
                "ts0_ns": time.time_ns() - polls * 10**9,
                "routing": routing,
            }
        ),
    }
    mon.mark()
    t0 = time.monotonic()
    procs = start_flow("bench.flow:synthetic", env, n, stats, workers)
    for i, p in enumerate(procs):
        mon.watch(f"cluster-{i}", p.pid)
    for p in procs:
        p.wait(600)
    wall = time.monotonic() - t0
    res = mon.report()
    for i in range(n):
        mon.unwatch(f"cluster-{i}")
    reports = [json.loads(f.read_text()) for f in stats.glob("flow-*.json")]
    # from the first poll of any process to the last output of any (wall clocks of one machine)
    started = [r["started"] for r in reports if r.get("started")]
    ended = [r["last"] for r in reports if r.get("last")]
    busy = max(ended) - min(started) if started and ended else 0.0
    t0s = min(started, default=0.0)
    points_in = cload.devices * cload.tags * polls
    return {
        "processes": n,
        "workers_per_process": workers,
        "routing": routing,
        "points_out": sum(r.get("points", 0) for r in reports),
        "points_in": points_in,
        "seconds": round(busy, 3),
        "wall_s_with_startup": round(wall, 2),
        "points_per_s": round(points_in / busy) if busy else 0,
        # CPU seconds each process spent from its first poll to its last output: on a shared machine
        # wall time measures the share of the cores a variant got; the busiest process's CPU time is
        # how long the run takes with a core per process
        "cpu_s": [round(r["cpu_s"], 3) for r in reports if r.get("cpu_s")],
        "points_per_cpu_s_busiest": round(points_in / cpu_max) if (cpu_max := _max_cpu(reports)) else 0,
        "exit_codes": [p.returncode for p in procs],
        "per_process": [
            {k: round(r[k] - t0s, 3) for k in ("started", "first", "last") if r.get(k)}
            | {"points": r.get("points")}
            for r in reports
        ],
        "resources": res,
    }


# ------------------------------------------------------------------------------------------ table


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, value: Any, baseline: Any = None, unit: str = "") -> None:
        v = f"{value:,.0f} {unit}".strip() if isinstance(value, int | float) else str(value)
        b = f"{baseline:,.0f}" if isinstance(baseline, int | float) else ""
        rows.append((name, v, b, _ratio(value, baseline) if isinstance(baseline, int | float) else ""))

    m = r.get("micro")
    if m:
        add("operator chain, cores (pts/s)", m["cores"]["points_per_s"], 2_000_000)
        if "cores_one_by_one" in m:
            one = m["cores_one_by_one"]["points_per_s"]
            add("operator chain, cores one by one (pts/s)", one)
            add("operator chain, cores vs one by one, same run", m["cores"]["points_per_s"], one)
            add("operator chain, bytewax vs cores one by one", m["bytewax"]["points_per_s"], one)
        if "cores_warm" in m:
            add(
                "operator chain, cores, devices' state warm (pts/s)",
                m["cores_warm"]["points_per_s"],
                2_000_000,
            )
        add("operator chain, coalesced batches (pts/s)", m["cores_coalesced"]["points_per_s"], 2_000_000)
        add("operator chain, bytewax run_main (pts/s)", m["bytewax"]["points_per_s"], 2_000_000)
    s = r.get("sinks")
    if s:
        add("bare COPY (rows/s)", s["copy_baseline"]["per_s"])
        add("HistorianWriter (rows/s)", s["historian_writer"]["write"]["per_s"], s["copy_baseline"]["per_s"])
        add(
            "HistorianWriter replay (rows/s)",
            s["historian_writer"]["replay"]["per_s"],
            s["copy_baseline"]["per_s"],
        )
        for q in (0, 1):
            add(f"bare paho QoS {q} (msg/s)", s[f"paho_baseline_qos{q}"]["per_s"])
            add(
                f"UnsPublisher QoS {q} (msg/s)",
                s[f"uns_publisher_qos{q}"]["per_s"],
                s[f"paho_baseline_qos{q}"]["per_s"],
            )
    sp = r.get("sparkplug")
    if sp:
        add("UnsPublisher QoS 0 (msg/s)", sp["uns_publisher_qos0"]["per_s"])
        add(
            "Sparkplug DDATA (metrics/s) vs UnsPublisher",
            sp["sparkplug_ddata"]["per_s"],
            sp["uns_publisher_qos0"]["per_s"],
        )
    mb = r.get("modbus")
    if mb:
        add("bare pymodbus read loop (pts/s)", mb["per_s"])
    e = r.get("e2e")
    if e:
        copy = (s or {}).get("copy_baseline", {}).get("per_s")
        paho = (s or {}).get(f"paho_baseline_qos{r['load']['qos']}", {}).get("per_s")
        add("e2e offered (pts/s)", e["offered_points_per_s"])
        add("e2e read (pts/s) vs bare pymodbus", e["points_read_per_s"], (mb or {}).get("per_s"))
        add("e2e through operators (pts/s)", e["points_through_operators_per_s"], e["points_read_per_s"])
        add("e2e stored (rows/s) vs bare COPY", e["rows_stored_per_s"], copy)
        add("e2e published (msg/s) vs bare paho", e["messages_published_per_s"], paho)
        add("e2e received by subscriber (msg/s)", e["messages_received_per_s"], e["messages_published_per_s"])
        add("e2e skipped polls", e["skipped_polls"])
        lh, ls = e["latency_historian"], e["latency_subscriber"]
        rows.append(
            ("latency source->historian p50/p99", f"{lh.get('p50_ms')} / {lh.get('p99_ms')} ms", "", "")
        )
        rows.append(
            ("latency source->subscriber p50/p99", f"{ls.get('p50_ms')} / {ls.get('p99_ms')} ms", "", "")
        )
        for name, res in e["resources"].items():
            rows.append(
                (f"  {name}", f"{res['cpu_cores']:.2f} cores, {res['peak_rss_mb']:.0f} MB peak", "", "")
            )
    ramp = r.get("ramp")
    if ramp:
        for rp in ramp.get("by_processes", {"1": ramp}).values():
            procs = f", {rp['processes']} processes" if rp.get("processes", 1) > 1 else ""
            for st in rp["steps"]:
                rows.append(
                    (
                        f"ramp @ {rp['interval_s']:g} s{procs}, {st['devices']} devices ({rp['flow']}): "
                        "read pts/s, skipped",
                        f"{st['points_read_per_s']:,.0f}, {100 * (st['skipped_fraction'] or 0):.2f} %"
                        + (f", GC max {st['gc_window']['max_pause_ms']:.0f} ms" if "gc_window" in st else ""),
                        f"{st['offered_points_per_s']:,.0f}",
                        _ratio(st["points_read_per_s"], st["offered_points_per_s"]),
                    )
                )
            add(
                f"ramp @ {rp['interval_s']:g} s{procs}: largest device count holding",
                rp["largest_holding_devices"],
            )
    mm = r.get("memory")
    if mm:
        rows.append(
            (
                f"memory, {mm['tags_configured']:,} tags: bytewax peak RSS startup / +{mm['running']['seconds']:.0f} s",
                f"{mm['peak_rss_after_startup_mb']:,.0f} / {mm['peak_rss_mb']:,.0f} MB",
                "600",
                _ratio(mm["peak_rss_mb"], 600),
            )
        )
    c = r.get("cluster")
    if c:
        one = c["processes_1"]["points_per_s"]
        add("cluster, 1 process (pts/s)", one)
        add("cluster, 2 processes, device-local routing (pts/s)", c["processes_2"]["points_per_s"], one)
        if "processes_2_bytewax" in c:
            add(
                "cluster, 2 processes, Bytewax placement (pts/s)",
                c["processes_2_bytewax"]["points_per_s"],
                one,
            )
        if "workers_2" in c:
            add("cluster, 1 process -w 2, device-local (pts/s)", c["workers_2"]["points_per_s"], one)
        cpu_one = c["processes_1"].get("points_per_cpu_s_busiest")
        if cpu_one:
            add("cluster by CPU time, 1 process (pts per CPU-s)", cpu_one)
            for name, label in (
                ("processes_2", "2 processes, device-local"),
                ("processes_2_bytewax", "2 processes, Bytewax placement"),
                ("workers_2", "1 process -w 2, device-local"),
            ):
                if name in c:
                    add(
                        f"cluster by CPU time, {label} (pts per busiest CPU-s)",
                        c[name]["points_per_cpu_s_busiest"],
                        cpu_one,
                    )
    qr = r.get("query")
    if qr:
        names = {
            "a_raw_1h": "(a) 1 tag raw, 1 h",
            "b_agg_1m_100_tags_1d": "(b) 100 tags 1-min aggs, 1 day",
            "c_latest_all_tags": f"(c) latest of {qr['tags']:,} tags",
        }
        for key, label in names.items():
            q = qr[key]
            rows.append(
                (
                    f"query {label}: API vs SQL p50 (ms)",
                    f"{q['api']['p50_ms']:.1f}",
                    f"{q['sql']['p50_ms']:.1f}",
                    f"{q['ratio_p50']:.2f}",
                )
            )
            rows.append(
                (
                    f"query {label}: API vs SQL p99 (ms)",
                    f"{q['api']['p99_ms']:.1f}",
                    f"{q['sql']['p99_ms']:.1f}",
                    f"{q['ratio_p99']:.2f}",
                )
            )
        rows.append(
            (
                "query (c) bare SQL without nexus_latest p50 (ms)",
                f"{qr['c_latest_from_points_sql']['p50_ms']:.1f}",
                "",
                "",
            )
        )
    if r.get("cost"):
        from bench.cost import rows as cost_rows

        for name, value, base in cost_rows(r["cost"]):
            v = f"{value:.4f}" if isinstance(value, float) else str(value)
            b = f"{base:.4f}" if isinstance(base, float) else ""
            num = value if isinstance(value, float) else None
            if isinstance(value, str) and value != "-":
                num = float(value.split()[0])
            rows.append((name, v, b, f"{num / base:.2f}" if num and base else ""))
    w = [max(len(x[i]) for x in [("figure", "value", "baseline", "ratio"), *rows]) for i in range(4)]
    lines = [
        "  ".join(
            h.ljust(w[i]) if i == 0 else h.rjust(w[i])
            for i, h in enumerate(("figure", "value", "baseline", "ratio"))
        )
    ]
    lines.append("  ".join("-" * x for x in w))
    for row in rows:
        lines.append("  ".join(x.ljust(w[i]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(row)))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def _enable_commit_timestamps(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        on = conn.execute("SHOW track_commit_timestamp").fetchone()
        if on and on[0] == "on":
            return
        conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    pg.stop()
    pg.start()


def _restart(pg: EmbeddedPostgres) -> None:
    pg.stop()
    pg.start()


def _pg_pid(pg: EmbeddedPostgres) -> int | None:
    try:
        return int((pg.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stages = [s for s in STAGES if s in args.stages.split(",")]
    load = Load(
        devices=args.devices,
        tags=args.tags,
        poll_interval_s=args.interval,
        change_rate=args.change_rate,
        deadband=args.deadband,
        qos=args.qos,
        processes=args.processes,
    )
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "load": load.as_dict(),
        "stages": stages,
    }
    mon = Monitor()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        work = Path(tmp)
        if "micro" in stages:
            _say("micro: operator chain from memory ...")
            result["micro"] = stage_micro(load, args.micro_points)
        need_services = {"sinks", "sparkplug", "e2e", "cost", "memory", "query"} & set(stages) or (
            "ramp" in stages and args.ramp_flow == "e2e"
        )
        pg = broker = sim = None
        try:
            if need_services:
                _say("starting PostgreSQL and the broker ...")
                pg = EmbeddedPostgres(work / "pg", port=free_port())
                pg.start()
                _enable_commit_timestamps(pg)
                use_mosquitto = args.broker == "mosquitto" or (
                    args.broker == "auto" and MosquittoBroker.available()
                )
                broker = MosquittoBroker(free_port()) if use_mosquitto else EmbeddedBroker(port=free_port())
                broker.start()
                result["broker"] = "mosquitto" if use_mosquitto else "amqtt"
                pid = _pg_pid(pg)
                if pid:
                    mon.watch("postgres", pid, children=True)
                proc = getattr(broker, "_proc", None)
                if proc is not None:
                    mon.watch("mosquitto", proc.pid)
            if "sinks" in stages:
                assert pg is not None and broker is not None
                _say("sinks: baselines and capacities ...")
                result["sinks"] = stage_sinks(
                    pg.url, broker.url, load, args.baseline_rows, args.baseline_messages
                )
            if "sparkplug" in stages:
                assert broker is not None
                _say("sparkplug: DDATA metrics/s vs the UNS publisher ...")
                result["sparkplug"] = stage_sparkplug(broker.url, load, args.baseline_messages)
            if {"modbus", "e2e"} & set(stages):
                _say(f"starting Modbus simulators for {load.devices} devices x {load.tags} tags ...")
                sim, ports = start_sim(load)
                mon.watch("simulators", sim.pid)
                if "modbus" in stages:
                    _say("modbus: bare pymodbus read loop ...")
                    result["modbus"] = bl.modbus_baseline(load, ports, seconds=min(10.0, args.duration))
                if "e2e" in stages:
                    assert pg is not None and broker is not None
                    _say(f"e2e: {load.points_per_s:,.0f} points/s offered, {args.duration:g} s measured ...")
                    result["e2e"] = stage_e2e(
                        args, load, pg_url=pg.url, mqtt_url=broker.url, ports=ports, work=work, mon=mon
                    )
                mon.unwatch("simulators")
                _stop_sim(sim)
                sim = None
            urls = {"pg_url": pg.url if pg else "", "mqtt_url": broker.url if broker else ""}
            if "cost" in stages:
                from bench.cost import stage_cost

                _say(f"cost: CPU per 10,000 points, devices {args.cost_devices} x {load.tags} tags ...")
                result["cost"] = stage_cost(args, load, work=work, say=_say, **urls)
            if "ramp" in stages:
                _say(
                    f"ramp: {load.tags}-tag devices at {args.ramp_interval:g} s, devices {args.ramp_devices} ..."
                )
                result["ramp"] = stage_ramp(args, load, work=work, mon=mon, **urls)
            if "memory" in stages:
                _say(f"memory: {args.memory_devices * load.tags:,} tags configured ...")
                result["memory"] = stage_memory(args, load, work=work, mon=mon, **urls)
            if "cluster" in stages:
                _say("cluster: the chain as 1 and 2 Bytewax processes, and -w 2 ...")
                result["cluster"] = stage_cluster(load, args.cluster_points, work, mon, args.cluster_repeats)
            if "query" in stages:
                assert pg is not None
                from bench.query import stage_query

                _say(f"query: {args.query_rows:,} rows of {args.query_tags:,} tags, API vs bare SQL ...")
                result["query"] = stage_query(
                    pg.url,
                    rows=args.query_rows,
                    tags=args.query_tags,
                    interval_s=args.query_interval,
                    samples=args.query_samples,
                    work=work,
                    port=free_port(),
                    restart=partial(_restart, pg),
                )
        finally:
            if sim is not None:
                _stop_sim(sim)
            if broker is not None:
                broker.stop()
            if pg is not None:
                pg.stop()
            mon.stop()
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nresults: {path}")
    return 0
