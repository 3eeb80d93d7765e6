"""The flow's kernels are compiled before the first poll: after :func:`dataflows.warm.warm_kernels`, a
representative load (device polls through the chain and through the cores one by one, across a
minute's close with alarms, the UNS packer on a 100-tag poll, the historian's newest-row table on a
gathered chunk) compiles nothing more.

Run in a fresh interpreter, so that no other test has compiled a kernel first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, time
from dataclasses import replace
import numpy as np
from numba.core.dispatcher import Dispatcher

import connectors.historian.latest as latest
import connectors.mqtt.packing as packing
import operators.kernels as kernels
from dataflows.warm import warm_kernels

def signatures():
    out = {}
    for mod in (kernels, packing, latest):
        for name, obj in vars(mod).items():
            if isinstance(obj, Dispatcher):
                out[f"{mod.__name__}.{name}"] = sorted(str(s) for s in obj.signatures)
    return out

if sys.argv[1] == "warm":
    warm_kernels()
before = signatures()

from bench.chain import Chain
from bench.load import Load
from connectors.historian.latest import LatestRows
from connectors.mqtt.packing import PackTable
from core.tags import TagInfo

load = Load(devices=3, tags=100, change_rate=0.8)
batches = load.batches(80, (time.time_ns() // 60_000_000_000 - 2) * 60_000_000_000 + 300_000_000)
fused = Chain.for_load(load)
fused.run_cores(batches)                      # the chain: first polls, fused polls, a minute's close
replace(Chain.for_load(load), fused=False).run_cores(batches)  # the cores one by one (per-operator steps)
ids = load.tag_ids(0)
tags = {int(t): TagInfo(int(t), "d", f"t{t}", "degC", f"a/b/c/d/dev/t{t}") for t in ids}
table = PackTable().with_tags(tags)
for b in batches[:3]:
    table.pack(b, False)
rows = LatestRows()
cols = np.empty(1000, np.int64), np.empty(1000, np.int64), np.empty(1000), np.empty(1000, np.uint8)
for b in batches[:5]:
    n = len(b)
    cols[0][:n] = b.ts_ns // 1000; cols[1][:n] = b.tag_ids; cols[2][:n] = b.values; cols[3][:n] = b.quality
    rows.merge(cols[0][:n], cols[1][:n], cols[2][:n], cols[3][:n])
rows.peek()
after = signatures()
print(json.dumps({"before": before, "after": after}))
"""


def _run(mode: str) -> dict[str, dict[str, list[str]]]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_nothing_compiles_after_the_warm_up() -> None:
    got = _run("warm")
    new = {k: sorted(set(v) - set(got["before"].get(k, []))) for k, v in got["after"].items()}
    new = {k: v for k, v in new.items() if v}
    assert not new, f"kernels compiled after the warm-up (the first polls would pay for them): {new}"
    assert sum(len(v) for v in got["before"].values()) >= 8  # the warm-up did compile (or load) them


def test_the_load_compiles_kernels_without_the_warm_up() -> None:
    """The check above can fail: without the warm-up the same load compiles the kernels itself."""
    got = _run("cold")
    assert not any(got["before"].values())
    assert sum(len(v) for v in got["after"].values()) >= 8
