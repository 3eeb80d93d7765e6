"""The C allocator of a long-running flow process: keep its RSS close to the memory it really uses.

Measured in the soak (``python -m bench.chaos --scenarios soak``, BENCHMARKS.md): after a broker
outage the flow's RSS stepped up ~20 MB and stayed there, while glibc's live heap (``mallinfo2``)
was flat — the step was freed memory glibc kept: the replay's large buffers (1 MiB packed MQTT
blobs, multi-MiB spool read windows, COPY buffers). glibc serves a request above its mmap threshold
with its own mapping and unmaps it when freed, but each such free raises the threshold (up to
32 MiB), so from then on those buffers come from the heap and their pages stay in the process.

:func:`tune_malloc` (called by every flow process, :func:`dataflows.telemetry.tune_interpreter`)
pins the threshold (and the trim threshold), so large buffers keep going back to the system; a
no-op where glibc is not the allocator. Measured: with it the soak's RSS stayed within the first
flap's level (glibc's kept free memory ~4 MB instead of ~25 MB); ``malloc_trim`` after each replay
without it did not help (BENCHMARKS.md, "Store and forward").
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

__all__ = ["malloc_stats", "tune_malloc"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024
"""glibc's default start value, pinned: buffers this large or larger are mapped on their own."""


def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):  # musl and others: no mallopt
        return None
    return libc


_LIBC = _glibc()


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap and trim thresholds (setting them turns the dynamic adjustment off).

    Returns whether it was applied. An environment that already sets ``MALLOC_MMAP_THRESHOLD_`` is
    left alone (an operator's choice wins).
    """
    if _LIBC is None or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    ok = bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    ok = bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)) and ok
    if not ok:
        log.debug("mallopt refused the thresholds; glibc's defaults stay")
    return ok


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]  # fmt: skip


def malloc_stats() -> dict[str, int]:
    """glibc's heap, to tell live memory from memory freed but kept by the allocator (RSS growth).

    ``in_use``: bytes in allocated chunks (arenas) plus mmapped chunks; ``free_kept``: freed bytes the
    arenas hold on to; ``mmapped``: large chunks glibc mapped on their own (returned when freed).
    Empty where glibc's ``mallinfo2`` is missing.
    """
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):
        return {}
    _LIBC.mallinfo2.restype = _MallInfo2
    m = _LIBC.mallinfo2()
    return {
        "arena_bytes": int(m.arena),
        "in_use": int(m.uordblks + m.hblkhd),
        "free_kept": int(m.fordblks),
        "mmapped": int(m.hblkhd),
        "python_blocks": sys.getallocatedblocks(),
    }
