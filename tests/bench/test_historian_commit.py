"""``bench.historian_commit`` runs both write paths against embedded PostgreSQL and reports each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_both_paths_are_measured_with_a_tiny_load() -> None:
    cmd = [sys.executable, "-m", "bench.historian_commit", "--rows", "40", "--commits", "3", "--rounds", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(proc.stdout)["rows"]["40"]
    for path in ("insert", "copy"):
        assert row[path]["wall_ms_per_commit"] > 0, row
        assert row[path]["server_cpu_us_per_commit"] >= 0 and row[path]["cpu_us_per_commit"] >= 0, row
    assert "insert_over_copy" in row
