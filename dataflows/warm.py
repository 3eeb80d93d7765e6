"""The flow's compiled kernels, made ready before the first device is polled.

numba compiles a kernel on its first call (or loads it from its disk cache). Left to the first poll
that needs it, that happens on the worker thread while the devices are being polled: with an empty
cache (a fresh install, an upgrade) the operator chain alone compiles for ~8 s, the windows' kernels
at the first minute's close, and the compiler holds the interpreter lock for stretches of up to
~150 ms, so polls are skipped or time out. Measured (BENCHMARKS.md): 20 skipped polls at 10 devices
when an upgrade's first minute close compiled the windows' kernels.

:func:`warm_kernels` runs every kernel once on a tiny load of the types a flow hands it (the four
operator cores one by one and fused, across a minute's close; the UNS packer; the historian's
newest-row table) before the flow starts, so a flow polls only once its kernels are ready. With a
warm disk cache it costs the loading the first polls would have paid anyway.

>>> warm_kernels() >= 0.0
True
"""

from __future__ import annotations

import logging
import time

import numpy as np

from connectors.historian.latest import LatestRows
from connectors.mqtt.packing import PackTable
from core.batch import PointBatch
from core.tags import TagInfo
from operators.anomaly import AnomalyDetector, RangeCheck, RateCheck, StuckCheck, TagChecks
from operators.chain import OperatorChain
from operators.deadband import Deadband, DeadbandParams
from operators.normalize import NormalizeParams, Normalizer
from operators.window import WindowAggregator

__all__ = ["warm_kernels"]

log = logging.getLogger(__name__)

_S = 1_000_000_000
_TAGS = (1, 2, 3)


def warm_kernels() -> float:
    """Compile (or load) every kernel a flow may call; the seconds it took."""
    started = time.perf_counter()
    _chain()
    _packer()
    _latest()
    seconds = time.perf_counter() - started
    log.debug("compiled kernels ready in %.2f s", seconds)
    return seconds


def _chain() -> None:
    """The four cores through the chain: a device's first poll (each core's own kernel), its next
    polls (the fused kernel) and a minute's close (the cores one by one again)."""
    chain = OperatorChain(
        Normalizer({t: NormalizeParams(scale=0.5, clamp_low=0.0, clamp_high=1e6) for t in _TAGS}),
        Deadband({t: DeadbandParams(absolute=0.1) for t in _TAGS}),
        WindowAggregator([60.0]),
        AnomalyDetector(
            dict.fromkeys(
                _TAGS,
                TagChecks(
                    range=RangeCheck(low=1.0, high=50.0, hysteresis=1.0),
                    stuck=StuckCheck(samples=3),
                    rate=RateCheck(max_per_s=100.0),
                ),
            )
        ),
    )
    t0 = (time.time_ns() // (60 * _S) - 1) * 60 * _S + 57 * _S  # 3 s before a minute's end, in the past
    ids = np.array(_TAGS, np.int64)
    state = None
    for k, row in enumerate([(10.0, 200.0, 7.0), (11.0, 0.0, 7.0), (40.0, 150.0, 7.0), (41.0, 2.0, 9.0)]):
        ts = t0 + k * _S
        poll = PointBatch.from_values("warm", ids, np.array(row), ts_ns=ts)
        state, *_ = chain.process(state, poll, now_ns=ts)


def _packer() -> None:
    """The UNS packer: a plain value and one below 1e-4 (its exact-text pass)."""
    tags = {1: TagInfo(1, "warm", "t", "u", "warm/t")}
    table = PackTable().with_tags(tags)
    for value in (1.5, 1e-5):
        table.pack(PointBatch.from_values("warm", [1], [value], ts_ns=time.time_ns()), False)


def _latest() -> None:
    """The historian's newest-row table (its merge and take kernels)."""
    rows = LatestRows()
    rows.merge(
        np.array([1, 2], np.int64), np.array([7, 8], np.int64), np.array([0.5, 0.1]), np.zeros(2, np.uint8)
    )
    rows.peek()
