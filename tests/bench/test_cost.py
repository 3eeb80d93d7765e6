"""The ``cost`` stage end to end with a tiny load: every run reports CPU per 10,000 points and per poll.

No timing assertions: only that each flow and baseline handled points and was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_cost_stage_with_a_tiny_load(tmp_path: Path) -> None:
    # a 10 s warm-up: in a fresh checkout the first full flow compiles the operators' numba kernels
    # (seconds of CPU) before it emits, which a 1 s warm-up left inside the 2 s measuring window
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "bench", "--stages", "cost", "--tags", "5", "--interval", "0.5",
        "--cost-devices", "2,3", "--cost-warmup", "10", "--cost-seconds", "2",
        "--cost-profile", str(tmp_path / "profiles"), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cost 3 dev: uns flow" in proc.stdout and "cost 2 dev: full / uns flow" in proc.stdout
    (f,) = out.glob("*.json")
    cost = json.loads(f.read_text())["cost"]
    assert set(cost["loads"]) == {"2", "3"}
    for devices, entry in cost["loads"].items():
        for run in ("bare_modbus", "bare_paho", "uns", "full"):
            r = entry[run]
            assert r["points"] > 0 and r["polls"] > 0 and r["cpu_s"] >= 0, (devices, run, r)
            assert r["cpu_s_per_10k_points"] is not None and r["cpu_ms_per_poll"] is not None
        assert entry["uns"]["uns_acked"] > 0
        assert entry["full"]["rows_written"] > 0
    profiles = sorted(p.name for p in (tmp_path / "profiles").glob("*.txt"))
    if profiles:  # py-spy installed (a profiling tool, not a dependency)
        assert profiles == ["full-2.txt", "full-3.txt", "uns-2.txt", "uns-3.txt"]


def test_cost_ab_of_the_full_flow_with_a_tiny_load(tmp_path: Path) -> None:
    """``bench.cost_ab`` with the UNS-only flow on side A and the full flow (embedded PostgreSQL) on
    side B runs both and reports their ratio (issue 16's full / UNS-only)."""
    cmd = [
        sys.executable, "-m", "bench.cost_ab", "--a", str(ROOT), "--b", str(ROOT), "--flow-a", "uns",
        "--flow-b", "full",
        "--devices", "2", "--tags", "5", "--rounds", "1", "--warmup", "10", "--seconds", "8",
        "--historian-delay", "0.5",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert (result["flow_a"], result["flow_b"]) == ("uns", "full")
    (row,) = result["loads"]["2"]["rounds"]
    for side in ("a", "b"):
        assert row[side]["points"] > 0 and row[side]["cpu_s_per_10k_points"] is not None, row[side]
        assert any(t["thread"] == "main" for t in row[side]["threads"])
    assert row["b_over_a"] is not None


def test_cost_ab_runs_both_sides_at_once_over_the_same_seconds(tmp_path: Path) -> None:
    """``--concurrent`` starts A and B together and measures both over one window: the time-varying
    noise of a shared machine then falls on both sides alike."""
    cmd = [
        sys.executable, "-m", "bench.cost_ab", "--a", str(ROOT), "--b", str(ROOT), "--concurrent",
        "--devices", "2", "--tags", "5", "--rounds", "2", "--warmup", "2", "--seconds", "4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["concurrent"] is True
    rounds = result["loads"]["2"]["rounds"]
    assert len(rounds) == 2
    for row in rounds:
        a, b = row["a"], row["b"]
        assert a["points"] > 0 and b["points"] > 0, row
        assert abs(a["seconds"] - b["seconds"]) <= 0.05, row
        assert max(a["window"][0], b["window"][0]) < min(a["window"][1], b["window"][1]), row  # overlap
        assert row["b_over_a"] is not None
        assert a["uns_spooled"] == 0 and b["uns_spooled"] == 0, row  # a tiny load: the broker keeps up
    load = result["loads"]["2"]
    assert load["median_b_over_a_unspooled"] == load["median_b_over_a"]
