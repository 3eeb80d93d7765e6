"""Swinging-door trending (SDT) compression per tag, an alternative to a deadband.

For each tag with :class:`SwingingDoorParams` the state holds the last *archived* point ``A``, the
last received point not yet archived (the *held* point ``P``) and the two door slopes ``lo <= hi``:
the slopes of lines from ``A`` that pass within ``±deviation`` of every point received since ``A``.
A new point ``N``:

1. **breaks** the segment when its quality differs from ``A``'s, when ``N`` or ``A`` is NaN, or when
   its timestamp is not after the tag's last point (out of order): ``P`` (if any) and ``N`` are
   both archived;
2. otherwise, if the line ``A -> N`` passes between the doors (its slope is in ``[lo, hi]``), ``N``
   becomes the held point and the doors narrow with ``N``'s own ``±deviation`` window;
3. otherwise ``P`` is archived and the segment restarts at ``P`` (doors from ``P`` through ``N``);
4. finally, if ``max_interval_s`` is set and ``N`` is at least that long after the (possibly new)
   archived point, ``N`` is archived too (the heartbeat).

Step 2 tests the line to the *real* new point, not only whether the doors are still open (the
classic test ``lo <= hi``). The classic test only promises that *some* line from ``A`` fits;
archiving the real point ``P`` can then deviate by up to twice the deviation. With the end-point
test, linear interpolation between consecutive archived points stays within ``deviation`` of
every input point (the compression error bound), and ``lo > hi`` still means the next point
archives ``P``.

Archived points are real input points, emitted unchanged, in input order (an archived held point
comes right before the point that caused it). Tags without parameters, and points with a string
in the batch's ``text`` channel, pass through. :meth:`SwingingDoor.flush` archives the held points
(end of stream); a tag that falls silent keeps its held point until then.

>>> from core.batch import PointBatch
>>> sdt = SwingingDoor({1: SwingingDoorParams(deviation=0.5)})
>>> state = sdt.initial_state()
>>> out = []
>>> for t, v in enumerate([0.0, 1.0, 2.0, 3.1, 3.0, 3.0, 3.0]):
...     state, b = sdt.process(state, PointBatch.from_values("p", [1], [v], ts_ns=t * 10**9))
...     out += b.values.tolist()
>>> state, b = sdt.flush(state, "p")
>>> out + b.values.tolist()
[0.0, 3.1, 3.0]
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

__all__ = ["SwingingDoor", "SwingingDoorParams", "SwingingDoorState"]

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_B = npt.NDArray[np.bool_]

_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class SwingingDoorParams:
    """One tag's compression: ``deviation`` (> 0, engineering units) and an optional heartbeat.

    >>> SwingingDoorParams(deviation=0)
    Traceback (most recent call last):
    ...
    ValueError: `deviation` must be a finite number > 0, got 0
    """

    deviation: float
    max_interval_s: float | None = None

    def __post_init__(self) -> None:
        if not (
            isinstance(self.deviation, int | float) and math.isfinite(self.deviation) and self.deviation > 0
        ):
            raise ValueError(f"`deviation` must be a finite number > 0, got {self.deviation!r}")
        m = self.max_interval_s
        if m is not None and not (math.isfinite(m) and m > 0):
            raise ValueError(f"`max_interval_s` must be > 0, got {m!r}")


@dataclass(frozen=True, slots=True, eq=False)
class SwingingDoorState:
    """Per-tag SDT memory of one device, aligned to sorted ``tag_ids``. Never modified by the core.

    ``arch_*``: the last archived point; ``held*``: the last point not archived (``held`` false:
    none); ``lo``/``hi``: the door slopes in units per second (``-inf``/``inf`` with no held point).
    """

    tag_ids: _I64
    arch_ts: _I64
    arch_value: _F64
    arch_quality: _U8
    held: _B
    held_ts: _I64
    held_value: _F64
    held_quality: _U8
    lo: _F64
    hi: _F64

    @classmethod
    def empty(cls) -> SwingingDoorState:
        return cls._blank(np.empty(0, np.int64))

    @classmethod
    def _blank(cls, tag_ids: _I64) -> SwingingDoorState:
        n = len(tag_ids)
        return cls(
            tag_ids=tag_ids,
            arch_ts=np.full(n, np.iinfo(np.int64).min, np.int64),
            arch_value=np.full(n, np.nan),
            arch_quality=np.zeros(n, np.uint8),
            held=np.zeros(n, bool),
            held_ts=np.zeros(n, np.int64),
            held_value=np.full(n, np.nan),
            held_quality=np.zeros(n, np.uint8),
            lo=np.full(n, -np.inf),
            hi=np.full(n, np.inf),
        )

    def __len__(self) -> int:
        return len(self.tag_ids)

    def _columns(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


_MIN_TS = np.iinfo(np.int64).min


class SwingingDoor:
    """SDT over batches; ``params`` maps tag ids to :class:`SwingingDoorParams`.

    Framework-free: the caller keeps one :class:`SwingingDoorState` per device. Each tag is
    handled once per *round*; a batch in which a tag occurs k times takes k rounds (all tags of a
    round at once, numpy arrays; no loop over points).
    """

    def __init__(self, params: Mapping[int, SwingingDoorParams]) -> None:
        self.params: Mapping[int, SwingingDoorParams] = MappingProxyType(dict(params))
        self._compile()

    def _compile(self) -> None:
        ids = sorted(self.params)
        self._ids = np.array(ids, dtype=np.int64)
        self._dev = np.array([self.params[t].deviation for t in ids], dtype=np.float64)
        self._max_ns = np.array(
            [_NEVER if (m := self.params[t].max_interval_s) is None else round(m * 1e9) for t in ids],
            dtype=np.int64,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"params": dict(self.params)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params = MappingProxyType(dict(state["params"]))
        self._compile()

    def __repr__(self) -> str:
        return f"SwingingDoor(<{len(self.params)} tags>)"

    @staticmethod
    def initial_state() -> SwingingDoorState:
        return SwingingDoorState.empty()

    def process(self, state: SwingingDoorState, batch: PointBatch) -> tuple[SwingingDoorState, PointBatch]:
        """The new state and the points of ``batch`` (and earlier held points) to archive."""
        n = len(batch)
        if n == 0 or len(self._ids) == 0:
            return state, batch
        k = np.minimum(np.searchsorted(self._ids, batch.tag_ids), len(self._ids) - 1)
        configured = self._ids[k] == batch.tag_ids
        if batch.text:
            configured[np.fromiter(batch.text.keys(), dtype=np.intp, count=len(batch.text))] = False
        if not configured.any():
            return state, batch

        cidx = np.flatnonzero(configured)
        tags = batch.tag_ids[cidx]
        state = _with_tags(state, tags)
        cols = {name: col.copy() for name, col in state._columns().items() if name != "tag_ids"}
        pos = np.searchsorted(state.tag_ids, tags)
        occurrence = _occurrences(tags)

        keep = ~configured  # pass-through points, plus archived configured ones below
        held_idx: list[_I64] = []  # batch index of the point that archived a held point
        held_pts: list[tuple[_I64, _I64, _F64, _U8]] = []  # (ts, tag, value, quality) columns
        rounds = 1 if occurrence is None else int(occurrence.max()) + 1
        for r in range(rounds):
            sel = np.arange(len(cidx)) if occurrence is None else np.flatnonzero(occurrence == r)
            bi = cidx[sel]
            emit_held, emit_new, p = self._round(
                cols, pos[sel], t=batch.ts_ns[bi], v=batch.values[bi], q=batch.quality[bi], k=k[bi]
            )
            keep[bi[emit_new]] = True
            if emit_held.any():
                held_idx.append(bi[emit_held])
                held_pts.append(p)

        new_state = SwingingDoorState(tag_ids=state.tag_ids, **cols)
        if not held_idx and keep.all():
            return new_state, batch
        kept = np.flatnonzero(keep)
        if not held_idx:
            return new_state, batch.select(keep)
        h_idx = np.concatenate(held_idx)
        h_ts = np.concatenate([c[0] for c in held_pts])
        h_tag = np.concatenate([c[1] for c in held_pts])
        h_v = np.concatenate([c[2] for c in held_pts])
        h_q = np.concatenate([c[3] for c in held_pts])
        sort_key = np.concatenate([2 * kept + 1, 2 * h_idx])
        order = np.argsort(sort_key, kind="stable")
        return new_state, PointBatch(
            device_id=batch.device_id,
            ts_ns=np.concatenate([batch.ts_ns[kept], h_ts])[order],
            tag_ids=np.concatenate([batch.tag_ids[kept], h_tag])[order],
            values=np.concatenate([batch.values[kept], h_v])[order],
            quality=np.concatenate([batch.quality[kept], h_q])[order],
        )

    def _round(
        self,
        cols: dict[str, Any],
        p: npt.NDArray[np.intp],
        *,
        t: _I64,
        v: _F64,
        q: _U8,
        k: npt.NDArray[np.intp],
    ) -> tuple[_B, _B, Any]:
        """One pass in which each tag occurs once; updates ``cols`` (private copies) in place."""
        dev = self._dev[k]
        a_t, a_v, a_q = cols["arch_ts"][p], cols["arch_value"][p], cols["arch_quality"][p]
        h = cols["held"][p]
        h_t, h_v, h_q = cols["held_ts"][p], cols["held_value"][p], cols["held_quality"][p]
        lo, hi = cols["lo"][p], cols["hi"][p]

        last_t = np.where(h, h_t, a_t)
        brk = (a_t == _MIN_TS) | (q != a_q) | np.isnan(v) | np.isnan(a_v) | (t <= last_t)
        with np.errstate(all="ignore"):
            slope = (v - a_v) / ((t - a_t) / 1e9)
            fits = (slope >= lo) & (slope <= hi)
            restart = ~brk & ~fits  # only possible with a held point: no doors without one
            emit_held = h & (brk | ~fits)
            na_t = np.where(restart, h_t, a_t)
            na_v = np.where(restart, h_v, a_v)
            dt = (t - na_t) / 1e9
            up = (v - na_v - dev) / dt
            down = (v - na_v + dev) / dt
            new_lo = np.where(restart, up, np.maximum(lo, up))
            new_hi = np.where(restart, down, np.minimum(hi, down))
        beat = ~brk & ((t - na_t) >= self._max_ns[k])
        emit_new = brk | beat

        cols["arch_ts"][p] = np.where(emit_new, t, na_t)
        cols["arch_value"][p] = np.where(emit_new, v, na_v)
        cols["arch_quality"][p] = np.where(emit_new, q, np.where(restart, h_q, a_q))
        cols["held"][p] = ~emit_new
        cols["held_ts"][p] = t
        cols["held_value"][p] = v
        cols["held_quality"][p] = q
        cols["lo"][p] = np.where(emit_new, -np.inf, new_lo)
        cols["hi"][p] = np.where(emit_new, np.inf, new_hi)
        tag_ids = self._ids[k]
        held_pts = (h_t[emit_held], tag_ids[emit_held], h_v[emit_held], h_q[emit_held])
        return emit_held, emit_new, held_pts

    def flush(self, state: SwingingDoorState, device_id: str) -> tuple[SwingingDoorState, PointBatch]:
        """Archive every held point (end of stream): the new state and the archived points."""
        h = state.held
        if not h.any():
            return state, PointBatch.empty(device_id)
        cols = {name: col.copy() for name, col in state._columns().items() if name != "tag_ids"}
        cols["arch_ts"][h] = state.held_ts[h]
        cols["arch_value"][h] = state.held_value[h]
        cols["arch_quality"][h] = state.held_quality[h]
        cols["held"][:] = False
        cols["lo"][:] = -np.inf
        cols["hi"][:] = np.inf
        order = np.argsort(state.held_ts[h], kind="stable")
        out = PointBatch(
            device_id=device_id,
            ts_ns=state.held_ts[h][order],
            tag_ids=state.tag_ids[h][order],
            values=state.held_value[h][order],
            quality=state.held_quality[h][order],
        )
        return SwingingDoorState(tag_ids=state.tag_ids, **cols), out


def _with_tags(state: SwingingDoorState, tags: _I64) -> SwingingDoorState:
    """``state`` with blank entries for the tags it does not hold yet (sorted by tag id)."""
    known = state.tag_ids
    if len(known):
        i = np.minimum(np.searchsorted(known, tags), len(known) - 1)
        missing = known[i] != tags
        if not missing.any():
            return state
        new = np.unique(tags[missing])
    else:
        new = np.unique(tags)
    blank = SwingingDoorState._blank(new)
    merged = np.concatenate([known, new])
    order = np.argsort(merged, kind="stable")
    cols = {
        name: np.concatenate([col, getattr(blank, name)])[order]
        for name, col in state._columns().items()
        if name != "tag_ids"
    }
    return SwingingDoorState(tag_ids=merged[order], **cols)


def _occurrences(tag_ids: _I64) -> _I64 | None:
    """For each point, how many earlier points have its tag; ``None`` when all tags are unique.

    >>> _occurrences(np.array([5, 3, 5, 5, 3])).tolist()
    [0, 0, 1, 2, 1]
    >>> _occurrences(np.array([1, 2])) is None
    True
    """
    n = len(tag_ids)
    if n < 2:
        return None
    order = np.argsort(tag_ids, kind="stable")
    ordered = tag_ids[order]
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    if starts.all():
        return None
    index = np.arange(n)
    group_start = np.maximum.accumulate(np.where(starts, index, 0))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = index - group_start
    return occurrence
