"""Naive per-point references and hypothesis strategies shared by the operator tests.

The references loop over points in plain Python: slow and obviously right, the yardstick the
vectorized cores are compared against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

from core.batch import PointBatch
from core.quality import Quality
from operators.deadband import DeadbandParams
from operators.normalize import NormalizeParams

TAG_POOL = (1, 2, 3, 4, 5, 2**62 + 7)
"""Tag ids the strategies draw from (one large, to catch int64 mishandling)."""

QUALITIES = (0, 0, 0, 0, 1, int(Quality.UNCERTAIN), int(Quality.CLAMPED), int(Quality.COMM_ERROR), 131)


def frozen(batch: PointBatch) -> PointBatch:
    """The same batch with read-only columns, so any in-place write raises."""
    for column in (batch.ts_ns, batch.tag_ids, batch.values, batch.quality):
        column.flags.writeable = False
    return batch


def columns(batch: PointBatch) -> tuple[list[Any], ...]:
    return (
        batch.ts_ns.tolist(),
        batch.tag_ids.tolist(),
        batch.values.tolist(),
        batch.quality.tolist(),
    )


def copy_of(batch: PointBatch) -> PointBatch:
    """A deep copy of the columns, to check later that ``batch`` was not modified."""
    return PointBatch(
        device_id=batch.device_id,
        ts_ns=batch.ts_ns.copy(),
        tag_ids=batch.tag_ids.copy(),
        values=batch.values.copy(),
        quality=batch.quality.copy(),
        text=dict(batch.text) if batch.text is not None else None,
    )


def same_batch(a: PointBatch, b: PointBatch) -> bool:
    """Column-wise equality, NaN equal to NaN."""
    return (
        a.device_id == b.device_id
        and np.array_equal(a.ts_ns, b.ts_ns)
        and np.array_equal(a.tag_ids, b.tag_ids)
        and np.array_equal(a.values, b.values, equal_nan=True)
        and np.array_equal(a.quality, b.quality)
    )


# -- normalize -------------------------------------------------------------------------------------


def naive_normalize(
    params: Mapping[int, NormalizeParams], batch: PointBatch
) -> tuple[list[float], list[int]]:
    values: list[float] = []
    quality: list[int] = []
    text = batch.text or {}
    for i in range(len(batch)):
        tag = int(batch.tag_ids[i])
        raw = float(batch.values[i])
        q = int(batch.quality[i])
        p = params.get(tag)
        if p is None or q >= 128 or i in text:
            values.append(raw)
            quality.append(q)
            continue
        gain, bias = p.gain_bias
        y = raw * gain + bias
        if not math.isfinite(y):
            values.append(y)
            quality.append(int(Quality.OUT_OF_RANGE))
            continue
        clamped = y
        if p.clamp_low is not None and clamped < p.clamp_low:
            clamped = p.clamp_low
        if p.clamp_high is not None and clamped > p.clamp_high:
            clamped = p.clamp_high
        if clamped != y and q < 64:
            q = int(Quality.CLAMPED)
        values.append(clamped)
        quality.append(q)
    return values, quality


# -- deadband --------------------------------------------------------------------------------------


class NaiveDeadband:
    """Point-by-point deadband: the specification in a dozen lines."""

    def __init__(self, params: Mapping[int, DeadbandParams]) -> None:
        self.params = params
        self.last: dict[int, tuple[float, int, int]] = {}

    def process(self, batch: PointBatch) -> list[bool]:
        publish: list[bool] = []
        text = batch.text or {}
        for i in range(len(batch)):
            tag = int(batch.tag_ids[i])
            v = float(batch.values[i])
            ts = int(batch.ts_ns[i])
            q = int(batch.quality[i])
            p = self.params.get(tag)
            if p is None or i in text:
                publish.append(True)
                continue
            last = self.last.get(tag)
            hb = p.heartbeat_ns()
            if last is None:
                out = True
            else:
                lv, lts, lq = last
                out = (
                    q != lq
                    or math.isnan(v) != math.isnan(lv)
                    or abs(v - lv) > p.band(tag)
                    or (hb is not None and ts - lts >= hb)
                )
            if out:
                self.last[tag] = (v, ts, q)
            publish.append(out)
        return publish


def published_mask(batch: PointBatch, out: PointBatch) -> list[bool]:
    """Which points of ``batch`` are in ``out`` (an in-order subsequence of it)."""
    want = list(zip(*columns(out), strict=True))
    got = list(zip(*columns(batch), strict=True))
    mask: list[bool] = []
    j = 0
    for point in got:
        if j < len(want) and _same_point(point, want[j]):
            mask.append(True)
            j += 1
        else:
            mask.append(False)
    assert j == len(want), "output is not an in-order subsequence of the input"
    return mask


def _same_point(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(a, b, strict=True)
    )


# -- strategies ------------------------------------------------------------------------------------

values_st = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0, 2.0, 10.0, float("nan")]),
    st.integers(-40, 40).map(lambda i: i / 4),
    st.floats(-1e6, 1e6, allow_nan=False),
)


@st.composite
def batch_sequences(
    draw: st.DrawFn, *, device_id: str = "dev", max_batches: int = 8, max_points: int = 12
) -> list[PointBatch]:
    """Batches of one device with increasing timestamps, duplicate tags and changing tag sets."""
    n_batches = draw(st.integers(1, max_batches))
    ts = draw(st.integers(0, 10**12))
    batches: list[PointBatch] = []
    for _ in range(n_batches):
        n = draw(st.integers(0, max_points))
        tags = draw(st.lists(st.sampled_from(TAG_POOL), min_size=n, max_size=n))
        vals = draw(st.lists(values_st, min_size=n, max_size=n))
        quals = draw(st.lists(st.sampled_from(QUALITIES), min_size=n, max_size=n))
        stamps = []
        for _ in range(n):
            ts += draw(st.sampled_from([0, 1, 10**8, 10**9, 3 * 10**9, 10**10]))
            stamps.append(ts)
        batches.append(
            PointBatch.from_values(
                device_id, tags, vals, ts_ns=np.array(stamps, dtype=np.int64), quality=quals
            )
        )
    return batches


deadband_params_st = st.builds(
    DeadbandParams,
    absolute=st.one_of(st.none(), st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])),
    percent=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 10.0])),
    span=st.just(20.0),
    heartbeat_s=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 5.0, 30.0])),
)
deadband_config_st = st.dictionaries(st.sampled_from(TAG_POOL), deadband_params_st, max_size=len(TAG_POOL))

_limit = st.one_of(st.none(), st.integers(-100, 100).map(float))


@st.composite
def normalize_params_st(draw: st.DrawFn) -> NormalizeParams:
    low, high = draw(_limit), draw(_limit)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return NormalizeParams(
        scale=draw(st.sampled_from([1.0, 0.1, 0.01, -2.0, 1e300])),
        offset=draw(st.sampled_from([0.0, -5.0, 273.15])),
        convert=draw(st.sampled_from([(1.0, 0.0), (1.8, 32.0), (100.0, 0.0)])),
        clamp_low=low,
        clamp_high=high,
    )


normalize_config_st = st.dictionaries(
    st.sampled_from(TAG_POOL), normalize_params_st(), max_size=len(TAG_POOL)
)
