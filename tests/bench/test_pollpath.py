"""``bench.pollpath`` end to end with a tiny load, two checkouts (this one twice) and the profile.

No timing assertions: only that each side polled, was measured and the ratios were formed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_pollpath_with_a_tiny_load() -> None:
    cmd = [
        sys.executable, "-m", "bench.pollpath", "--devices", "2", "--tags", "5", "--interval", "0.2",
        "--warmup", "1", "--seconds", "1.5", "--a", ".", "--b", ".", "--profile", "5",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ordered by: internal time" in proc.stderr  # the loop thread's profile
    (entry,) = json.loads(proc.stdout)["loads"].values()
    (row,) = entry["rounds"]
    for side in ("bare", "a", "b"):
        assert row[side]["polls"] > 0 and row[side]["us_per_poll"] > 0, (side, row[side])
    assert row["a"]["points"] > 0 and row["b"]["points"] > 0
    assert row["b_over_a"] > 0 and row["a_over_bare"] > 0
    assert entry["median_b_over_a"] == row["b_over_a"]
