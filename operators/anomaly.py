"""Per-tag anomaly detection over point batches: range, stuck, rate of change and online ML.

Framework-free: :class:`AnomalyDetector` holds the configuration, :class:`AnomalyState` the
per-device state (it pickles; Bytewax snapshots it). The clock is the points' own timestamps.
Alerts are edge-triggered: a condition raises once and clears once, however long it lasts.

>>> from core.batch import PointBatch
>>> det = AnomalyDetector({7: TagChecks(range=RangeCheck(high=200.0, hysteresis=5.0))})
>>> state, alerts = det.process(None, PointBatch.from_values("press-01", [7], [212.5], ts_ns=1))
>>> [(a.kind, a.state, a.message) for a in alerts]
[('high', 'raised', 'value 212.5 above high limit 200')]
>>> state, alerts = det.process(state, PointBatch.from_values("press-01", [7], [198.0], ts_ns=2))
>>> alerts  # between high - hysteresis and high: still raised, nothing new
[]
>>> state, alerts = det.process(state, PointBatch.from_values("press-01", [7], [190.0], ts_ns=3))
>>> [(a.kind, a.state) for a in alerts]
[('high', 'cleared')]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from core.batch import PointBatch
from core.records import Alert, Severity
from operators.arrays import sorted_union
from operators.fastinit import slot_constructor
from operators.kernels import anomaly_fast

__all__ = [
    "AnomalyDetector",
    "AnomalyState",
    "MlCheck",
    "RangeCheck",
    "RateCheck",
    "ScoreThreshold",
    "StuckCheck",
    "TagChecks",
]

_SEVERITIES = ("info", "warning", "critical")
_I64_MAX = np.iinfo(np.int64).max
_NO_TS = np.iinfo(np.int64).min
_BAD_QUALITY = 128

# Alert kinds, in the order alerts of one point are emitted.
_KINDS = ("high", "low", "stuck", "rate", "ml")
_ML_NONE, _ML_ZSCORE, _ML_HST = 0, 1, 2

_HST_FEATURE = "x"
_HST_LIMITS = (-1.0, 2.0)
"""HST space for the min-max scaled value: the seen range [0, 1] padded on both sides, so values
beyond the seen minimum/maximum fall into sparse leaves and score high."""


def _check_severity(owner: str, severity: str) -> None:
    if severity not in _SEVERITIES:
        raise ValueError(f"{owner}: `severity` must be one of {_SEVERITIES}, got {severity!r}")


def _finite(owner: str, name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` must be finite, got {value!r}")


_new_alert = slot_constructor(Alert)
"""``Alert(...)`` at a third of the cost: alert storms put several alerts in each device poll."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class RangeCheck:
    """Alarm when the value goes above ``high`` (below ``low``); clear only once it is back
    below ``high - hysteresis`` (above ``low + hysteresis``). Comparisons are strict."""

    high: float | None = None
    low: float | None = None
    hysteresis: float = 0.0
    severity: Severity = "warning"

    def __post_init__(self) -> None:
        if self.high is None and self.low is None:
            raise ValueError("RangeCheck: set `high`, `low` or both, got neither")
        _finite("RangeCheck", "high", self.high)
        _finite("RangeCheck", "low", self.low)
        _finite("RangeCheck", "hysteresis", self.hysteresis)
        if self.hysteresis < 0:
            raise ValueError(f"RangeCheck: `hysteresis` must be >= 0, got {self.hysteresis}")
        if self.high is not None and self.low is not None and self.low >= self.high:
            raise ValueError(f"RangeCheck: `low` must be < `high`, got low={self.low}, high={self.high}")
        _check_severity("RangeCheck", self.severity)


@dataclass(frozen=True, slots=True)
class StuckCheck:
    """Raised when the value stays within ``epsilon`` of the first value of its run for
    ``samples`` consecutive good samples or for ``seconds`` (point time); cleared on the first
    sample that leaves the band (which starts a new run)."""

    epsilon: float = 0.0
    samples: int | None = None
    seconds: float | None = None
    severity: Severity = "warning"

    def __post_init__(self) -> None:
        if self.samples is None and self.seconds is None:
            raise ValueError("StuckCheck: set `samples`, `seconds` or both, got neither")
        if self.samples is not None and self.samples < 2:
            raise ValueError(f"StuckCheck: `samples` must be >= 2, got {self.samples}")
        if self.seconds is not None and not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"StuckCheck: `seconds` must be > 0, got {self.seconds}")
        if not (self.epsilon >= 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"StuckCheck: `epsilon` must be >= 0, got {self.epsilon}")
        _check_severity("StuckCheck", self.severity)


@dataclass(frozen=True, slots=True)
class RateCheck:
    """Raised when ``|dv/dt|`` between consecutive good samples exceeds ``max_per_s``,
    cleared when it is back at or under the limit. Samples whose timestamp does not advance
    are ignored by this check."""

    max_per_s: float
    severity: Severity = "warning"

    def __post_init__(self) -> None:
        if not (self.max_per_s > 0 and math.isfinite(self.max_per_s)):
            raise ValueError(f"RateCheck: `max_per_s` must be > 0, got {self.max_per_s}")
        _check_severity("RateCheck", self.severity)


@dataclass(frozen=True, slots=True)
class MlCheck:
    """Online anomaly score per tag: score first, then learn; no alerts during warm-up.

    ``zscore``: ``|v - mean| / std`` from running (Welford) moments, vectorized, cheap.
    ``hst``: river ``MinMaxScaler | HalfSpaceTrees`` on the value, tens of µs per point.
    ``threshold`` defaults to 3.0 (z-score) or 0.9 (HST score). HST scores are 0 during its
    first ``window_size`` samples, so its effective warm-up is ``max(warm_up, window_size)``.
    ``height`` defaults to 4, lower than river's 8: on a single feature deep trees put every
    point in a near-empty leaf and all scores crowd near 1.
    """

    model: Literal["zscore", "hst"] = "zscore"
    threshold: float | None = None
    warm_up: int = 100
    window_size: int = 250
    n_trees: int = 10
    height: int = 4
    seed: int = 42
    severity: Severity = "warning"

    def __post_init__(self) -> None:
        if self.model not in ("zscore", "hst"):
            raise ValueError(f"MlCheck: `model` must be 'zscore' or 'hst', got {self.model!r}")
        if self.threshold is not None and not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"MlCheck: `threshold` must be > 0, got {self.threshold}")
        if self.warm_up < 2:
            raise ValueError(f"MlCheck: `warm_up` must be >= 2, got {self.warm_up}")
        for name in ("window_size", "n_trees", "height"):
            if getattr(self, name) < 1:
                raise ValueError(f"MlCheck: `{name}` must be >= 1, got {getattr(self, name)}")
        _check_severity("MlCheck", self.severity)

    @property
    def limit(self) -> float:
        """The effective threshold."""
        if self.threshold is not None:
            return self.threshold
        return 3.0 if self.model == "zscore" else 0.9

    def make_hst(self) -> Any:
        """A fresh river pipeline for one tag (``model="hst"``)."""
        from river import anomaly, preprocessing

        return preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
            n_trees=self.n_trees,
            height=self.height,
            window_size=self.window_size,
            limits={_HST_FEATURE: _HST_LIMITS},
            seed=self.seed,
        )


@dataclass(frozen=True, slots=True)
class TagChecks:
    """The checks of one tag; ``None`` disables a check."""

    range: RangeCheck | None = None
    stuck: StuckCheck | None = None
    rate: RateCheck | None = None
    ml: MlCheck | None = None


# --------------------------------------------------------------------------------------------
# State

_STATE_VERSION = 1
_ARRAYS: dict[str, Any] = {
    # name: (dtype, initial value)
    "high_on": (np.bool_, False),
    "low_on": (np.bool_, False),
    "stuck_on": (np.bool_, False),
    "rate_on": (np.bool_, False),
    "ml_on": (np.bool_, False),
    "stuck_ref": (np.float64, np.nan),
    "stuck_start_ns": (np.int64, 0),
    "stuck_count": (np.int64, 0),
    "rate_value": (np.float64, np.nan),
    "rate_ns": (np.int64, _NO_TS),
    "ml_n": (np.int64, 0),
    "ml_mean": (np.float64, 0.0),
    "ml_m2": (np.float64, 0.0),
}


@dataclass(eq=False)
class AnomalyState:
    """The detection state of one device, one row per configured tag seen so far.

    Every array is aligned to ``tag_ids`` (sorted, unique). ``*_on`` are the current alarm
    flags per check kind; ``stuck_*`` the current run (reference value, start, sample count);
    ``rate_*`` the previous good sample; ``ml_*`` Welford moments (count also gates warm-up);
    ``hst`` the river HST pipelines of the tags that use one, by tag id.

    Pickles as a versioned dict of arrays; HST pipelines are stored as their node masses and
    rebuilt from their seed on unpickling (see :func:`_hst_compact`).
    """

    tag_ids: npt.NDArray[np.int64]
    high_on: npt.NDArray[np.bool_]
    low_on: npt.NDArray[np.bool_]
    stuck_on: npt.NDArray[np.bool_]
    rate_on: npt.NDArray[np.bool_]
    ml_on: npt.NDArray[np.bool_]
    stuck_ref: npt.NDArray[np.float64]
    stuck_start_ns: npt.NDArray[np.int64]
    stuck_count: npt.NDArray[np.int64]
    rate_value: npt.NDArray[np.float64]
    rate_ns: npt.NDArray[np.int64]
    ml_n: npt.NDArray[np.int64]
    ml_mean: npt.NDArray[np.float64]
    ml_m2: npt.NDArray[np.float64]
    hst: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, tag_ids: npt.ArrayLike = ()) -> AnomalyState:
        ids = sorted_union(tag_ids)
        n = len(ids)
        arrays: dict[str, Any] = {
            name: np.full(n, init, dtype=dtype) for name, (dtype, init) in _ARRAYS.items()
        }
        return cls(tag_ids=ids, **arrays)

    def __len__(self) -> int:
        return len(self.tag_ids)

    def __getstate__(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": _STATE_VERSION,
            "tag_ids": self.tag_ids,
            "hst": {tag: _hst_compact(model) for tag, model in self.hst.items()},
        }
        out.update({name: getattr(self, name) for name in _ARRAYS})
        return out

    def __setstate__(self, data: dict[str, Any]) -> None:
        version = data.pop("version", None)
        if version != _STATE_VERSION:
            raise ValueError(f"AnomalyState: unsupported snapshot version {version!r}")
        data["hst"] = {tag: _hst_restore(blob) for tag, blob in data["hst"].items()}
        self.__dict__.update(data)

    def realigned(self, tag_ids: npt.NDArray[np.int64], keep_hst: set[int]) -> AnomalyState:
        """A state for ``tag_ids`` (sorted, unique): rows of known tags kept, new rows fresh,
        rows of tags not listed dropped; only HST models of ``keep_hst`` kept."""
        new = AnomalyState.empty(tag_ids)
        common, old_i, new_i = np.intersect1d(self.tag_ids, tag_ids, assume_unique=True, return_indices=True)
        for name in _ARRAYS:
            getattr(new, name)[new_i] = getattr(self, name)[old_i]
        kept = {int(t) for t in common} & keep_hst
        new.hst = {t: m for t, m in self.hst.items() if t in kept}
        return new


def _hst_compact(model: Any) -> Any:
    """A river ``MinMaxScaler | HalfSpaceTrees`` pipeline as plain data, or the model itself.

    Pickling the trees' node objects costs ~1 ms and ~14 KiB per model at height 4 (~20 ms and
    ~170 KiB at height 8). The tree shapes (features and thresholds) are a function of the
    constructor arguments alone (seed, limits, height, built on the first sample), so only
    the node masses, the window counter and the scaler are kept; :func:`_hst_restore` rebuilds
    the same trees from the seed. Any other structure is returned as is and pickled normally.
    """
    steps = getattr(model, "steps", None)
    if steps is None or list(steps) != ["MinMaxScaler", "HalfSpaceTrees"]:
        return model
    scaler, hst = steps["MinMaxScaler"], steps["HalfSpaceTrees"]
    nodes = getattr(hst, "_tree_nodes", None)
    if not nodes or dict(hst.limits) != {_HST_FEATURE: _HST_LIMITS}:
        return model  # trees not built yet (a fresh model pickles small) or foreign limits
    masses = np.array([[(n.l_mass, n.r_mass) for n in tree] for tree in nodes], dtype=np.int32)
    config = (hst.n_trees, hst.height, hst.window_size, hst.seed)
    return ("hst-v1", config, scaler, masses, hst.counter, hst._first_window)


def _hst_restore(blob: Any) -> Any:
    if not (isinstance(blob, tuple) and blob and blob[0] == "hst-v1"):
        return blob
    from river import anomaly

    _, (n_trees, height, window_size, seed), scaler, masses, counter, first_window = blob
    hst = anomaly.HalfSpaceTrees(
        n_trees=n_trees, height=height, window_size=window_size, limits={_HST_FEATURE: _HST_LIMITS}, seed=seed
    )
    hst.learn_one({_HST_FEATURE: 0.0})  # builds the trees exactly as the first sample did
    if np.shape(masses) != (len(hst._tree_nodes), len(hst._tree_nodes[0]), 2):
        raise ValueError(f"AnomalyState: HST snapshot shape {np.shape(masses)} does not fit its trees")
    for tree, tree_masses in zip(hst._tree_nodes, masses.tolist(), strict=True):
        for node, (l_mass, r_mass) in zip(tree, tree_masses, strict=True):
            node.l_mass = l_mass
            node.r_mass = r_mass
    hst.counter = counter
    hst._first_window = first_window
    return scaler | hst


# --------------------------------------------------------------------------------------------
# Thresholds


@dataclass(frozen=True, slots=True, eq=False)
class ScoreThreshold:
    """Wraps per-tag anomaly scores into decisions: anomalous where ``score > threshold``
    once ``warm_up`` samples were learned. Tags without ML have an infinite threshold.

    >>> th = ScoreThreshold(np.array([3.0, 0.9]), np.array([100, 100]))
    >>> th.classify(np.array([4.0, 0.95]), np.array([100, 99])).tolist()
    [True, False]
    """

    threshold: npt.NDArray[np.float64]
    warm_up: npt.NDArray[np.int64]

    def classify(
        self, scores: npt.NDArray[np.float64], n_seen: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        return (scores > self.threshold) & (n_seen >= self.warm_up)

    def take(self, index: npt.NDArray[np.intp]) -> ScoreThreshold:
        return ScoreThreshold(self.threshold[index], self.warm_up[index])


# --------------------------------------------------------------------------------------------
# Detector


@dataclass(frozen=True, slots=True, eq=False)
class _Params:
    """Check parameters as arrays aligned to some tag ids (NaN / int64 max = check disabled)."""

    tag_ids: npt.NDArray[np.int64]
    high: npt.NDArray[np.float64]
    high_clear: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    low_clear: npt.NDArray[np.float64]
    has_stuck: npt.NDArray[np.bool_]
    stuck_eps: npt.NDArray[np.float64]
    stuck_n: npt.NDArray[np.int64]
    stuck_ns: npt.NDArray[np.int64]
    rate_max: npt.NDArray[np.float64]
    ml_kind: npt.NDArray[np.uint8]
    ml: ScoreThreshold

    def take(self, index: npt.NDArray[np.intp]) -> _Params:
        return _Params(
            tag_ids=self.tag_ids[index],
            high=self.high[index],
            high_clear=self.high_clear[index],
            low=self.low[index],
            low_clear=self.low_clear[index],
            has_stuck=self.has_stuck[index],
            stuck_eps=self.stuck_eps[index],
            stuck_n=self.stuck_n[index],
            stuck_ns=self.stuck_ns[index],
            rate_max=self.rate_max[index],
            ml_kind=self.ml_kind[index],
            ml=self.ml.take(index),
        )


def _build_params(checks: Mapping[int, TagChecks]) -> _Params:
    ids = np.array(sorted(checks), dtype=np.int64)
    n = len(ids)
    nan = np.full(n, np.nan)
    p = {
        "high": nan.copy(),
        "high_clear": nan.copy(),
        "low": nan.copy(),
        "low_clear": nan.copy(),
        "stuck_eps": np.zeros(n),
        "rate_max": nan.copy(),
        "ml_thr": np.full(n, np.inf),
    }
    has_stuck = np.zeros(n, dtype=np.bool_)
    stuck_n = np.full(n, _I64_MAX, dtype=np.int64)
    stuck_ns = np.full(n, _I64_MAX, dtype=np.int64)
    ml_kind = np.zeros(n, dtype=np.uint8)
    ml_warm = np.zeros(n, dtype=np.int64)
    for i, tag in enumerate(ids.tolist()):
        c = checks[tag]
        if c.range is not None:
            if c.range.high is not None:
                p["high"][i] = c.range.high
                p["high_clear"][i] = c.range.high - c.range.hysteresis
            if c.range.low is not None:
                p["low"][i] = c.range.low
                p["low_clear"][i] = c.range.low + c.range.hysteresis
        if c.stuck is not None:
            has_stuck[i] = True
            p["stuck_eps"][i] = c.stuck.epsilon
            if c.stuck.samples is not None:
                stuck_n[i] = c.stuck.samples
            if c.stuck.seconds is not None:
                stuck_ns[i] = round(c.stuck.seconds * 1e9)
        if c.rate is not None:
            p["rate_max"][i] = c.rate.max_per_s
        if c.ml is not None:
            ml_kind[i] = _ML_ZSCORE if c.ml.model == "zscore" else _ML_HST
            p["ml_thr"][i] = c.ml.limit
            ml_warm[i] = c.ml.warm_up
    return _Params(
        tag_ids=ids,
        high=p["high"],
        high_clear=p["high_clear"],
        low=p["low"],
        low_clear=p["low_clear"],
        has_stuck=has_stuck,
        stuck_eps=p["stuck_eps"],
        stuck_n=stuck_n,
        stuck_ns=stuck_ns,
        rate_max=p["rate_max"],
        ml_kind=ml_kind,
        ml=ScoreThreshold(p["ml_thr"], ml_warm),
    )


@dataclass(frozen=True, slots=True, eq=False)
class _FastParams:
    """Parameters aligned to a state's rows, with the enabled-check masks precomputed."""

    p: _Params
    pf: npt.NDArray[np.float64]
    """Rows high, high_clear, low, low_clear, stuck_eps, rate_max (the compiled kernel's layout)."""
    pi: npt.NDArray[np.int64]
    """Rows has_stuck, stuck_n, stuck_ns."""


def _lookup(
    sorted_ids: npt.NDArray[np.int64], ids: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Index of each of ``ids`` in ``sorted_ids`` and whether it is there."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.intp), np.zeros(len(ids), dtype=np.bool_)
    idx = np.searchsorted(sorted_ids, ids)
    np.minimum(idx, len(sorted_ids) - 1, out=idx)
    return idx, sorted_ids[idx] == ids


def _rounds(sidx: npt.NDArray[np.intp], n_tags: int) -> Iterator[npt.NDArray[np.intp]]:
    """Positions of the points, grouped so each group holds a tag at most once: group k holds
    every tag's k-th occurrence (batch order kept within a tag)."""
    if len(sidx) == 0:
        return
    counts = np.bincount(sidx, minlength=n_tags)
    if counts.max() <= 1:
        yield np.arange(len(sidx))
        return
    order = np.argsort(sidx, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(sidx), dtype=np.intp)
    rank[order] = np.arange(len(sidx)) - np.repeat(starts, counts)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.cumsum(np.bincount(rank))
    lo = 0
    for hi in bounds.tolist():
        yield by_rank[lo:hi]
        lo = hi


class AnomalyDetector:
    """Per-tag range, stuck, rate-of-change and ML checks over the batches of one device.

    ``checks`` maps tag ids to their :class:`TagChecks`; points of other tags are ignored, and
    so are bad-quality (>= 128) and non-finite points. :meth:`process` updates ``state`` in
    place and returns it (a new object when tags were added or dropped): always keep the
    returned one. Alerts come in batch order, then in the order high, low, stuck, rate, ml.

    ``Alert.value`` is the quantity compared with ``Alert.limit``: the point value for
    high/low/stuck (stuck has no limit), ``|dv/dt|`` per second for rate, the score for ml.
    """

    def __init__(self, checks: Mapping[int, TagChecks]) -> None:
        self.checks: Mapping[int, TagChecks] = MappingProxyType({int(t): c for t, c in checks.items()})
        self._params = _build_params(self.checks)
        self._cache: dict[bytes, tuple[_Params, bool]] = {}
        self._fast: dict[int, tuple[npt.NDArray[np.int64], _FastParams | None]] = {}
        self._hst_tags = frozenset(
            t for t, c in self.checks.items() if c.ml is not None and c.ml.model == "hst"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"checks": dict(self.checks)}

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__init__(data["checks"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"AnomalyDetector(checks=<{len(self.checks)} tags>)"

    def _params_for(self, tag_ids: npt.NDArray[np.int64]) -> tuple[_Params, bool]:
        """Parameters aligned to ``tag_ids`` and whether all of them are configured (without any
        checks, the empty parameters: a state left by checks a hot change removed is realigned)."""
        key = tag_ids.tobytes()
        hit = self._cache.get(key)
        if hit is None:
            idx, found = _lookup(self._params.tag_ids, tag_ids)
            params = self._params.take(idx) if len(self._params.tag_ids) else self._params
            hit = (params, bool(found.all()))
            if len(self._cache) >= 1024:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _align(self, state: AnomalyState, batch_tags: npt.NDArray[np.int64]) -> AnomalyState:
        _, configured = _lookup(self._params.tag_ids, batch_tags)
        _, known = _lookup(state.tag_ids, batch_tags)
        _, all_configured = self._params_for(state.tag_ids)
        missing = configured & ~known
        if not missing.any() and all_configured:
            return state
        _, still = _lookup(self._params.tag_ids, state.tag_ids)
        tags = sorted_union(state.tag_ids[still], batch_tags[missing])
        return state.realigned(tags, set(self._hst_tags))

    def process(self, state: AnomalyState | None, batch: PointBatch) -> tuple[AnomalyState, list[Alert]]:
        """Run every check on ``batch``; returns the state to keep and the alerts."""
        if state is None:  # a device's first batch: rows for its configured tags straight away
            _, configured = _lookup(self._params.tag_ids, batch.tag_ids)
            state = AnomalyState.empty(batch.tag_ids[configured])
        if len(batch) == 0:
            return state, []
        fast = self._process_fast(state, batch)
        if fast is not None:
            return state, fast
        aligned = self._align(state, batch.tag_ids)
        if aligned is not state:  # rows for new tags (a device's first batch): the common case again?
            state = aligned
            fast = self._process_fast(state, batch)
            if fast is not None:
                return state, fast
        sidx, known = _lookup(state.tag_ids, batch.tag_ids)
        usable = known & (batch.quality < _BAD_QUALITY) & np.isfinite(batch.values)
        if usable.all():
            pos = np.arange(len(batch))
        else:
            pos = np.flatnonzero(usable)
            sidx = sidx[pos]
        if len(pos) == 0:
            return state, []
        params, _ = self._params_for(state.tag_ids)
        values = batch.values[pos]
        ts = batch.ts_ns[pos]
        scores = self._hst_scores(state, params, sidx, values)
        events: list[tuple[int, int, Alert]] = []
        for r in _rounds(sidx, len(state)):
            self._round(
                st=state,
                p=params.take(sidx[r]),
                s=sidx[r],
                v=values[r],
                t=ts[r],
                hst_score=scores[r],
                pos=pos[r],
                batch=batch,
                events=events,
            )
        events.sort(key=lambda e: (e[0], e[1]))
        return state, [e[2] for e in events]

    def _fast_params(self, tag_ids: npt.NDArray[np.int64]) -> _FastParams | None:
        """Parameters aligned to a state's rows, cached while the state keeps its ``tag_ids``
        array; ``None`` when the fast path does not apply (ML checks, unconfigured rows)."""
        hit = self._fast.get(id(tag_ids))
        if hit is not None and hit[0] is tag_ids:
            return hit[1]
        idx, found = _lookup(self._params.tag_ids, tag_ids)
        fp: _FastParams | None = None
        if len(tag_ids) and found.all():
            p = self._params.take(idx)
            if not p.ml_kind.any():
                fp = _FastParams(
                    p=p,
                    pf=np.stack([p.high, p.high_clear, p.low, p.low_clear, p.stuck_eps, p.rate_max]),
                    pi=np.stack([p.has_stuck.astype(np.int64), p.stuck_n, p.stuck_ns]),
                )
        if len(self._fast) >= 4096:
            self._fast.clear()
        self._fast[id(tag_ids)] = (tag_ids, fp)
        return fp

    def _process_fast(self, st: AnomalyState, batch: PointBatch) -> list[Alert] | None:
        """The common case, or ``None`` (nothing touched) when the general path is needed.

        Applies when every point is usable, each tag occurs once and already has a state row, no
        tag has an ML check, and every point advances its tag's rate clock or is its tag's first
        sample. The checks are the same elementwise expressions as in
        :meth:`_round`, on the batch in its own order, in one compiled call
        (:func:`operators.kernels.anomaly_fast`); the alerts are built in Python for the flips only.
        """
        sids = st.tag_ids
        tags = batch.tag_ids
        m, n = len(sids), len(tags)
        if m < n:
            return None
        fp = self._fast_params(sids)
        if fp is None:
            return None
        flips, ints, floats = anomaly_fast(
            sids, tags, batch.values, batch.ts_ns, batch.quality, fp.pf, fp.pi,
            st.high_on, st.low_on, st.stuck_on, st.rate_on, st.ml_on,
            st.stuck_ref, st.stuck_start_ns, st.stuck_count, st.rate_value, st.rate_ns,
        )  # fmt: skip
        if flips == 0:
            return []
        if flips > 0:
            return self._flip_alerts(batch.device_id, ints.tolist(), floats.tolist())
        return None

    def _flip_alerts(self, device: str, ints: list[list[int]], floats: list[list[float]]) -> list[Alert]:
        """The alerts of the compiled kernel's flip rows (already in batch order, then kind order)."""
        out = []
        alert = self._alert
        for (_, kind, raised, run_len, run_ns, tag, ts), (val, lim, point) in zip(ints, floats, strict=True):
            a = alert(_KINDS[kind], tag, raised == 1, point, ts, val, lim, run_len, run_ns, device)
            if a is not None:
                out.append(a)
        return out

    def _hst_scores(
        self,
        state: AnomalyState,
        params: _Params,
        sidx: npt.NDArray[np.intp],
        values: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        """Scores of the HST tags' points (score first, then learn), NaN elsewhere."""
        scores = np.full(len(sidx), np.nan)
        is_hst = params.ml_kind[sidx] == _ML_HST
        if not is_hst.any():
            return scores
        models = state.hst
        for i in np.flatnonzero(is_hst).tolist():
            tag = int(state.tag_ids[sidx[i]])
            model = models.get(tag)
            if model is None:
                ml = self.checks[tag].ml
                assert ml is not None
                model = models[tag] = ml.make_hst()
            x = {_HST_FEATURE: float(values[i])}
            scores[i] = model.score_one(x)
            model.learn_one(x)
        return scores

    def _round(
        self,
        *,
        st: AnomalyState,
        p: _Params,
        s: npt.NDArray[np.intp],
        v: npt.NDArray[np.float64],
        t: npt.NDArray[np.int64],
        hst_score: npt.NDArray[np.float64],
        pos: npt.NDArray[np.intp],
        batch: PointBatch,
        events: list[tuple[int, int, Alert]],
    ) -> None:
        """One point per tag: ``s`` state rows, ``p`` their parameters, ``pos`` batch positions."""
        # Range (NaN limits never compare true, so disabled checks stay off).
        old = st.high_on[s]
        new = np.where(old, ~(v < p.high_clear), v > p.high) & ~np.isnan(p.high)
        self._emit(events, "high", old, new, p.tag_ids, value=v, limit=p.high, pos=pos, batch=batch)
        st.high_on[s] = new

        old = st.low_on[s]
        new = np.where(old, ~(v > p.low_clear), v < p.low) & ~np.isnan(p.low)
        self._emit(events, "low", old, new, p.tag_ids, value=v, limit=p.low, pos=pos, batch=batch)
        st.low_on[s] = new

        # Stuck: a run is the consecutive samples within epsilon of the run's first value.
        count = st.stuck_count[s]
        ref = st.stuck_ref[s]
        start = st.stuck_start_ns[s]
        changed = (count == 0) | ~(np.abs(v - ref) <= p.stuck_eps)
        run_len = count + 1
        run_ns = t - start
        stuck_now = (run_len >= p.stuck_n) | (run_ns >= p.stuck_ns)
        old = st.stuck_on[s]
        new = ~changed & (old | stuck_now) & p.has_stuck
        self._emit(
            events,
            "stuck",
            old,
            new,
            p.tag_ids,
            value=v,
            limit=p.stuck_eps,
            pos=pos,
            batch=batch,
            run_len=run_len,
            run_ns=run_ns,
        )
        st.stuck_on[s] = new
        st.stuck_ref[s] = np.where(changed, v, ref)
        st.stuck_start_ns[s] = np.where(changed, t, start)
        st.stuck_count[s] = np.where(changed, 1, run_len)

        # Rate of change against the previous good sample; non-advancing timestamps are skipped.
        last_ns = st.rate_ns[s]
        first = last_ns == _NO_TS
        advances = first | (t > last_ns)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            rate = np.abs(v - st.rate_value[s]) / ((t - last_ns) / 1e9)
        old = st.rate_on[s]
        new = np.where(advances & ~first, rate > p.rate_max, old) & ~np.isnan(p.rate_max)
        self._emit(events, "rate", old, new, p.tag_ids, value=rate, limit=p.rate_max, pos=pos, batch=batch)
        st.rate_on[s] = new
        st.rate_value[s] = np.where(advances, v, st.rate_value[s])
        st.rate_ns[s] = np.where(advances, t, last_ns)

        # ML: score with the model as it was, decide through the threshold, then learn.
        kind = p.ml_kind
        if kind.any():
            on = kind != _ML_NONE
            n = st.ml_n[s]
            mean = st.ml_mean[s]
            m2 = st.ml_m2[s]
            with np.errstate(invalid="ignore", divide="ignore"):
                z = np.abs(v - mean) / np.sqrt(m2 / (n - 1))
            z[~np.isfinite(z)] = 0.0  # too few samples or zero variance: no evidence
            score = np.where(kind == _ML_HST, hst_score, np.where(on, z, 0.0))
            old = st.ml_on[s]
            new = p.ml.classify(score, n) & on
            self._emit(
                events, "ml", old, new, p.tag_ids, value=score, limit=p.ml.threshold, pos=pos, batch=batch
            )
            st.ml_on[s] = new
            n1 = n + on
            delta = np.where(on, v - mean, 0.0)
            mean1 = mean + delta / np.maximum(n1, 1)
            st.ml_n[s] = n1
            st.ml_mean[s] = mean1
            st.ml_m2[s] = m2 + delta * (v - mean1)
        else:
            st.ml_on[s] = False

    def _emit(
        self,
        events: list[tuple[int, int, Alert]],
        kind: str,
        old: npt.NDArray[np.bool_],
        new: npt.NDArray[np.bool_],
        tag_ids: npt.NDArray[np.int64],
        *,
        value: npt.NDArray[np.float64],
        limit: npt.NDArray[np.float64],
        pos: npt.NDArray[np.intp],
        batch: PointBatch,
        run_len: npt.NDArray[np.int64] | None = None,
        run_ns: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Alerts for the rows whose flag flipped (a Python loop over alerts only)."""
        diff = old != new
        if not diff.any():
            return
        flipped = np.flatnonzero(diff)
        order = _KINDS.index(kind)
        at_rows = pos[flipped]
        # Convert the flipped rows to Python scalars in one go, not element by element.
        rows = zip(
            flipped.tolist(),
            tag_ids[flipped].tolist(),
            new[flipped].tolist(),
            at_rows.tolist(),
            batch.values[at_rows].tolist(),
            batch.ts_ns[at_rows].tolist(),
            np.asarray(value, dtype=np.float64)[flipped].tolist(),
            np.asarray(limit, dtype=np.float64)[flipped].tolist(),
            strict=True,
        )
        device = batch.device_id
        for i, tag, raised, at, point, ts_ns, val, lim_f in rows:
            alert = self._alert(
                kind, tag, raised, point, ts_ns, val, lim_f,
                0 if run_len is None else int(run_len[i]), 0 if run_ns is None else int(run_ns[i]), device,
            )  # fmt: skip
            if alert is None:
                continue
            events.append((at, order, alert))

    def _alert(  # noqa: PLR0917 - one alert's fields
        self,
        kind: str,
        tag: int,
        raised: bool,
        point: float,
        ts_ns: int,
        val: float,
        lim_f: float,
        run_len: int,
        run_ns: int,
        device: str,
    ) -> Alert | None:
        """One alert (``None`` when the check left the configuration)."""
        checks = self.checks[tag]
        lim: float | None = lim_f
        check: RangeCheck | StuckCheck | RateCheck | MlCheck | None
        if kind in ("high", "low"):
            check = checks.range
            if check is None:  # check removed from the configuration: drop silently
                return None
            if raised:
                side = "above" if kind == "high" else "below"
                msg = f"value {val:g} {side} {kind} limit {lim:g}"
            else:
                back = "below" if kind == "high" else "above"
                msg = f"value {val:g} back {back} {kind} limit {lim:g} (hysteresis {check.hysteresis:g})"
        elif kind == "stuck":
            check = checks.stuck
            if check is None:
                return None
            if raised:
                msg = (
                    f"value {val:g} unchanged (±{check.epsilon:g}) for {run_len} samples"
                    f" over {run_ns / 1e9:g} s"
                )
            else:
                msg = f"value {val:g} changed after {run_len - 1} samples"
            lim = None
        elif kind == "rate":
            check = checks.rate
            if check is None:
                return None
            relation = "above" if raised else "back within"
            msg = f"rate {val:g}/s {relation} limit {lim:g}/s (value {point:g})"
        else:
            check = checks.ml
            if check is None:
                return None
            relation = "above" if raised else "back under"
            msg = f"{check.model} score {val:.3g} {relation} threshold {lim:g} (value {point:g})"
        return _new_alert(
            device, tag, kind, "raised" if raised else "cleared", check.severity, val, lim, ts_ns, msg
        )
