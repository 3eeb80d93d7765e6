"""The aggregate-write benchmark end to end with a tiny load: both sides run and report figures.

No timing assertions: only that each child wrote its rows with its own checkout's writer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_derived_write_bench_with_a_tiny_load() -> None:
    cmd = [sys.executable, "-m", "bench.derived_write", "--a", str(ROOT), "--b", str(ROOT), "--rows", "200",
           "--rounds", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    runs = r["rows_200"]
    for side in ("a", "b"):
        (run,) = runs[side]
        assert run["insert"]["client_cpu_s"] > 0 and run["upsert"]["wall_s"] > 0
    assert runs["b_over_a"]["insert_client_cpu_s"]["median"] > 0


def test_rows_must_be_whole_devices() -> None:
    cmd = [sys.executable, "-m", "bench.derived_write", "--a", ".", "--b", ".", "--rows", "150"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--rows must be positive multiples of 100, got '150'" in proc.stderr
