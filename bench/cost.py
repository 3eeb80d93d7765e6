"""The ``cost`` stage: CPU-seconds of the flow process per 10,000 points and per poll.

For each device count (``--cost-devices``, default 10,100,500; ``--tags`` tags each, at ``--interval``)
against simulators in their own process:

- ``uns``: the flow ``normalize -> mqtt_uns`` (QoS 0, no historian);
- ``full``: ``normalize -> deadband -> window (1m) -> mqtt_uns`` (QoS 0) and the historian;
- the bare baselines of the same load (:mod:`bench.cost_bare`): a pymodbus read loop and paho
  publishing the same messages, formatted beforehand.

Each runs ``--cost-warmup`` s, then ``--cost-seconds`` s measured: the process's CPU time (user +
system, psutil) over the window divided by the points handled in it. CPU-seconds per 10,000 points
equals cores per 10,000 points/s. The flow processes are ``bench.flow:flow`` (the project's compiler
and sinks; the harness adds a per-sink counter and a stats file written twice a second). Each flow's
figures include its threads' wake-ups per second and cores over the window (:mod:`bench.cost_threads`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench import cost_threads
from bench.load import Load

ROOT = Path(__file__).resolve().parent.parent


FLOW_PARTS = {"full": (True, True), "ops": (True, False), "hist": (False, True)}
"""The full flow and its two halves, to tell their costs apart (``cost_ab --flow-b ops``): ``ops`` is
the UNS-only flow plus deadband and windows (with the aggregates' store), ``hist`` plus the historian."""
FLOWS = ("uns", *FLOW_PARTS)


def cost_spec(
    load: Load,
    ports: list[int],
    flow: str,
    historian_delay_s: float | None = None,
    historian_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``uns`` or ``full`` flow spec for ``load`` polling ``ports``; the full flow's historian
    commits at its default pace (``max_delay_s`` 1 s) unless ``historian_delay_s`` is given (until
    2026-12-01 this stage used 0.2 s, the e2e stage's latency setting: five commits a second instead
    of one, ~0.004 cores of per-commit overhead at 10 devices — BENCHMARKS.md). ``historian_fields``
    sets other fields of the historian node (``spool_sync_interval_s``...)."""
    spec = load.spec({"modbus": ports})
    uns = {"id": "uns", "type": "mqtt_uns", "qos": 0}
    if flow == "uns":
        spec["operators"] = [{"id": "normalize", "type": "normalize"}]
        spec["sinks"] = [uns]
    elif flow in FLOW_PARTS:
        operators, with_historian = FLOW_PARTS[flow]
        spec["operators"] = [{"id": "normalize", "type": "normalize"}]
        if operators:
            spec["operators"] += [
                {"id": "deadband", "type": "deadband"},
                {"id": "windows", "type": "window", "windows": ["1m"]},
            ]
        spec["sinks"] = [uns]
        if with_historian:
            historian: dict[str, Any] = {"id": "historian", "type": "historian"}
            if historian_delay_s is not None:
                historian["max_delay_s"] = historian_delay_s
            historian.update(historian_fields or {})
            spec["sinks"].append(historian)
    else:
        raise ValueError(f"unknown cost flow {flow!r}")
    return spec


def _cpu(proc: psutil.Process) -> float:
    """The process's CPU seconds, every thread (ended ones too), to the nanosecond: its POSIX CPU
    clock (``stat``'s user + system are 10 ms ticks, ~5 % of a 10-device flow's 40 s window)."""
    try:
        return time.clock_gettime(((~proc.pid) << 3) | 2)  # CPUCLOCK_SCHED of the process (Linux)
    except OSError:
        t = proc.cpu_times()
        return t.user + t.system


REPORT_S = "2"
"""The flow's stats report interval in cost runs (``NEXUS_BENCH_REPORT_S``): the reporter is harness,
not product, and cost 0.002-0.003 cores at the default 0.5 s (7-10 % of a 10-device flow)."""


def _figures(
    cpu_s: float, points: float, polls: float, seconds: float, counted_s: float | None = None
) -> dict[str, Any]:
    """CPU over ``seconds`` against the points and polls counted over ``counted_s`` (the flow's own
    reports' times, which need not match the CPU window; default ``seconds``), as rates."""
    scale = seconds / counted_s if counted_s else 1.0  # counts over the CPU window
    points, polls = points * scale, polls * scale
    return {
        "seconds": round(seconds, 2),
        "points": int(points),
        "polls": int(polls),
        "cpu_s": round(cpu_s, 3),
        "cores": round(cpu_s / seconds, 4) if seconds else None,
        "cpu_s_per_10k_points": round(cpu_s / points * 10_000, 5) if points else None,
        "cpu_ms_per_poll": round(cpu_s / polls * 1000, 4) if polls else None,
    }


def run_flow(
    load: Load,
    ports: list[int],
    flow: str,
    *,
    pg_url: str,
    mqtt_url: str,
    work: Path,
    warmup: float,
    seconds: float,
    profile: Path | None = None,
    historian_delay_s: float | None = None,
) -> dict[str, Any]:
    """One flow's CPU over the window; with ``profile`` a folder, py-spy samples the window too
    (``{flow}-{devices}.txt``, collapsed stacks without idle frames, 100 Hz, non-blocking)."""
    from bench import cli

    folder = work / f"cost-{flow}-{load.devices}"
    (folder / "stats").mkdir(parents=True)
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(cost_spec(load, ports, flow, historian_delay_s)))
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
    }
    procs = cli.start_flow("bench.flow:flow", env, 1, folder)
    proc = psutil.Process(procs[0].pid)
    stats = folder / "stats"
    try:
        deadline = time.monotonic() + 120
        while not cli._flow_stats(stats).get("polls"):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cost flow did not poll; see {folder}")
            time.sleep(0.2)
        time.sleep(warmup)
        spy = None
        spy_exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if profile is not None and Path(spy_exe).exists():  # a profiling tool, not a dependency
            profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [
                    spy_exe,
                    "record", "--nonblocking", "--rate", os.environ.get("NEXUS_SPY_RATE", "100"), "--format", "raw", "--threads",
                    "-d", str(int(seconds)), "-p", str(proc.pid),
                    "-o", str(profile / f"{flow}-{load.devices}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        s0, c0, t0 = cli._flow_stats(stats), _cpu(proc), time.monotonic()
        th0 = cost_threads.sample(proc.pid)
        while time.monotonic() - t0 < seconds:
            time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - t0))))
            if procs[0].poll() is not None:
                raise RuntimeError(f"the cost flow exited early; see {folder}")
        s1, c1, t1 = cli._flow_stats(stats), _cpu(proc), time.monotonic()
        threads = cost_threads.rates(th0, cost_threads.sample(proc.pid), t1 - t0)
        if spy is not None:
            spy.wait(30)
    finally:
        cli.stop_procs(procs)

    def d(key: str, sub: str | None = None) -> float:
        return cli._get(s1, key, sub) - cli._get(s0, key, sub)

    out = _figures(c1 - c0, d("points_read"), d("completed"), t1 - t0, d("report_time"))
    out["skipped_polls"] = int(d("skipped_polls"))
    out["threads"] = threads
    out["uns_acked"] = int(d("uns", "acked"))
    if flow == "full":
        out["rows_written"] = int(d("historian", "rows_written"))
    return out


def run_bare(kind: str, load: Load, warmup: float, seconds: float, **extra: Any) -> dict[str, Any]:
    cfg = {"kind": kind, "load": load.as_dict(), "warmup": warmup, "seconds": seconds, **extra}
    done = subprocess.run(
        [sys.executable, "-m", "bench.cost_bare", json.dumps(cfg)],
        cwd=ROOT,
        capture_output=True,
        timeout=warmup + seconds + 300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.cost_bare {kind} failed: {done.stderr.decode()[-2000:]}")
    r = json.loads(done.stdout.decode().strip().splitlines()[-1])
    per_poll = load.tags
    return _figures(r["cpu_s"], r["points"], r["points"] / per_poll, r["seconds"])


def stage_cost(args: Any, load: Load, *, pg_url: str, mqtt_url: str, work: Path, say: Any) -> dict[str, Any]:
    from bench import cli

    out: dict[str, Any] = {"loads": {}, "warmup_s": args.cost_warmup, "seconds": args.cost_seconds}
    for devices in [int(x) for x in str(args.cost_devices).split(",") if x]:
        lo = replace(load, devices=devices, qos=0, processes=1)
        say(f"  cost: {devices} devices x {lo.tags} tags at {lo.poll_interval_s:g} s ...")
        sim, ports = cli.start_sim(lo)
        entry: dict[str, Any] = {"load_avg_before": [round(x, 2) for x in os.getloadavg()]}
        try:
            kw = {"warmup": args.cost_warmup, "seconds": args.cost_seconds}
            entry["bare_modbus"] = run_bare("modbus", lo, ports=ports, **kw)
            entry["bare_paho"] = run_bare("paho", lo, url=mqtt_url, **kw)
            prof = Path(args.cost_profile) if getattr(args, "cost_profile", None) else None
            for flow in ("uns", "full"):
                entry[flow] = run_flow(
                    lo, ports, flow, pg_url=pg_url, mqtt_url=mqtt_url, work=work, profile=prof,
                    historian_delay_s=getattr(args, "cost_historian_delay", None), **kw,
                )  # fmt: skip
        finally:
            cli._stop_sim(sim)
        entry["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        out["loads"][str(devices)] = entry
    return out


def rows(cost: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Table rows ``(figure, value, baseline)``: CPU-s per 10,000 points, the flows against the sum of
    the two bare baselines (what the flow's job costs with no framework at all)."""
    out: list[tuple[str, Any, Any]] = []
    for devices, e in cost.get("loads", {}).items():
        bare = [e.get(k, {}).get("cpu_s_per_10k_points") for k in ("bare_modbus", "bare_paho")]
        bare_sum = sum(bare) if all(b is not None for b in bare) else None  # type: ignore[misc]
        tag = f"cost {devices} dev"
        out.append((f"{tag}: bare pymodbus, CPU-s/10k pts (ms/poll)", _fmt(e.get("bare_modbus")), None))
        out.append((f"{tag}: bare paho QoS 0, CPU-s/10k pts (ms/poll)", _fmt(e.get("bare_paho")), None))
        for flow in ("uns", "full"):
            f = e.get(flow) or {}
            out.append((f"{tag}: {flow} flow, CPU-s/10k pts (ms/poll)", _fmt(f), bare_sum))
        u, f = (
            (e.get("uns") or {}).get("cpu_s_per_10k_points"),
            (e.get("full") or {}).get("cpu_s_per_10k_points"),
        )
        out.append((f"{tag}: full / uns flow", f, u))
    return out


def _fmt(f: dict[str, Any] | None) -> str:
    if not f or f.get("cpu_s_per_10k_points") is None:
        return "-"
    return f"{f['cpu_s_per_10k_points']:.4f} ({f['cpu_ms_per_poll']:.3f})"
