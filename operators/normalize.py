"""Normalization: raw device values to clamped engineering values, a whole batch at a time.

Per tag: ``eng = raw*scale + offset``, then a unit conversion ``a*eng + b`` (both folded into one
``gain*raw + bias``), then clamping to ``[clamp_low, clamp_high]``.

>>> from core.batch import PointBatch
>>> from core.quality import Quality
>>> norm = Normalizer({
...     1: NormalizeParams(scale=0.1, clamp_low=-20.0, clamp_high=150.0),
...     2: NormalizeParams.for_units("degC", "degF"),
... })
>>> batch = PointBatch.from_values("press-01", [1, 2, 3], [2000.0, 100.0, 7.0], ts_ns=0)
>>> out = norm.apply(batch)
>>> out.values.tolist()
[150.0, 212.0, 7.0]
>>> [Quality(q).name for q in out.quality]
['CLAMPED', 'GOOD', 'GOOD']

Quality rules, for tags with parameters:

- bad points (``>= 128``) pass through unchanged, value included;
- good and uncertain points are scaled, converted and clamped;
- a clamped good point becomes :attr:`~core.quality.Quality.CLAMPED`; an uncertain point keeps its
  (already worse) code;
- a good or uncertain point whose value is NaN or infinite (before or after scaling) becomes
  :attr:`~core.quality.Quality.OUT_OF_RANGE`, with the computed value kept and not clamped;
- points carrying a string in the batch's ``text`` side channel are left alone.

Tags without parameters pass through unchanged (no scaling, no checks).
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
from core.quality import Quality
from operators.kernels import _CLAMPED, _GOOD_LIMIT, normalize_fast
from operators.units import conversion

__all__ = ["NormalizeParams", "Normalizer"]

_BAD = 128
_CACHE_MAX_DEVICES = 4096


@dataclass(frozen=True, slots=True)
class NormalizeParams:
    """How one tag's raw value becomes its engineering value.

    ``eng = (raw*scale + offset)``, then ``convert[0]*eng + convert[1]``, then clamped to
    ``[clamp_low, clamp_high]`` (either may be ``None``: no limit on that side). Clamp limits are in
    the final (converted) unit.

    >>> NormalizeParams.for_units("bar", "kPa", clamp_high=500.0).convert
    (100.0, 0.0)
    >>> NormalizeParams(clamp_low=5.0, clamp_high=1.0)
    Traceback (most recent call last):
    ...
    ValueError: `clamp_low` (5.0) must not be above `clamp_high` (1.0)
    """

    scale: float = 1.0
    offset: float = 0.0
    convert: tuple[float, float] = (1.0, 0.0)
    clamp_low: float | None = None
    clamp_high: float | None = None

    def __post_init__(self) -> None:
        for name in ("scale", "offset"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"`{name}` must be finite, got {value!r}")
        if len(self.convert) != 2 or not all(math.isfinite(c) for c in self.convert):
            raise ValueError(f"`convert` must be a finite (a, b) pair, got {self.convert!r}")
        for name in ("clamp_low", "clamp_high"):
            value = getattr(self, name)
            if value is not None and math.isnan(value):
                raise ValueError(f"`{name}` must not be NaN")
        if self.clamp_low is not None and self.clamp_high is not None and self.clamp_low > self.clamp_high:
            raise ValueError(
                f"`clamp_low` ({self.clamp_low!r}) must not be above `clamp_high` ({self.clamp_high!r})"
            )

    @classmethod
    def for_units(
        cls,
        from_unit: str,
        to_unit: str,
        *,
        scale: float = 1.0,
        offset: float = 0.0,
        clamp_low: float | None = None,
        clamp_high: float | None = None,
    ) -> NormalizeParams:
        """Parameters converting ``from_unit`` to ``to_unit`` (raises ``UnitError`` if impossible)."""
        return cls(
            scale=scale,
            offset=offset,
            convert=conversion(from_unit, to_unit),
            clamp_low=clamp_low,
            clamp_high=clamp_high,
        )

    @property
    def gain_bias(self) -> tuple[float, float]:
        """Scaling and conversion folded into one ``(gain, bias)``: ``y = gain*raw + bias``."""
        a, b = self.convert
        return self.scale * a, self.offset * a + b


@dataclass(frozen=True, slots=True)
class _Aligned:
    """Parameters aligned to one tag_ids array (the last one seen for a device)."""

    tag_ids: npt.NDArray[np.int64]
    configured: npt.NDArray[np.bool_]
    any_configured: bool
    all_configured: bool
    gain: npt.NDArray[np.float64]
    bias: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]


class Normalizer:
    """Scale, convert and clamp batches; stateless with respect to the data.

    ``params`` maps tag ids to :class:`NormalizeParams`. They are compiled into sorted arrays once;
    each batch is aligned to them with one ``searchsorted``, and the alignment is cached per device
    while the device keeps sending the same tag ids (the common case): a hit is the same array
    object as last time (relying on batches never being mutated) or an equal one. The cache is
    derived data: it is dropped when the normalizer is pickled.
    """

    def __init__(self, params: Mapping[int, NormalizeParams]) -> None:
        self.params: Mapping[int, NormalizeParams] = MappingProxyType(dict(params))
        self._compile()

    def _compile(self) -> None:
        ids = np.array(sorted(self.params), dtype=np.int64)
        ordered = [self.params[int(t)] for t in ids]
        gb = np.array([p.gain_bias for p in ordered], dtype=np.float64).reshape(-1, 2)
        self._ids = ids
        self._gain = gb[:, 0].copy()
        self._bias = gb[:, 1].copy()
        self._low = np.array(
            [-np.inf if p.clamp_low is None else p.clamp_low for p in ordered], dtype=np.float64
        )
        self._high = np.array(
            [np.inf if p.clamp_high is None else p.clamp_high for p in ordered], dtype=np.float64
        )
        self._cache: dict[str, tuple[npt.NDArray[np.int64], _Aligned]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"params": dict(self.params)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params = MappingProxyType(dict(state["params"]))
        self._compile()

    def __repr__(self) -> str:
        return f"Normalizer(<{len(self.params)} tags>)"

    def _align(self, device_id: str, tag_ids: npt.NDArray[np.int64]) -> _Aligned:
        hit = self._cache.get(device_id)
        if hit is not None:
            seen, cached = hit
            if seen is tag_ids:  # the very array of the last batch (batches are never mutated)
                return cached
            if cached.tag_ids.shape == tag_ids.shape and np.array_equal(cached.tag_ids, tag_ids):
                self._cache[device_id] = (tag_ids, cached)
                return cached
        n_params = len(self._ids)
        if n_params:
            idx = np.searchsorted(self._ids, tag_ids)
            np.minimum(idx, n_params - 1, out=idx)
            configured = self._ids[idx] == tag_ids
        else:
            idx = np.zeros(len(tag_ids), dtype=np.intp)
            configured = np.zeros(len(tag_ids), dtype=bool)
        if n_params:
            gain = np.where(configured, self._gain[idx], 1.0)
            bias = np.where(configured, self._bias[idx], 0.0)
            low = np.where(configured, self._low[idx], -np.inf)
            high = np.where(configured, self._high[idx], np.inf)
        else:
            gain = np.ones(len(tag_ids))
            bias = np.zeros(len(tag_ids))
            low = np.full(len(tag_ids), -np.inf)
            high = np.full(len(tag_ids), np.inf)
        aligned = _Aligned(
            tag_ids=tag_ids.copy(),  # a private copy: the cache key can never change under us
            configured=configured,
            any_configured=bool(configured.any()),
            all_configured=bool(configured.all()),
            gain=gain,
            bias=bias,
            low=low,
            high=high,
        )
        if len(self._cache) >= _CACHE_MAX_DEVICES:
            self._cache.clear()
        self._cache[device_id] = (tag_ids, aligned)
        return aligned

    @staticmethod
    def _apply_fast(batch: PointBatch, al: _Aligned) -> PointBatch | None:
        """The common case, every point good, numeric and configured (``None`` otherwise): the
        same arithmetic as :meth:`apply`, without the masks that are then all-true or all-false, in one
        compiled call (:func:`operators.kernels.normalize_fast`)."""
        if not al.all_configured or batch.text:
            return None
        status, values, q = normalize_fast(
            batch.values, batch.quality, al.gain, al.bias, al.low, al.high, _GOOD_LIMIT, _CLAMPED
        )
        if status < 0:
            return None
        return PointBatch(
            batch.device_id,
            batch.ts_ns,
            batch.tag_ids,
            values,
            batch.quality if status == 0 else q,
            batch.text,
        )

    def apply(self, batch: PointBatch) -> PointBatch:
        """A new batch with engineering values and updated qualities (the input is not modified)."""
        if len(batch) == 0:
            return batch
        al = self._align(batch.device_id, batch.tag_ids)
        if not al.any_configured:
            return batch
        raw = batch.values
        q = batch.quality
        fast = self._apply_fast(batch, al)
        if fast is not None:
            return fast
        active = al.configured & (q < _BAD)
        if batch.text:
            active = active.copy()
            active[np.fromiter(batch.text.keys(), dtype=np.intp, count=len(batch.text))] = False
        with np.errstate(invalid="ignore", over="ignore"):
            scaled = raw * al.gain + al.bias
        finite = np.isfinite(scaled)
        clipped = np.minimum(np.maximum(scaled, al.low), al.high)
        ok = active & finite
        was_clamped = ok & (clipped != scaled)
        values = np.where(ok, clipped, np.where(active, scaled, raw))
        quality = q.copy()
        quality[was_clamped & (q < _GOOD_LIMIT)] = Quality.CLAMPED
        quality[active & ~finite] = Quality.OUT_OF_RANGE
        return batch.replace(values=values, quality=quality)
