"""The worker thread's CPU per device poll in a compiled cost flow, in process, without devices,
broker or database: an A/B of two checkouts that the machine's noise does not drown.

The ``cost`` stage and :mod:`bench.cost_ab` measure the whole flow process against real simulators,
broker and PostgreSQL; their rounds move by 10-30 % on this shared VM, more than a change to the
worker's steps. This compiles the same ``uns`` or ``full`` spec (:func:`bench.cost.cost_spec`) with
a source that hands over ``per_activation`` polls per call (one device each, cycling through the
devices, one second apart in event time) and counting sinks in place of the UNS, historian and
derived sinks, runs it with ``run_main`` on this thread, and reports this thread's CPU time per poll
after the first fifth of the polls (warm-up; the heap is frozen then, as ``dataflows.telemetry``
does), less what building the polls' batches costs. In a live flow at 100 devices an activation
carries ~14 polls (the worker naps between them), at 10 devices ~2.

    python -m bench.worker_step --a /tmp/main-checkout --b . --per-activation 1,14 --rounds 3

Each measurement runs in a fresh process started in the checkout's folder (``cwd``), so the
checkout's own modules are imported; prints one JSON document (per flow and activation size: each
round's A and B in µs per poll, B / A, and the medians).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EPOCH_MINUTE_NS = 60_000_000_000


def measure(flow_kind: str, devices: int, polls: int, per_activation: int) -> float:
    """This thread's CPU µs per poll in the compiled ``flow_kind`` cost flow (see the module doc)."""
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    from bench.cost import cost_spec
    from bench.load import Load
    from core.batch import PointBatch
    from dataflows.compiler import DERIVED_STEP, Runtime, compile_flow
    from dataflows.spec import parse_spec
    from dataflows.status import FlowStatus

    load = Load(devices=devices, tags=100, change_rate=1.0)
    spec = parse_spec(cost_spec(load, list(range(20000, 20000 + load.ports_needed)), flow_kind))
    values: dict[str, list[Any]] = {}
    for b in load.batches(8, 0, seed=3):
        values.setdefault(b.device_id, []).append(b.values)
    ids = {load.device_id(i): load.tag_ids(i) for i in range(devices)}
    order = list(ids)
    # event time two hours back: ahead of the clock it would be clamped as from the future
    t0 = (time.time_ns() // EPOCH_MINUTE_NS - 120) * EPOCH_MINUTE_NS
    warm = polls // 5
    mark: dict[str, float] = {}

    def poll(k: int) -> PointBatch:
        device = order[k % devices]
        cycle = k // devices
        return PointBatch.from_values(
            device, ids[device], values[device][cycle % 8], ts_ns=t0 + cycle * 10**9
        )

    class Part(StatelessSourcePartition[PointBatch]):
        def __init__(self) -> None:
            self.k = 0

        def next_batch(self) -> list[PointBatch]:
            k = self.k
            if k >= polls:
                raise StopIteration
            if k >= warm and "cpu" not in mark:
                gc.collect()
                gc.freeze()
                mark["cpu"], mark["k"] = time.thread_time(), k
            self.k += per_activation
            return [poll(j) for j in range(k, min(k + per_activation, polls))]

    class Source(DynamicSource[PointBatch]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    class Counting(DynamicSink[Any]):
        def __init__(self) -> None:
            self.items = 0

        def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
            owner = self

            class Count(StatelessSinkPartition[Any]):
                def write_batch(self, items: list[Any]) -> None:
                    owner.items += len(items)

            return Count()

    sinks: dict[str, Counting] = {n.id: Counting() for n in spec.sinks}
    sinks[DERIVED_STEP] = Counting()
    status = FlowStatus(spec.id, "mqtt://127.0.0.1:1")  # never started: only its counters are used
    try:
        run_main(compile_flow(spec, Runtime(source=Source(), sinks=sinks, status=status)))
        spent = time.thread_time() - mark["cpu"]
    finally:
        gc.unfreeze()  # (a caller's heap goes back to the collector)
    measured = polls - int(mark["k"])
    if any(s.items == 0 for name, s in sinks.items() if name != DERIVED_STEP):
        raise RuntimeError(f"a sink of the {flow_kind} flow received nothing: {sinks}")
    start = time.thread_time()
    for k in range(measured):
        poll(k)
    source = time.thread_time() - start
    return (spent - source) / measured * 1e6


def _one(root: str, flow_kind: str, devices: int, polls: int, per_activation: int) -> float:
    """:func:`measure` in a fresh process that imports the checkout at ``root`` (this file is run by
    its path there, so a checkout without it can be measured too)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", flow_kind, str(devices), str(polls)]
    out = subprocess.run([*argv, str(per_activation)], cwd=root, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the measurement in {root} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default=".", help="checkout A (its folder)")
    ap.add_argument("--b", default=".", help="checkout B (its folder)")
    ap.add_argument("--flows", default="full", help="comma-separated: uns, full")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--polls", type=int, default=30_000)
    ap.add_argument("--per-activation", default="1,14", help="comma-separated polls per source call")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"a": args.a, "b": args.b, "devices": args.devices, "polls": args.polls, "runs": {}}
    for flow_kind in args.flows.split(","):
        for k in (int(x) for x in args.per_activation.split(",")):
            rounds = []
            for r in range(args.rounds):
                sides = ("a", "b") if r % 2 == 0 else ("b", "a")
                got = {s: _one(getattr(args, s), flow_kind, args.devices, args.polls, k) for s in sides}
                rounds.append(
                    {"a": round(got["a"], 2), "b": round(got["b"], 2), "b/a": round(got["b"] / got["a"], 3)}
                )
                print(
                    f"{flow_kind} K={k} round {r + 1}: a {got['a']:.2f} b {got['b']:.2f} us/poll",
                    file=sys.stderr,
                )
            out["runs"][f"{flow_kind}/{k}"] = {
                "rounds": rounds,
                "median_a": statistics.median(x["a"] for x in rounds),
                "median_b": statistics.median(x["b"] for x in rounds),
                "median_b_over_a": statistics.median(x["b/a"] for x in rounds),
            }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:  # (run by _one in a checkout's folder: import that checkout)
        sys.path[0] = os.getcwd()
        flow_kind, devices, polls, per_activation = sys.argv[2], *map(int, sys.argv[3:6])
        print(measure(flow_kind, devices, polls, per_activation))
    else:
        main()
