"""Tumbling-window aggregation of point batches, vectorized and framework-free.

One :class:`WindowAggregator` holds the settings; one :class:`WindowState` per device holds the
open buckets. :meth:`WindowAggregator.process` takes a :class:`~core.batch.PointBatch` and returns
the new state, the aggregates of the buckets that closed (:class:`~core.records.AggBatch`, one per
window length) and the late points. The clock is injected (``now_ns``), never read here.

>>> from core.batch import PointBatch
>>> agg = WindowAggregator([60.0])
>>> t0 = 1_700_000_040_000_000_000                      # a minute boundary
>>> b1 = PointBatch.from_values("d", [1, 2], [1.0, 10.0], ts_ns=t0 + 10 * SECOND)
>>> b2 = PointBatch.from_values("d", [1], [3.0], ts_ns=t0 + 40 * SECOND)
>>> state, out, late = agg.process(None, b1, now_ns=t0 + 10 * SECOND)
>>> state, out, late = agg.process(state, b2, now_ns=t0 + 40 * SECOND)
>>> out, len(late)                                       # the minute is still open
([], 0)
>>> b3 = PointBatch.from_values("d", [1], [5.0], ts_ns=t0 + 61 * SECOND)
>>> state, out, late = agg.process(state, b3, now_ns=t0 + 61 * SECOND)
>>> a = out[0]
>>> a.window, a.tag_ids.tolist(), a.count.tolist(), a.min.tolist(), a.max.tolist()
('1m', [1, 2], [2, 1], [1.0, 10.0], [3.0, 10.0])
>>> a.twa.tolist()                      # tag 1: 1.0 for 30 s then 3.0 for 20 s, over 50 s
[1.8, 10.0]

Semantics
---------
* **Buckets** are aligned to the Unix epoch: bucket start = ``ts // window_ns * window_ns``.
* **Quality**: good and uncertain points (code < 128) are aggregated; bad points are excluded and
  counted in ``bad_points``. NaN values (the placeholders of text values) are excluded and counted in
  ``nan_points``.
* **Future timestamps**: a point more than ``max_future_s`` ahead of ``now_ns`` is clamped to
  ``now_ns`` and counted in ``future_clamped``, so one bad device clock cannot push the watermark
  into the future and make every later point late.
* **Watermark and closing**: the device's watermark is the largest (clamped) event time seen, bad
  points included (a poll that failed still shows that time has passed). A bucket closes when
  ``watermark - lateness >= bucket end``. ``closed_ns`` records the frontier: every bucket, of every
  window length, that ends at or before it has been emitted.
* **Late points**: a point whose bucket has already closed *in any window length* is late: it is
  merged into no window at all, counted in ``late_points`` and returned in the late batch. So all
  window lengths aggregate exactly the same points (the 1 s counts of a minute add up to the 1 m
  count). Lateness is judged against the frontier before the batch, so the order of points inside
  one batch never matters.
* **Idle close**: :meth:`WindowAggregator.close_idle` closes by processing time the buckets whose
  ``end + lateness + (idle_close_s or 0) + lag <= now_ns``, where ``lag = max(0, last_seen_ns -
  watermark_ns)`` is how far the device's clock was behind ours at its last batch. Without the lag
  term a device whose clock runs minutes slow would see each bucket closed by the idle timer
  before its data arrived, and all its points would be late.
* **Time-weighted average** (``twa``): step interpolation, "previous value" semantics. Each
  sample's value holds until the tag's next sample, clipped to the bucket; the last sample holds to
  the bucket end. If the tag has an earlier sample from a previous bucket (carried over, at most
  ``tag_ttl_s`` older than the bucket start), its value covers the bucket from its start to the
  first sample and the average is over the whole bucket; otherwise the average starts at the
  first sample's own timestamp. Samples of one tag with equal timestamps are ordered by arrival.
  The twa is exact whenever each batch's samples of a tag lie entirely after (or entirely before)
  the samples already held in that bucket; the order inside a batch does not matter. When a batch
  interleaves with what the bucket already holds (out of order across batches), the exact step
  integral would need the raw samples; the bucket's twa is then estimated (see :func:`merge`) and
  counted in ``twa_approx``. count, sum, min, max, first and last are always exact.
* **Rows**: an aggregate row is emitted for each tag with at least one aggregated sample in the
  bucket; a tag that is silent in a bucket gets no row (even though its carried value covers it).
* **Bounded state**: buckets are discarded when they close; the open ones span at most the
  lateness plus one window (plus ``max_future_s``). The per-tag carried previous sample is dropped
  once it is more than ``tag_ttl_s`` older than the end of the last closed bucket, so tags that
  disappear leave the state. A device's state that has no open buckets and received no data for
  ``tag_ttl_s`` is :meth:`~WindowAggregator.expired` and can be discarded by the runtime.
* **Immutability**: :meth:`~WindowAggregator.process` and :meth:`~WindowAggregator.close_idle`
  never mutate the state or the batch they are given; they return new objects (the arrays of
  untouched buckets are shared). A runtime can therefore snapshot the state without copying it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from core.batch import PointBatch
from core.records import AggBatch
from operators.arrays import sorted_union
from operators.fastinit import EmptyBatches, slot_constructor
from operators.kernels import window_append

SECOND = 1_000_000_000
NO_TIME = -(2**63)
"""Sentinel for "no time yet" (the smallest int64)."""

_UNITS: tuple[tuple[str, int], ...] = (
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
)
_WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_CACHE_MAX_DEVICES = 4096
# Bound once: the fast path calls these a few times per batch.


def window_label(seconds: float) -> str:
    """The short label of a window length, using the largest unit that divides it.

    >>> [window_label(s) for s in (1, 10, 60, 300, 3600, 86400, 90, 0.5)]
    ['1s', '10s', '1m', '5m', '1h', '1d', '90s', '500ms']
    """
    ms = _to_ms(seconds, "window length")
    for unit, size in _UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: every whole millisecond count divides by 1")


def parse_window(text: str) -> float:
    """Seconds of a window label such as ``"5m"``; the inverse of :func:`window_label`.

    >>> parse_window("5m"), parse_window("1h"), parse_window("500ms"), parse_window("1.5s")
    (300.0, 3600.0, 0.5, 1.5)
    >>> parse_window("5 minutes")
    Traceback (most recent call last):
    ...
    ValueError: window '5 minutes' is not a length like '10s', '1m', '5m', '1h', '1d' or '500ms'
    """
    m = _WINDOW_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"window {text!r} is not a length like '10s', '1m', '5m', '1h', '1d' or '500ms'")
    size_ms = dict(_UNITS)[m.group(2)]
    seconds = float(m.group(1)) * size_ms / 1000.0
    _to_ms(seconds, f"window {text!r}")
    return seconds


def _to_ms(seconds: float, what: str) -> int:
    ms = round(float(seconds) * 1000.0)
    if not np.isfinite(seconds) or seconds <= 0 or abs(ms - float(seconds) * 1000.0) > 1e-6:
        raise ValueError(f"{what} must be a positive whole number of milliseconds, got {seconds!r}")
    return int(ms)


# --------------------------------------------------------------------------------------------------
# Accumulators and their merge


@dataclass(frozen=True, slots=True, eq=False)
class Accumulators:
    """Per-tag accumulators of one bucket, columnar, aligned to sorted unique ``tag_ids``.

    ``area`` is the step integral (value x ns) between ``first_ts`` and ``last_ts`` of the samples
    held; the parts before the first sample and after the last one are added when the bucket closes.
    """

    bucket_ns: int
    tag_ids: I64
    count: I64
    sum: F64
    min: F64
    max: F64
    first_ts: I64
    first: F64
    last_ts: I64
    last: F64
    area: F64

    def __len__(self) -> int:
        return len(self.tag_ids)


_ACC_COLUMNS = ("count", "sum", "min", "max", "first_ts", "first", "last_ts", "last", "area")


def merge(a: Accumulators, b: Accumulators) -> Accumulators:
    """Combine two accumulator sets of the same bucket; ``b`` is the one that arrived later.

    count and sum add, min and max combine, ``first`` is the earlier first sample (``a``'s on a
    tie), ``last`` the later last sample (``b``'s on a tie). Tags present on one side only keep that
    side's accumulators. The step integral is exact when ``b``'s samples of a tag come at or after
    ``a``'s, or strictly before them; then the merge is associative (up to float rounding of the
    sums). When they interleave, the integral is estimated from both sides' time-weighted means,
    weighted by their spans, and stretched over the combined span.

    >>> def acc(ts, vals):
    ...     i = np.array([7]); t = np.array([ts[0], ts[-1]]); v = np.array([vals[0], vals[-1]])
    ...     return Accumulators(0, i, np.array([len(vals)]), np.array([float(sum(vals))]),
    ...         np.array([float(min(vals))]), np.array([float(max(vals))]), t[:1], v[:1], t[1:],
    ...         v[1:], np.array([float(sum(x * (t2 - t1) for x, t1, t2 in zip(vals, ts, ts[1:])))]))
    >>> m = merge(acc([0, 10], [1.0, 2.0]), acc([30], [4.0]))
    >>> m.count.tolist(), m.first.tolist(), m.last.tolist(), m.area.tolist()
    ([3], [1.0], [4.0], [50.0])
    """
    return _merge(a, b)[0]


def _merge(a: Accumulators, b: Accumulators) -> tuple[Accumulators, int]:
    """:func:`merge`, also returning how many tags got an estimated (interleaved) integral."""
    if a.bucket_ns != b.bucket_ns:
        raise ValueError(f"cannot merge accumulators of buckets {a.bucket_ns} and {b.bucket_ns}")
    if len(a) == 0:
        return b, 0
    if len(b) == 0:
        return a, 0
    if len(a) == len(b) and np.array_equal(a.tag_ids, b.tag_ids):
        return _merge_aligned(a, b, a.tag_ids)
    tags = sorted_union(a.tag_ids, b.tag_ids)
    ia = np.searchsorted(tags, a.tag_ids)
    ib = np.searchsorted(tags, b.tag_ids)
    in_a = np.zeros(len(tags), dtype=bool)
    in_a[ia] = True
    in_b = np.zeros(len(tags), dtype=bool)
    in_b[ib] = True
    both = in_a & in_b
    # Start from each side's own columns, then overwrite the tags present on both sides.
    cols = {}
    for name in _ACC_COLUMNS:
        col_a = getattr(a, name)
        col = np.empty(len(tags), dtype=col_a.dtype)
        col[ib] = getattr(b, name)
        col[ia] = col_a
        cols[name] = col
    n_est = 0
    if both.any():
        pos = np.flatnonzero(both)
        sub_a = _take(a, np.searchsorted(a.tag_ids, tags[pos]))
        sub_b = _take(b, np.searchsorted(b.tag_ids, tags[pos]))
        merged, n_est = _merge_aligned(sub_a, sub_b, tags[pos])
        for name in _ACC_COLUMNS:
            cols[name][pos] = getattr(merged, name)
    return Accumulators(a.bucket_ns, tags, **cols), n_est


def _take(acc: Accumulators, idx: npt.NDArray[np.intp]) -> Accumulators:
    return Accumulators(acc.bucket_ns, acc.tag_ids[idx], **{n: getattr(acc, n)[idx] for n in _ACC_COLUMNS})


def _merge_aligned(a: Accumulators, b: Accumulators, tags: I64) -> tuple[Accumulators, int]:
    first_b = b.first_ts < a.first_ts
    last_b = b.last_ts >= a.last_ts
    append = a.last_ts <= b.first_ts  # b after a (ties: b arrived later, so it sorts after)
    prepend = b.last_ts < a.first_ts  # b strictly before a
    base = a.area + b.area
    area = np.where(
        append,
        base + a.last * (b.first_ts - a.last_ts),
        np.where(prepend, base + b.last * (a.first_ts - b.last_ts), 0.0),
    )
    interleaved = ~(append | prepend)
    n_est = int(np.count_nonzero(interleaved))
    first_ts = np.where(first_b, b.first_ts, a.first_ts)
    last_ts = np.where(last_b, b.last_ts, a.last_ts)
    if n_est:
        # Both spans are > 0 where the samples interleave; estimate over the combined span.
        span_a = (a.last_ts - a.first_ts).astype(np.float64)
        span_b = (b.last_ts - b.first_ts).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            est = base / (span_a + span_b) * (last_ts - first_ts)
        area = np.where(interleaved, est, area)
    return (
        Accumulators(
            bucket_ns=a.bucket_ns,
            tag_ids=tags,
            count=a.count + b.count,
            sum=a.sum + b.sum,
            min=np.minimum(a.min, b.min),
            max=np.maximum(a.max, b.max),
            first_ts=first_ts,
            first=np.where(first_b, b.first, a.first),
            last_ts=last_ts,
            last=np.where(last_b, b.last, a.last),
            area=area,
        ),
        n_est,
    )


# --------------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True, slots=True, eq=False)
class WindowBuckets:
    """The open buckets of one window length and each tag's carried-over previous sample."""

    window_ns: int
    open: tuple[Accumulators, ...] = ()
    """Open buckets, ordered by start."""
    carry_tag_ids: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    carry_ts_ns: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    carry_values: F64 = field(default_factory=lambda: np.empty(0, np.float64))


@dataclass(frozen=True, slots=True, eq=False)
class WindowState:
    """Window state of one device; small, picklable, never mutated by the aggregator (operations
    return a new one; the fused chain's compiled path updates the arrays of an open bucket it made
    itself in place, until it hands them out: :meth:`operators.chain.OperatorChain.hand_out`)."""

    windows: tuple[WindowBuckets, ...]
    device_id: str = ""
    """Set from the first batch; labels the aggregates of :meth:`WindowAggregator.close_idle`."""
    watermark_ns: int = NO_TIME
    """Largest (clamped) event time seen."""
    closed_ns: int = NO_TIME
    """Every bucket (of every window length) ending at or before this has been emitted."""
    last_seen_ns: int | None = None
    """Processing time (``now_ns``) of the last non-empty batch."""
    late_points: int = 0
    future_clamped: int = 0
    bad_points: int = 0
    nan_points: int = 0
    twa_approx: int = 0
    """Tag-buckets whose twa had to be estimated because batches interleaved in time."""

    @property
    def open_buckets(self) -> int:
        return sum(len(w.open) for w in self.windows)


# The fast path builds these on every batch (see operators.fastinit).
_new_acc = slot_constructor(Accumulators)
_new_buckets = slot_constructor(WindowBuckets)
_new_state = slot_constructor(WindowState)


# --------------------------------------------------------------------------------------------------
# The aggregator


class WindowAggregator:
    """Tumbling-window aggregation over several window lengths at once (see the module docstring).

    :arg windows_s: window lengths in seconds (whole milliseconds, distinct), e.g. ``[1, 60]``.
    :arg lateness_s: how far behind the device's watermark a point may be and still be merged.
    :arg max_future_s: timestamps further ahead of ``now_ns`` are clamped to ``now_ns``.
    :arg idle_close_s: extra processing-time grace before :meth:`close_idle` closes a bucket of a
        device that went quiet; ``None`` means no extra grace.
    :arg tag_ttl_s: how long a tag's previous sample is carried for the twa, and how long a quiet
        device's state is kept (:meth:`expired`).
    """

    def __init__(
        self,
        windows_s: Sequence[float],
        lateness_s: float = 0.0,
        max_future_s: float = 5.0,
        idle_close_s: float | None = None,
        tag_ttl_s: float = 3600.0,
    ) -> None:
        self.windows_s = tuple(float(s) for s in windows_s)
        self.lateness_s = float(lateness_s)
        self.max_future_s = float(max_future_s)
        self.idle_close_s = None if idle_close_s is None else float(idle_close_s)
        self.tag_ttl_s = float(tag_ttl_s)
        if not self.windows_s:
            raise ValueError("`windows_s` must name at least one window length, got none")
        ms = [_to_ms(s, f"`windows_s` entry {s!r}") for s in self.windows_s]
        if len(set(ms)) != len(ms):
            raise ValueError(f"`windows_s` must be distinct, got {list(self.windows_s)!r}")
        for name in ("lateness_s", "max_future_s", "tag_ttl_s"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0 or (name == "tag_ttl_s" and v == 0):
                raise ValueError(f"`{name}` must be {'> 0' if name == 'tag_ttl_s' else '>= 0'}, got {v!r}")
        if self.idle_close_s is not None and not (np.isfinite(self.idle_close_s) and self.idle_close_s >= 0):
            raise ValueError(f"`idle_close_s` must be >= 0 or None, got {idle_close_s!r}")
        self._window_ns = tuple(m * 1_000_000 for m in ms)
        self._labels = tuple(window_label(s) for s in self.windows_s)
        self._lateness_ns = round(self.lateness_s * SECOND)
        self._future_ns = round(self.max_future_s * SECOND)
        self._idle_ns = round((self.idle_close_s or 0.0) * SECOND)
        self._ttl_ns = round(self.tag_ttl_s * SECOND)
        self._empty = EmptyBatches(_CACHE_MAX_DEVICES)

    def __repr__(self) -> str:
        return (
            f"WindowAggregator(windows_s={list(self.windows_s)!r}, lateness_s={self.lateness_s!r}, "
            f"max_future_s={self.max_future_s!r}, idle_close_s={self.idle_close_s!r}, "
            f"tag_ttl_s={self.tag_ttl_s!r})"
        )

    @property
    def labels(self) -> tuple[str, ...]:
        """The window labels, in the order of ``windows_s`` (e.g. ``("1s", "1m")``)."""
        return self._labels

    def initial_state(self) -> WindowState:
        return WindowState(windows=tuple(WindowBuckets(w) for w in self._window_ns))

    def _check(self, state: WindowState | None) -> WindowState:
        if state is None:
            return self.initial_state()
        if tuple(w.window_ns for w in state.windows) != self._window_ns:
            raise ValueError(
                f"state holds windows {[w.window_ns for w in state.windows]} ns, "
                f"this aggregator has {list(self._window_ns)} ns; start from a fresh state"
            )
        return state

    # ---------------------------------------------------------------------------------------------

    def process(
        self, state: WindowState | None, batch: PointBatch, now_ns: int
    ) -> tuple[WindowState, list[AggBatch], PointBatch]:
        """Aggregate one batch of one device.

        :returns: the new state, the closed aggregates (one :class:`AggBatch` per window length that
            closed buckets, several buckets per batch possible) and the late points.
        """
        st = self._check(state)
        n = len(batch)
        if n == 0:
            return st, [], batch
        fast = self._process_fast(st, batch, now_ns)
        if fast is not None:
            return fast
        device = batch.device_id
        ts = batch.ts_ns
        future = ts > now_ns + self._future_ns
        n_future = int(np.count_nonzero(future))
        if n_future:
            ts = np.where(future, np.int64(now_ns), ts)
        values = batch.values
        usable = batch.quality < 128
        n_bad = n - int(np.count_nonzero(usable))
        nan = np.isnan(values)
        n_nan = int(np.count_nonzero(nan & usable))
        if n_nan:
            usable = usable & ~nan
        n_late = 0
        late_batch = None
        if st.closed_ns != NO_TIME:
            end_any = ts // self._window_ns[0] * self._window_ns[0] + self._window_ns[0]
            for w in self._window_ns[1:]:
                end_any = np.minimum(end_any, ts // w * w + w)
            late = usable & (end_any <= st.closed_ns)
            n_late = int(np.count_nonzero(late))
            if n_late:
                late_batch = batch.select(late)
                usable = usable & ~late
        watermark = max(st.watermark_ns, int(ts.max()))

        windows = st.windows
        if usable.any():
            if usable.all():
                u_ts, u_tags, u_vals = ts, batch.tag_ids, values
            else:
                u_ts, u_tags, u_vals = ts[usable], batch.tag_ids[usable], values[usable]
            order = np.lexsort((u_ts, u_tags))  # stable: equal timestamps keep arrival order
            u_ts, u_tags, u_vals = u_ts[order], u_tags[order], u_vals[order]
            new_windows = []
            n_est = 0
            for wb in windows:
                added, k = _add(wb, _segments(u_ts, u_tags, u_vals, wb.window_ns))
                n_est += k
                new_windows.append(added)
            windows = tuple(new_windows)
        else:
            n_est = 0

        threshold = watermark - self._lateness_ns
        st = replace(
            st,
            windows=windows,
            device_id=device,
            watermark_ns=watermark,
            closed_ns=max(st.closed_ns, threshold),
            last_seen_ns=now_ns,
            late_points=st.late_points + n_late,
            future_clamped=st.future_clamped + n_future,
            bad_points=st.bad_points + n_bad,
            nan_points=st.nan_points + n_nan,
            twa_approx=st.twa_approx + n_est,
        )
        st, out, _ = self._close(st, device, threshold)
        return st, out, late_batch if late_batch is not None else PointBatch.empty(device)

    def _process_fast(
        self, st: WindowState, batch: PointBatch, now_ns: int
    ) -> tuple[WindowState, list[AggBatch], PointBatch] | None:
        """The common case of a device poll, or ``None`` when the general path is needed.

        Applies when every point is usable (good or uncertain, not NaN), none is in the future or
        late, all of them fall into one already open bucket per window length (a tag new to it gets
        its row there), each tag occurs once, no timestamp is before the watermark (so every sample
        appends: the twa stays exact) and no bucket closes. Then each window's
        columns are updated in one compiled call (:func:`operators.kernels.window_append`), with
        exactly the arithmetic of :func:`_merge`.
        """
        tags, ts, values, quality = batch.tag_ids, batch.ts_ns, batch.values, batch.quality
        watermark = st.watermark_ns
        closed = st.closed_ns
        lateness = self._lateness_ns
        limit = now_ns + self._future_ns
        t_hi = watermark
        new_windows = []
        for wb, w in zip(st.windows, self._window_ns, strict=True):
            if len(wb.open) != 1:
                return None
            acc = wb.open[0]
            ok, t_hi, ids, ints, floats = window_append(
                acc.tag_ids, acc.bucket_ns, w, tags, ts, values, quality, watermark, closed, lateness, limit,
                acc.count, acc.sum, acc.min, acc.max, acc.first_ts, acc.first, acc.last_ts, acc.last, acc.area,
            )  # fmt: skip
            if not ok:
                return None
            new_windows.append(appended(wb, ids, ints, floats))
        device = batch.device_id
        return self.advanced(st, tuple(new_windows), t_hi, device, now_ns), [], self._empty(device)

    def advanced(
        self, st: WindowState, windows: tuple[WindowBuckets, ...], t_hi: int, device: str, now_ns: int
    ) -> WindowState:
        """``st`` with ``windows`` (:func:`appended`) after a batch whose latest point is at ``t_hi``:
        the rest of a fast path's new state (watermark, closing frontier, last seen)."""
        watermark = max(st.watermark_ns, t_hi)
        threshold = watermark - self._lateness_ns
        closed = st.closed_ns
        return _new_state(
            windows,
            device,
            watermark,
            closed if closed >= threshold else threshold,
            now_ns,
            st.late_points,
            st.future_clamped,
            st.bad_points,
            st.nan_points,
            st.twa_approx,
        )

    def close_idle(self, state: WindowState, now_ns: int) -> tuple[WindowState, list[AggBatch]]:
        """Close, by processing time, the buckets of a quiet device that are due (see the module doc)."""
        st = self._check(state)
        if st.open_buckets == 0:
            return st, []
        threshold = now_ns - self._lateness_ns - self._idle_ns - self._lag(st)
        st, out, closed_end = self._close(st, st.device_id, threshold)
        if closed_end is not None and closed_end > st.closed_ns:
            st = replace(st, closed_ns=closed_end)
        return st, out

    def flush(self, state: WindowState) -> list[AggBatch]:
        """The aggregates of every open bucket, as if they closed now (shutdown, end of input)."""
        st = self._check(state)
        return self._close(st, st.device_id, None)[1]

    def next_deadline(self, state: WindowState) -> int | None:
        """Processing time (ns) at which :meth:`close_idle` will next emit, or ``None``."""
        ends = [wb.open[0].bucket_ns + wb.window_ns for wb in state.windows if wb.open]
        if not ends:
            return None
        return min(ends) + self._lateness_ns + self._idle_ns + self._lag(state)

    def expired(self, state: WindowState, now_ns: int) -> bool:
        """True when the device has no open buckets and sent nothing for ``tag_ttl_s``."""
        for wb in state.windows:  # a plain loop: Bytewax's window step asks after every batch
            if wb.open:
                return False
        return state.last_seen_ns is None or now_ns - state.last_seen_ns >= self._ttl_ns

    def expiry_ns(self, state: WindowState) -> int | None:
        """When a state without open buckets becomes :meth:`expired` (``None`` if it has open ones
        or never saw data: such a state is expired already)."""
        if state.open_buckets or state.last_seen_ns is None:
            return None
        return state.last_seen_ns + self._ttl_ns

    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _lag(state: WindowState) -> int:
        if state.last_seen_ns is None or state.watermark_ns == NO_TIME:
            return 0
        return max(0, state.last_seen_ns - state.watermark_ns)

    def _close(
        self, st: WindowState, device: str, threshold: int | None
    ) -> tuple[WindowState, list[AggBatch], int | None]:
        """Close the buckets ending at or before ``threshold`` (all of them if ``None``)."""
        out: list[AggBatch] = []
        new_windows = []
        closed_end: int | None = None
        for wb, label in zip(st.windows, self._labels, strict=True):
            w = wb.window_ns
            k = len(wb.open)
            if threshold is not None:
                k = 0
                while k < len(wb.open) and wb.open[k].bucket_ns + w <= threshold:
                    k += 1
            if k == 0:
                new_windows.append(wb)
                continue
            c_tags, c_ts, c_vals = wb.carry_tag_ids, wb.carry_ts_ns, wb.carry_values
            parts = []
            for acc in wb.open[:k]:
                twa, (c_tags, c_ts, c_vals) = self._twa(acc, w, c_tags, c_ts, c_vals)
                parts.append((acc, twa))
            closed_end = max(closed_end or NO_TIME, wb.open[k - 1].bucket_ns + w)
            new_windows.append(
                WindowBuckets(w, wb.open[k:], carry_tag_ids=c_tags, carry_ts_ns=c_ts, carry_values=c_vals)
            )
            out.append(_agg_batch(device, label, w, parts))
        if not out:
            return st, out, None
        return replace(st, windows=tuple(new_windows)), out, closed_end

    def _twa(
        self, acc: Accumulators, w: int, c_tags: I64, c_ts: I64, c_vals: F64
    ) -> tuple[F64, tuple[I64, I64, F64]]:
        """The bucket's time-weighted averages, and the carry table updated with its last samples."""
        b, end = acc.bucket_ns, acc.bucket_ns + w
        if len(c_tags):
            idx = np.minimum(np.searchsorted(c_tags, acc.tag_ids), len(c_tags) - 1)
            has = (c_tags[idx] == acc.tag_ids) & (c_ts[idx] >= b - self._ttl_ns)
            before = np.where(has, c_vals[idx] * (acc.first_ts - b), 0.0)
            start = np.where(has, b, acc.first_ts)
        else:
            before = np.zeros(len(acc))
            start = acc.first_ts
        area = before + acc.area + acc.last * (end - acc.last_ts)
        twa = area / (end - start)
        # The bucket's last samples are newer than anything carried for the same tags.
        if len(c_tags) == len(acc) and np.array_equal(c_tags, acc.tag_ids):
            c_ts, c_vals = acc.last_ts, acc.last
        else:
            tags = sorted_union(c_tags, acc.tag_ids)
            ts = np.empty(len(tags), np.int64)
            vals = np.empty(len(tags), np.float64)
            ic = np.searchsorted(tags, c_tags)
            ia = np.searchsorted(tags, acc.tag_ids)
            ts[ic], vals[ic] = c_ts, c_vals
            ts[ia], vals[ia] = acc.last_ts, acc.last
            c_tags, c_ts, c_vals = tags, ts, vals
        keep = c_ts >= end - self._ttl_ns
        if not keep.all():
            c_tags, c_ts, c_vals = c_tags[keep], c_ts[keep], c_vals[keep]
        return twa, (c_tags, c_ts, c_vals)


def appended(wb: WindowBuckets, ids: I64, ints: I64, floats: F64) -> WindowBuckets:
    """``wb`` with its one open bucket replaced by :func:`operators.kernels.window_append`'s result
    (``ids``; ``ints`` rows count, first_ts, last_ts; ``floats`` rows sum, min, max, first, last, area)."""
    # rows by index: a third of the cost of unpacking the 2-D arrays
    acc = _new_acc(
        wb.open[0].bucket_ns,
        ids,
        ints[0],
        floats[0],
        floats[1],
        floats[2],
        ints[1],
        floats[3],
        ints[2],
        floats[4],
        floats[5],
    )
    return _new_buckets(wb.window_ns, (acc,), wb.carry_tag_ids, wb.carry_ts_ns, wb.carry_values)


def accumulate(ts_ns: I64, tag_ids: I64, values: F64, window_ns: int) -> list[Accumulators]:
    """Accumulators of points (in arrival order), one set per bucket of ``window_ns`` they fall in.

    >>> [(a.bucket_ns, a.tag_ids.tolist(), a.area.tolist()) for a in accumulate(
    ...     np.array([5, 1, 12]), np.array([3, 3, 3]), np.array([2.0, 1.0, 7.0]), 10)]
    [(0, [3], [4.0]), (10, [3], [0.0])]
    """
    if len(ts_ns) == 0:
        return []
    order = np.lexsort((ts_ns, tag_ids))
    return _segments(ts_ns[order], tag_ids[order], values[order], window_ns)


def _segments(ts: I64, tags: I64, vals: F64, w: int) -> list[Accumulators]:
    """Accumulators of sorted (by tag, then time) points, one set per bucket they fall in."""
    n = len(ts)
    bucket = ts // w * w
    brk = np.empty(n, dtype=bool)
    brk[0] = True
    np.not_equal(tags[1:], tags[:-1], out=brk[1:])
    brk[1:] |= bucket[1:] != bucket[:-1]
    cols: dict[str, Any]
    if brk.all():
        # The common case of one poll: one sample per tag and bucket, nothing to reduce.
        cols = {
            "count": np.ones(n, np.int64),
            "sum": vals,
            "min": vals,
            "max": vals,
            "first_ts": ts,
            "first": vals,
            "last_ts": ts,
            "last": vals,
            "area": np.zeros(n),
        }
        g_tags, g_bucket = tags, bucket
    else:
        starts = np.flatnonzero(brk)
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1] = n
        contrib = np.zeros(n)
        contrib[:-1] = np.where(brk[1:], 0.0, vals[:-1] * (ts[1:] - ts[:-1]))
        cols = {
            "count": (ends - starts).astype(np.int64),
            "sum": np.add.reduceat(vals, starts),
            "min": np.minimum.reduceat(vals, starts),
            "max": np.maximum.reduceat(vals, starts),
            "first_ts": ts[starts],
            "first": vals[starts],
            "last_ts": ts[ends - 1],
            "last": vals[ends - 1],
            "area": np.add.reduceat(contrib, starts),
        }
        g_tags = tags[starts]
        g_bucket = bucket[starts]
    lo, hi = int(g_bucket.min()), int(g_bucket.max())
    if lo == hi:
        return [Accumulators(lo, g_tags, **cols)]
    out = []
    for b in np.unique(g_bucket):  # a handful of buckets per batch, never one per point
        m = g_bucket == b
        out.append(Accumulators(int(b), g_tags[m], **{k: v[m] for k, v in cols.items()}))
    return out


def _add(wb: WindowBuckets, parts: list[Accumulators]) -> tuple[WindowBuckets, int]:
    """Merge new per-bucket accumulators into a window's open buckets."""
    by_start = {acc.bucket_ns: acc for acc in wb.open}
    n_est = 0
    for part in parts:
        old = by_start.get(part.bucket_ns)
        if old is None:
            by_start[part.bucket_ns] = part
        else:
            by_start[part.bucket_ns], k = _merge(old, part)
            n_est += k
    return replace(wb, open=tuple(by_start[b] for b in sorted(by_start))), n_est


def _agg_batch(device: str, label: str, w: int, parts: list[tuple[Accumulators, F64]]) -> AggBatch:
    def cat(name: str) -> Any:
        cols = [getattr(acc, name) for acc, _ in parts]
        return cols[0] if len(cols) == 1 else np.concatenate(cols)

    return AggBatch(
        device_id=device,
        window=label,
        window_ns=w,
        bucket_ns=np.concatenate([np.full(len(acc), acc.bucket_ns, np.int64) for acc, _ in parts]),
        tag_ids=cat("tag_ids"),
        count=cat("count"),
        sum=cat("sum"),
        min=cat("min"),
        max=cat("max"),
        first=cat("first"),
        last=cat("last"),
        twa=np.concatenate([twa for _, twa in parts]),
    )
