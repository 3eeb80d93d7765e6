"""Issue 11 (soak RSS): large buffers go back to the system after an outage's replay.

Runs in a child process: the allocator's thresholds are per process, and the test must start from
glibc's defaults (pytest's own process has done any amount of allocating already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.memory import _LIBC

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import ctypes, json, sys
import core.memory as m
if sys.argv[1] == "tuned":
    m.tune_malloc()
# a replay's big buffer, freed: glibc's dynamic threshold rises to its size
big = bytearray(8 << 20)
del big
before = m.malloc_stats()["mmapped"]
blob = bytearray(1 << 20)  # the next replay's 1 MiB publish blob
after = m.malloc_stats()["mmapped"]
print(json.dumps({"mapped_on_its_own": after - before >= 1 << 20}))
"""


@pytest.mark.skipif(_LIBC is None, reason="glibc's mallopt is not available here")
@pytest.mark.parametrize(("mode", "expected"), [("default", False), ("tuned", True)])
def test_large_buffers_stay_mapped_on_their_own_after_tune_malloc(mode: str, expected: bool) -> None:
    """glibc's default keeps them in the heap after one large free (the soak's RSS step); tuned not."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"mapped_on_its_own": expected}
