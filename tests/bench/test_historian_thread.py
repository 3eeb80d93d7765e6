"""The historian-thread benchmark end to end with a tiny load: both sides run and report figures.

No timing assertions: only that each child committed the rows it was fed with its own checkout's
writer, and that bad arguments are refused by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_historian_thread_bench_with_a_tiny_load() -> None:
    cmd = [sys.executable, "-m", "bench.historian_thread", "--a", str(ROOT), "--b", str(ROOT), "--devices", "2",
           "--handovers", "2", "--rounds", "1", "--seconds", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    for side in ("a", "b"):
        (run,) = r[side]
        assert run["writer_cores"] > 0 and run["commits_per_s"] > 0
        assert 0 < run["rows_per_s"] <= 250  # at most 2 devices x 100 tags a second (and a hand-over)
    assert r["writer_b_over_a"]["median"] > 0


def test_counts_must_be_positive() -> None:
    cmd = [sys.executable, "-m", "bench.historian_thread", "--a", ".", "--b", ".", "--devices", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "must be positive" in proc.stderr
