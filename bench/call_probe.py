"""The worker thread's CPU per call of the flow's main Python entry points, in a live cost flow.

:mod:`bench.worker_step` times the worker in a tight loop in process; a live flow naps between
activations, and on this VM whatever runs first after a nap of ~20 ms costs 3-10x what it costs in a
loop (caches and branch predictors gone cold; BENCHMARKS.md). This probe measures the live flow
itself: with ``NEXUS_BENCH_PROBE=<path prefix>`` in its environment, ``bench.flow:flow`` wraps the
methods in :data:`TARGETS`, each call made on the thread that built the flow (Bytewax's worker
``main``) adds its CPU time (``time.thread_time_ns``) and a count, and a thread appends the totals
and the worker's CPU clock to ``<prefix>.<pid>.jsonl`` every :data:`EVERY_S` seconds. Calls nest (the
fused chain's fan-out holds the sinks' calls), so the lines do not add up; the wrapper itself costs
~1 us a call.

    python -m bench.cost_ab --a . --b . --flow-a uns --flow-b full --devices 100 --rounds 1 \\
        --env-a NEXUS_BENCH_PROBE=/tmp/probe-a --env-b NEXUS_BENCH_PROBE=/tmp/probe-b
    python -m bench.call_probe /tmp/probe-a.*.jsonl /tmp/probe-b.*.jsonl

The summary is the difference between a file's last line and its third (the first ten seconds are
start-up), as cores and as µs per call. ``NEXUS_BENCH_PROBE_EXTRA`` adds targets for one run,
comma-separated ``module:Class.method`` or ``module:function`` (a function called through its
module's globals), e.g. ``connectors.spool:Spool.append_each,connectors.historian.writer:merge_for_handover``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

TARGETS: tuple[tuple[str, str, str], ...] = (
    ("operators.chain_bytewax", "ChainLogic", "on_batch"),
    ("operators.chain_bytewax", "ChainLogic", "on_notify"),
    ("operators.chain_bytewax", "ChainLogic", "notify_at"),
    ("operators.chain_bytewax", "ChainLogic", "snapshot"),
    ("operators.chain_bytewax", "_FanOutPartition", "write_batch"),
    ("connectors.mqtt.sink", "_UnsPartition", "write_batch"),
    ("connectors.mqtt.packing", "PackTable", "pack"),
    ("connectors.historian.sink", "_HistorianPartition", "write_batch"),
    ("connectors.derived", "_DerivedPartition", "write_batch"),
    ("dataflows.routing", "_LocalParts", "next_batch"),
)
"""``(module, class, method)``: what the probe times (a target that is missing is skipped; a class of
``""`` names a module-level function)."""
EVERY_S = 5.0
SKIP_LINES = 2


def wrap(owner: Any, name: str, totals: dict[str, list[int]], thread_id: int) -> None:
    """Replace ``owner.name`` by a wrapper that adds its CPU time and a count to
    ``totals["<owner>.<name>"]`` when called on the thread ``thread_id`` (other threads: untouched)."""
    inner: Callable[..., Any] = getattr(owner, name)
    key = f"{owner.__name__}.{name}"
    slot = totals.setdefault(key, [0, 0])
    clock, ident = time.thread_time_ns, threading.get_ident

    @wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if ident() != thread_id:
            return inner(*args, **kwargs)
        start = clock()
        try:
            return inner(*args, **kwargs)
        finally:
            slot[0] += clock() - start
            slot[1] += 1

    setattr(owner, name, timed)


def install(prefix: str, targets: tuple[tuple[str, str, str], ...] = TARGETS) -> Path:
    """Time ``targets`` on the calling thread and report to ``<prefix>.<pid>.jsonl``; its path."""
    thread_id = threading.get_ident()
    totals: dict[str, list[int]] = {}
    for module, cls, method in targets:
        try:
            owner = importlib.import_module(module)
            if cls:
                owner = getattr(owner, cls)
        except (ImportError, AttributeError):
            continue
        wrap(owner, method, totals, thread_id)
    cpu_clock = time.pthread_getcpuclockid(thread_id)
    out = Path(f"{prefix}.{os.getpid()}.jsonl")

    def report() -> None:
        while True:
            time.sleep(EVERY_S)
            line = {"t": time.monotonic(), "worker_ns": time.clock_gettime_ns(cpu_clock), "calls": totals}
            with out.open("a") as f:
                f.write(json.dumps(line) + "\n")

    threading.Thread(target=report, name="bench-probe", daemon=True).start()
    return out


def parse_targets(text: str) -> tuple[tuple[str, str, str], ...]:
    """``NEXUS_BENCH_PROBE_EXTRA``'s targets; ``ValueError`` names an entry without a ``module:``.

    >>> parse_targets("connectors.spool:Spool.append_each, a.b:f")
    (('connectors.spool', 'Spool', 'append_each'), ('a.b', '', 'f'))
    """
    out = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        module, sep, name = entry.partition(":")
        if not sep or not module or not name:
            raise ValueError(
                f"NEXUS_BENCH_PROBE_EXTRA: {entry!r} is not module:Class.method or module:function"
            )
        cls, _, method = name.rpartition(".")
        out.append((module, cls, method))
    return tuple(out)


def summarize(path: Path) -> dict[str, Any] | None:
    """The worker's cores and each target's cores, calls per second and µs per call between the
    file's third line and its last (``None``: too short)."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if len(lines) <= SKIP_LINES + 1:
        return None
    a, b = lines[SKIP_LINES], lines[-1]
    dt = b["t"] - a["t"]
    out: dict[str, Any] = {
        "seconds": round(dt, 1),
        "worker_cores": round((b["worker_ns"] - a["worker_ns"]) / dt / 1e9, 5),
    }
    for key, (ns, n) in b["calls"].items():
        ns0, n0 = a["calls"].get(key, (0, 0))
        if n > n0:
            out[key] = {
                "cores": round((ns - ns0) / dt / 1e9, 5),
                "per_s": round((n - n0) / dt, 1),
                "us_per_call": round((ns - ns0) / (n - n0) / 1000, 1),
            }
    return out


def main(argv: list[str]) -> int:
    for arg in argv:
        figures = summarize(Path(arg))
        if figures is None:
            print(f"{arg}: fewer than {SKIP_LINES + 2} reports")
            continue
        print(f"{arg}: {figures.pop('seconds')} s, worker {figures.pop('worker_cores')} cores")
        for key, f in figures.items():
            print(f"  {key:36s} {f['cores']:.4f} cores {f['per_s']:8.1f}/s {f['us_per_call']:9.1f} us/call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
