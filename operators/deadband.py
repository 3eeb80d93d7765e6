"""Deadband with heartbeat: publish a tag's point only when it says something new.

A point of a tag with :class:`DeadbandParams` is published when any of these holds:

- it is the tag's first point (no published value yet);
- its quality code differs from the last published one;
- its value moved *strictly more* than the band from the last published value;
- its value became NaN or stopped being NaN;
- at least ``heartbeat_s`` seconds (event time: the points' own timestamps) passed since the
  tag's last publication, so a steady value is republished now and then.

Everything else is dropped. The state (last published value, timestamp and quality per tag)
changes only when a point is published, so the published value never drifts more than the band
away from the real one. Tags without parameters, and points carrying a string in the batch's
``text`` side channel, are always published.

>>> from core.batch import PointBatch
>>> db = Deadband({1: DeadbandParams(absolute=0.5, heartbeat_s=10.0)})
>>> state = DeadbandState.empty()
>>> s = 1_000_000_000
>>> for t, v in [(0, 20.0), (1, 20.3), (2, 20.6), (3, 20.9), (13, 20.9)]:
...     state, out = db.process(state, PointBatch.from_values("oven", [1], [v], ts_ns=t * s))
...     print(t, out.values.tolist())
0 [20.0]
1 []
2 [20.6]
3 []
13 [20.9]

The clock is the data: heartbeats are only checked when a point arrives, never against the wall
clock, so a device that sends nothing publishes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from core.batch import PointBatch
from operators.fastinit import EmptyBatches, slot_constructor
from operators.kernels import deadband_fast

__all__ = ["Deadband", "DeadbandParams", "DeadbandState"]

_NO_HEARTBEAT = np.iinfo(np.int64).max
_CACHE_MAX_DEVICES = 4096

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_B = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class DeadbandParams:
    """One tag's deadband.

    ``absolute`` is a band in engineering units; ``percent`` a band in percent of ``span`` (e.g.
    ``clamp_high - clamp_low``). When both are given the **smaller** band applies: the published
    value then never drifts more than either promises. When neither is given the band is 0 (every
    change is published, a steady value only on heartbeat). ``heartbeat_s`` is the longest silence
    after which a steady value is published again (``None``: never).

    >>> DeadbandParams(absolute=0.5, percent=1.0, span=20.0).band(tag_id=7)
    0.2
    >>> DeadbandParams(heartbeat_s=0)
    Traceback (most recent call last):
    ...
    ValueError: `heartbeat_s` must be > 0, got 0
    """

    absolute: float | None = None
    percent: float | None = None
    span: float | None = None
    heartbeat_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("absolute", "percent"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if self.heartbeat_s is not None and not (math.isfinite(self.heartbeat_s) and self.heartbeat_s > 0):
            raise ValueError(f"`heartbeat_s` must be > 0, got {self.heartbeat_s!r}")

    def band(self, tag_id: int | None = None) -> float:
        """The band in engineering units; ``ValueError`` naming the tag if ``percent`` lacks a span."""
        bands: list[float] = []
        if self.absolute is not None:
            bands.append(self.absolute)
        if self.percent is not None:
            if self.span is None or not (math.isfinite(self.span) and self.span > 0):
                raise ValueError(
                    f"deadband of tag {tag_id}: `percent` ({self.percent!r}) needs a positive `span`, "
                    f"got {self.span!r}"
                )
            bands.append(self.percent / 100.0 * self.span)
        return min(bands) if bands else 0.0

    def heartbeat_ns(self) -> int | None:
        return None if self.heartbeat_s is None else round(self.heartbeat_s * 1e9)


@dataclass(frozen=True, slots=True, eq=False)
class DeadbandState:
    """One device's deadband memory: per tag, the last *published* value, time and quality.

    Columns are aligned to ``tag_ids`` (sorted, unique). Only tags with a deadband that have
    published at least once are present. :meth:`Deadband.process` never modifies a state's arrays
    (it returns a new state), so a state can be handed to Bytewax's snapshot without a copy. (The
    fused chain's compiled path updates the arrays of states it made itself in place, until it hands
    them out: :meth:`operators.chain.OperatorChain.hand_out`.)
    """

    tag_ids: _I64
    value: _F64
    ts_ns: _I64
    quality: _U8

    @classmethod
    def empty(cls) -> DeadbandState:
        return cls(
            tag_ids=np.empty(0, np.int64),
            value=np.empty(0, np.float64),
            ts_ns=np.empty(0, np.int64),
            quality=np.empty(0, np.uint8),
        )

    def __len__(self) -> int:
        return len(self.tag_ids)

    def last(self, tag_id: int) -> tuple[float, int, int] | None:
        """``(value, ts_ns, quality)`` last published for ``tag_id``, or ``None``.

        >>> DeadbandState.empty().last(1) is None
        True
        """
        i = int(np.searchsorted(self.tag_ids, tag_id))
        if i < len(self.tag_ids) and self.tag_ids[i] == tag_id:
            return float(self.value[i]), int(self.ts_ns[i]), int(self.quality[i])
        return None


_new_state = slot_constructor(DeadbandState)
"""``DeadbandState(...)`` without the frozen dataclass's ``__init__`` (the fast path's, every poll)."""


@dataclass(frozen=True, slots=True)
class _Aligned:
    """Per-point parameters for one tag_ids array (the last one seen for a device)."""

    tag_ids: _I64
    configured: _B
    any_configured: bool
    all_configured: bool
    band: _F64
    heartbeat_ns: _I64
    occurrence: _I64 | None
    """Index of each point among the batch's points of the same tag; ``None`` if all unique."""
    rounds: int


@dataclass(frozen=True, slots=True)
class _StatePos:
    """Where a batch's tags sit in a state's tag_ids (cached while neither changes)."""

    state_ids: _I64
    batch_ids: _I64
    pos: npt.NDArray[np.intp]
    found: _B
    all_found: bool


class Deadband:
    """Deadband filter over batches; ``params`` maps tag ids to :class:`DeadbandParams`.

    The core is framework-free and holds no per-device data: the caller keeps one
    :class:`DeadbandState` per device and threads it through :meth:`process`. Alignment of a
    batch's tag ids to the parameters and to the state is cached per device (derived data, dropped
    on pickling).
    """

    def __init__(self, params: Mapping[int, DeadbandParams]) -> None:
        self.params: Mapping[int, DeadbandParams] = MappingProxyType(dict(params))
        self._compile()

    def _compile(self) -> None:
        ids = sorted(self.params)
        self._ids = np.array(ids, dtype=np.int64)
        self._band = np.array([self.params[t].band(tag_id=t) for t in ids], dtype=np.float64)
        hbs = [self.params[t].heartbeat_ns() for t in ids]
        self._hb = np.array([_NO_HEARTBEAT if h is None else h for h in hbs], dtype=np.int64)
        self._aligned: dict[str, tuple[_I64, _Aligned]] = {}
        self._state_pos: dict[str, _StatePos] = {}
        self._empty = EmptyBatches(_CACHE_MAX_DEVICES)

    def __getstate__(self) -> dict[str, Any]:
        return {"params": dict(self.params)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params = MappingProxyType(dict(state["params"]))
        self._compile()

    def __repr__(self) -> str:
        return f"Deadband(<{len(self.params)} tags>)"

    @staticmethod
    def initial_state() -> DeadbandState:
        return DeadbandState.empty()

    # -- alignment ------------------------------------------------------------------------------

    def _align(self, device_id: str, tag_ids: _I64) -> _Aligned:
        hit = self._aligned.get(device_id)
        if hit is not None:
            seen, cached = hit
            if seen is tag_ids:  # the very array of the last batch (batches are never mutated)
                return cached
            if cached.tag_ids.shape == tag_ids.shape and np.array_equal(cached.tag_ids, tag_ids):
                self._aligned[device_id] = (tag_ids, cached)
                return cached
        n = len(tag_ids)
        n_params = len(self._ids)
        if n_params:
            idx = np.searchsorted(self._ids, tag_ids)
            np.minimum(idx, n_params - 1, out=idx)
            configured = self._ids[idx] == tag_ids
            band = self._band[idx]
            hb = self._hb[idx]
        else:
            configured = np.zeros(n, dtype=bool)
            band = np.zeros(n)
            hb = np.full(n, _NO_HEARTBEAT, dtype=np.int64)
        occurrence, rounds = _occurrences(tag_ids)
        aligned = _Aligned(
            tag_ids=tag_ids.copy(),
            configured=configured,
            any_configured=bool(configured.any()),
            all_configured=bool(configured.all()),
            band=band,
            heartbeat_ns=hb,
            occurrence=occurrence,
            rounds=rounds,
        )
        if len(self._aligned) >= _CACHE_MAX_DEVICES:
            self._aligned.clear()
            self._state_pos.clear()
        self._aligned[device_id] = (tag_ids, aligned)
        return aligned

    # -- processing -----------------------------------------------------------------------------

    def process(self, state: DeadbandState, batch: PointBatch) -> tuple[DeadbandState, PointBatch]:
        """The device's new state and the points of ``batch`` to publish (in their order).

        Neither ``state`` nor ``batch`` is modified. A tag that occurs several times in one batch
        is handled point by point in order, exactly as if the points came in separate batches.
        """
        if len(batch) == 0:
            return state, batch
        al = self._align(batch.device_id, batch.tag_ids)
        if not al.any_configured:
            return state, batch
        if al.occurrence is None and al.all_configured and not batch.text:
            fast = self._process_fast(state, batch, al)
            if fast is not None:
                return fast
        configured = al.configured
        if batch.text:
            configured = configured.copy()
            configured[np.fromiter(batch.text.keys(), dtype=np.intp, count=len(batch.text))] = False

        if al.occurrence is None:
            state, publish = self._round(
                state,
                device_id=batch.device_id,
                tag_ids=al.tag_ids,
                values=batch.values,
                quality=batch.quality,
                ts_ns=batch.ts_ns,
                configured=configured,
                band=al.band,
                heartbeat_ns=al.heartbeat_ns,
                cache=True,
            )
        else:
            publish = np.empty(len(batch), dtype=bool)
            for r in range(al.rounds):
                sel = np.flatnonzero(al.occurrence == r)
                state, publish[sel] = self._round(
                    state,
                    device_id=batch.device_id,
                    tag_ids=al.tag_ids[sel],
                    values=batch.values[sel],
                    quality=batch.quality[sel],
                    ts_ns=batch.ts_ns[sel],
                    configured=configured[sel],
                    band=al.band[sel],
                    heartbeat_ns=al.heartbeat_ns[sel],
                    cache=False,
                )
        if publish.all():
            return state, batch
        return state, batch.select(publish)

    def _process_fast(
        self, state: DeadbandState, batch: PointBatch, al: _Aligned
    ) -> tuple[DeadbandState, PointBatch] | None:
        """The common case: unique, configured tags that all have published before, or a device's
        first batch (``None`` otherwise). The same comparisons as :meth:`_round`, without the masks
        that are all-true, in one compiled call (:func:`operators.kernels.deadband_fast`) that also
        gathers the passing points (what ``batch.select`` would)."""
        if not len(state):  # the device's first batch: every point publishes and makes the state
            order = np.argsort(al.tag_ids)
            tags, values, ts, quality = (
                al.tag_ids[order],
                batch.values[order],
                batch.ts_ns[order],
                batch.quality[order],
            )
            return _new_state(tags, values, ts, quality), batch
        device = batch.device_id
        sp = self._state_pos.get(device)
        if sp is None or sp.state_ids is not state.tag_ids or sp.batch_ids is not al.tag_ids:
            self._positions(state, device, al.tag_ids, True)
            sp = self._state_pos[device]
        if not sp.all_found:
            return None
        k, value, ts, quality, out_ts, out_tags, out_values, out_quality = deadband_fast(
            sp.pos, batch.tag_ids, batch.values, batch.quality, batch.ts_ns, al.band, al.heartbeat_ns,
            state.value, state.ts_ns, state.quality,
        )  # fmt: skip
        if k == 0:
            return state, self._empty(device)
        new = _new_state(state.tag_ids, value, ts, quality)
        if len(out_ts) == 0:  # every point passes: the batch itself
            return new, batch
        return new, PointBatch(device, out_ts, out_tags, out_values, out_quality)

    def _positions(
        self, state: DeadbandState, device_id: str, tag_ids: _I64, cache: bool
    ) -> tuple[npt.NDArray[np.intp], _B]:
        sids = state.tag_ids
        if cache:
            hit = self._state_pos.get(device_id)
            if hit is not None and hit.state_ids is sids and hit.batch_ids is tag_ids:
                return hit.pos, hit.found
        if len(sids) == 0:
            pos = np.zeros(len(tag_ids), dtype=np.intp)
            found = np.zeros(len(tag_ids), dtype=bool)
        else:
            pos = np.searchsorted(sids, tag_ids)
            np.minimum(pos, len(sids) - 1, out=pos)
            found = sids[pos] == tag_ids
        if cache:
            # ``tag_ids`` is the aligned cache's private copy, so identity means equality here.
            self._state_pos[device_id] = _StatePos(
                state_ids=sids, batch_ids=tag_ids, pos=pos, found=found, all_found=bool(found.all())
            )
        return pos, found

    def _round(
        self,
        state: DeadbandState,
        *,
        device_id: str,
        tag_ids: _I64,
        values: _F64,
        quality: _U8,
        ts_ns: _I64,
        configured: _B,
        band: _F64,
        heartbeat_ns: _I64,
        cache: bool,
    ) -> tuple[DeadbandState, _B]:
        """One pass in which every tag occurs at most once."""
        pos, in_state = self._positions(state, device_id, tag_ids, cache)
        known = in_state & configured
        last_v = state.value[pos] if len(state) else np.full(len(tag_ids), np.nan)
        last_ts = state.ts_ns[pos] if len(state) else np.zeros(len(tag_ids), dtype=np.int64)
        last_q = state.quality[pos] if len(state) else np.zeros(len(tag_ids), dtype=np.uint8)
        with np.errstate(invalid="ignore", over="ignore"):
            moved = np.abs(values - last_v) > band
            due = (ts_ns - last_ts) >= heartbeat_ns
        publish = ~known | moved | (quality != last_q) | (np.isnan(values) != np.isnan(last_v)) | due
        update = publish & configured
        if not update.any():
            return state, publish

        new = update & ~known
        if new.any():
            new_ids = tag_ids[new]
            merged = np.concatenate([state.tag_ids, new_ids])
            order = np.argsort(merged, kind="stable")
            tags_out = merged[order]
            value_out = np.concatenate([state.value, values[new]])[order]
            ts_out = np.concatenate([state.ts_ns, ts_ns[new]])[order]
            quality_out = np.concatenate([state.quality, quality[new]])[order]
            at = np.searchsorted(tags_out, tag_ids[update])
        else:
            tags_out = state.tag_ids  # unchanged object: keeps the position cache valid
            value_out = state.value.copy()
            ts_out = state.ts_ns.copy()
            quality_out = state.quality.copy()
            at = pos[update]
        value_out[at] = values[update]
        ts_out[at] = ts_ns[update]
        quality_out[at] = quality[update]
        return DeadbandState(tags_out, value_out, ts_out, quality_out), publish


def _occurrences(tag_ids: _I64) -> tuple[_I64 | None, int]:
    """For each point, how many earlier points of the batch have its tag; ``None`` if all unique.

    >>> occ, rounds = _occurrences(np.array([5, 3, 5, 5, 3]))
    >>> occ.tolist(), rounds
    ([0, 0, 1, 2, 1], 3)
    >>> _occurrences(np.array([1, 2]))
    (None, 1)
    """
    n = len(tag_ids)
    if n < 2:
        return None, 1
    order = np.argsort(tag_ids, kind="stable")
    ordered = tag_ids[order]
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    if starts.all():
        return None, 1
    index = np.arange(n)
    group_start = np.maximum.accumulate(np.where(starts, index, 0))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = index - group_start
    return occurrence, int(occurrence.max()) + 1
