"""The common chain normalize → deadband → windows → checks as one core, one compiled call per poll.

Run one by one, the four cores cost a numba call each per device batch, with the intermediate
batches, their arrays and each core's cache look-ups in between: about 50 µs per 100-point poll,
most of it fixed cost. :class:`OperatorChain` holds the four cores and one :class:`ChainState` per
device (their three states) and runs a poll in one call (:func:`operators.kernels.chain_step`) when
every core's common case applies; otherwise it runs the cores one by one, each with its own fast
and general paths. Either way the results are the cores': the same points, aggregates, late points,
alerts and states (``tests/operators/test_chain.py`` checks it on random polls).

>>> from core.batch import PointBatch
>>> from operators.anomaly import AnomalyDetector, RangeCheck, TagChecks
>>> from operators.deadband import Deadband, DeadbandParams
>>> from operators.normalize import NormalizeParams, Normalizer
>>> from operators.window import WindowAggregator
>>> chain = OperatorChain(
...     Normalizer({1: NormalizeParams(scale=0.1), 2: NormalizeParams(scale=0.1)}),
...     Deadband({1: DeadbandParams(absolute=1.0), 2: DeadbandParams(absolute=1.0)}),
...     WindowAggregator([60.0]),
...     AnomalyDetector({2: TagChecks(range=RangeCheck(high=50.0))}),
... )
>>> state = chain.initial_state()
>>> t0 = 1_700_000_040 * 10**9                      # a minute boundary
>>> for k, raw in enumerate([(100.0, 200.0), (105.0, 600.0), (120.0, 610.0)]):
...     poll = PointBatch.from_values("oven", [1, 2], raw, ts_ns=t0 + k * 10**9)
...     state, points, aggs, late, alerts = chain.process(state, poll, now_ns=t0 + k * 10**9)
...     print(points.values.tolist(), [a.message for a in alerts])
[10.0, 20.0] []
[60.0] ['value 60 above high limit 50']
[12.0] []
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from core.batch import PointBatch
from core.records import AggBatch, Alert
from operators.anomaly import AnomalyDetector, AnomalyState
from operators.deadband import Deadband, DeadbandState
from operators.fastinit import EmptyBatches, slot_constructor
from operators.kernels import chain_step
from operators.normalize import Normalizer
from operators.window import Accumulators, WindowAggregator, WindowBuckets, WindowState

__all__ = ["ChainState", "OperatorChain"]

_CACHE_MAX_DEVICES = 4096
_MAX_POINTS = 1024
"""Larger batches go one by one: the compiled path's buffers are sized for every point flipping four
checks (~350 bytes a point), which costs more than the per-call savings on a big (coalesced) batch."""
_NO_ALERTS: list[Alert] = []
_NO_AGGS: list[AggBatch] = []
_NO_CHECKS = AnomalyState.empty()
"""The compiled path's anomaly state of a device without checks (never written: no point has a row)."""
_NO_PF, _NO_PI = np.empty((6, 0)), np.empty((3, 0), np.int64)
_NO_SF, _NO_SI, _NO_SQ = np.empty(0), np.empty(0, np.int64), np.empty(0, np.uint8)
"""The kernel's state buffers when it updates the state in place (it does not use them)."""
_new_db_state = slot_constructor(DeadbandState)
_new_acc = slot_constructor(Accumulators)
_new_buckets = slot_constructor(WindowBuckets)
_new_batch = slot_constructor(PointBatch, checked=True)
"""The compiled path's batches: the kernel makes their columns of one length (``__post_init__``'s check)."""

ChainResult = tuple["ChainState", PointBatch, list[AggBatch], PointBatch, list[Alert]]
"""``(state, points, aggregates, late, alerts)`` of one batch (see :meth:`OperatorChain.process`)."""


@dataclass(slots=True, eq=False)
class ChainState:
    """One device's state in the chain: the states of its deadband, windows and checks.

    Updated in place by :meth:`OperatorChain.process`: the anomaly state always is; the deadband's
    and the windows' states are replaced by new objects, whose arrays the compiled path then updates
    in place poll after poll until they are handed out (:meth:`OperatorChain.hand_out`: a snapshot
    that keeps them). Pickles.
    """

    deadband: DeadbandState
    window: WindowState | None = None
    anomaly: AnomalyState | None = None


@dataclass(slots=True, eq=False)
class _Prepared:
    """A device's parameters and state rows aligned to its batches' tag ids, cached while the batch's
    ``tag_ids`` array and the states' ``tag_ids`` arrays stay the same objects."""

    tag_ids: npt.NDArray[np.int64]
    db_ids: npt.NDArray[np.int64]
    an_ids: npt.NDArray[np.int64]
    w_ids: npt.NDArray[np.int64] | None
    """The open bucket's ``tag_ids`` that ``pk``'s last row is aligned to."""
    pn: npt.NDArray[np.float64]
    """Per point: gain, bias, clamp low, clamp high, band."""
    pk: npt.NDArray[np.int64]
    """Per point: deadband state row, heartbeat (ns), anomaly state row, open bucket row (-1: none)."""
    pf: npt.NDArray[np.float64]
    pi: npt.NDArray[np.int64]
    empty: PointBatch
    """The device's shared empty batch."""
    owned: tuple[DeadbandState, WindowState] | None = None
    """The deadband and window states the last poll's compiled path made, while no one else holds
    their arrays: the next poll of these states updates them in place (see :meth:`OperatorChain.hand_out`)."""


class OperatorChain:
    """normalize → deadband → windows → anomaly checks over the batches of one device at a time.

    The four cores keep their settings and contracts; the chain only sequences them. What passes the
    deadband goes to the windows and the checks (an empty pass skips both, as the Bytewax adapters'
    chain does: the deadband step drops empty batches). ``now_ns`` is the windows' clock. A detector
    without checks is skipped while the device has no anomaly state (it could raise nothing).
    """

    def __init__(
        self,
        normalizer: Normalizer,
        deadband: Deadband,
        windows: WindowAggregator,
        detector: AnomalyDetector,
    ) -> None:
        self.normalizer = normalizer
        self.deadband = deadband
        self.windows = windows
        self.detector = detector
        self._compile()

    def _compile(self) -> None:
        self._one_window = len(self.windows.windows_s) == 1
        self._checks = bool(self.detector.checks)
        self._check_ids = np.array(sorted(self.detector.checks), np.int64)
        self._prepared: dict[str, _Prepared] = {}
        self._empty = EmptyBatches(_CACHE_MAX_DEVICES)

    def __getstate__(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("normalizer", "deadband", "windows", "detector")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._compile()

    def __repr__(self) -> str:
        return f"OperatorChain({self.normalizer!r}, {self.deadband!r}, {self.windows!r}, {self.detector!r})"

    def swapped(self, params: Mapping[str, Any]) -> OperatorChain:
        """This chain with one device's parameters (a hot config change, see :mod:`operators.hot`).

        ``params`` maps operator kinds (``normalize``, ``deadband``, ``anomaly``) to the parameters
        of the device's tags, as :class:`~core.device_config.DeviceConfig` carries them; each kind
        present replaces its core (``None``: no parameters, as the per-operator steps' swap reads
        it), kinds absent keep theirs. The windows are the flow's, never a device's.
        """

        def pick(kind: str, current: Any, make: Any) -> Any:
            return make(params[kind] or {}) if kind in params else current

        return OperatorChain(
            pick("normalize", self.normalizer, Normalizer),
            pick("deadband", self.deadband, Deadband),
            self.windows,
            pick("anomaly", self.detector, AnomalyDetector),
        )

    def initial_state(self) -> ChainState:
        return ChainState(self.deadband.initial_state())

    def process(self, state: ChainState | None, batch: PointBatch, now_ns: int) -> ChainResult:
        """One batch through the chain: ``(state, points, aggregates, late, alerts)``.

        ``points`` are the normalized points that passed the deadband, ``aggregates`` and ``late``
        the windows' closed buckets and late points, ``alerts`` the checks' flips. ``state`` is
        updated in place and returned (a fresh one when ``None`` was given); ``batch`` is not modified.
        """
        if state is None:
            state = self.initial_state()
        fast = self._process_fast(state, batch, now_ns)
        if fast is not None:
            return fast
        device = batch.device_id
        b = self.normalizer.apply(batch)
        state.deadband, b = self.deadband.process(state.deadband, b)
        if not len(b):
            return state, b, _NO_AGGS, self._empty(device), _NO_ALERTS
        state.window, aggs, late = self.windows.process(state.window, b, now_ns)
        if not self._checks and state.anomaly is None:  # (a state left by removed checks clears its flags)
            return state, b, aggs, late, _NO_ALERTS
        state.anomaly, alerts = self.detector.process(state.anomaly, b)
        return state, b, aggs, late, alerts

    def _process_fast(self, state: ChainState, batch: PointBatch, now_ns: int) -> ChainResult | None:
        """The common case in one compiled call, or ``None`` (nothing touched).

        Needs a device that has state in the windows and, with checks, in the detector (its first
        poll goes one by one), one window length with one open bucket, a batch of at most
        ``_MAX_POINTS`` points with unique tags, and the batch in every core's common case (see each
        core's ``_process_fast``); the kernel checks the rest. Tags without a deadband or without
        checks are common too: they pass the deadband unconditionally, and the checks skip them.
        """
        ws, an, db = state.window, state.anomaly, state.deadband
        if ws is None or batch.text or not self._one_window:
            return None
        if an is None:
            if self._checks:
                return None  # the device's first checks make its state (the detector's general path)
            an = _NO_CHECKS
        wb = ws.windows[0]
        if len(wb.open) != 1:
            return None
        tags = batch.tag_ids
        n = tags.shape[0]
        if n > _MAX_POINTS:
            return None
        device = batch.device_id
        p = self._prepared.get(device)
        db_ids = db.tag_ids
        if p is None or p.tag_ids is not tags or p.db_ids is not db_ids or p.an_ids is not an.tag_ids:
            p = self._prepare(device, tags, db, an, p)
            if p is None:
                return None
        acc = wb.open[0]
        a_ids = acc.tag_ids
        if p.w_ids is not a_ids:
            _align_bucket(p, a_ids)
        w = self.windows
        n_db, n_acc = db_ids.shape[0], a_ids.shape[0]
        r = n_acc + n  # a window row in the buffers: room for every point's tag being new
        owned = p.owned
        inplace = owned is not None and owned[1] is ws and owned[0] is db
        if inplace:
            sf, si, sq = _NO_SF, _NO_SI, _NO_SQ
        else:
            sf, si, sq = np.empty(n_db + 6 * r), np.empty(n_db + 4 * r, np.int64), np.empty(n_db, np.uint8)
        of, oi, oq = np.empty(13 * n), np.empty(30 * n, np.int64), np.empty(n, np.uint8)
        while True:
            status, k, size, t_hi, flips, clamped = chain_step(
                tags, batch.values, batch.ts_ns, batch.quality, p.pn, p.pk, db.value, db.ts_ns, db.quality,
                a_ids, acc.count, acc.sum, acc.min, acc.max, acc.first_ts, acc.first, acc.last_ts, acc.last,
                acc.area, acc.bucket_ns, wb.window_ns, ws.watermark_ns, ws.closed_ns, w._lateness_ns,
                now_ns + w._future_ns, p.pf, p.pi, an.high_on, an.low_on, an.stuck_on, an.rate_on, an.ml_on,
                an.stuck_ref, an.stuck_start_ns, an.stuck_count, an.rate_value, an.rate_ns,
                sf, si, sq, of, oi, oq, inplace,
            )  # fmt: skip
            if status != -2:
                break
            inplace = False  # tags new to the bucket: it grows into new buffers (nothing was written)
            sf, si, sq = np.empty(n_db + 6 * r), np.empty(n_db + 4 * r, np.int64), np.empty(n_db, np.uint8)
        if status < 0:
            return None
        empty = p.empty
        if status == 0:  # nothing passed the deadband: no state changed
            return state, empty, _NO_AGGS, empty, _NO_ALERTS
        if k == n:
            points = _new_batch(device, batch.ts_ns, tags, of[:n], oq if clamped else batch.quality, None)
        else:
            points = _new_batch(device, oi[:k], oi[n : n + k], of[:k], oq[:k], None)
        if status == 2:  # the deadband and bucket arrays were updated in place
            state.window = w.advanced(ws, ws.windows, t_hi, device, now_ns)
            p.owned = db, state.window
            if not flips:
                return state, points, _NO_AGGS, empty, _NO_ALERTS
            return state, points, _NO_AGGS, empty, self._alerts(device, n, flips, of, oi)
        if n_db:  # (no tag with a deadband: its state stays empty)
            state.deadband = _new_db_state(db_ids, sf[:n_db], si[:n_db], sq)
        f0 = n_db
        if size == n_acc:  # no tag new to the bucket: its ids and first samples stay
            ids, first_ts, first = a_ids, acc.first_ts, acc.first
        else:
            ids = si[f0 + 3 * r : f0 + 3 * r + size]
            first_ts, first = si[f0 + r : f0 + r + size], sf[f0 + 3 * r : f0 + 3 * r + size]
            p.w_ids = ids  # the kernel aligned ``p.pk``'s bucket rows to the grown bucket
        new_acc = _new_acc(
            acc.bucket_ns, ids, si[f0 : f0 + size], sf[f0 : f0 + size], sf[f0 + r : f0 + r + size],
            sf[f0 + 2 * r : f0 + 2 * r + size], first_ts, first,
            si[f0 + 2 * r : f0 + 2 * r + size], sf[f0 + 4 * r : f0 + 4 * r + size],
            sf[f0 + 5 * r : f0 + 5 * r + size],
        )  # fmt: skip
        buckets = _new_buckets(wb.window_ns, (new_acc,), wb.carry_tag_ids, wb.carry_ts_ns, wb.carry_values)
        state.window = w.advanced(ws, (buckets,), t_hi, device, now_ns)
        # new arrays that only this state holds (the ids and first samples it shares with the last
        # one are never written in place): the next poll updates them (unless they are handed out)
        p.owned = state.deadband, state.window
        if not flips:
            return state, points, _NO_AGGS, empty, _NO_ALERTS
        return state, points, _NO_AGGS, empty, self._alerts(device, n, flips, of, oi)

    def _alerts(
        self, device: str, n: int, flips: int, of: npt.NDArray[np.float64], oi: npt.NDArray[np.int64]
    ) -> list[Alert]:
        return self.detector._flip_alerts(
            device,
            oi[2 * n : 2 * n + 7 * flips].reshape(flips, 7).tolist(),
            of[n : n + 3 * flips].reshape(flips, 3).tolist(),
        )

    def hand_out(self, state: ChainState) -> None:
        """``state``'s deadband and window arrays are held elsewhere from now on (a snapshot that
        keeps the objects, aggregates of its open buckets): the compiled path no longer updates them
        in place, its next poll writes new ones."""
        window = state.window
        p = self._prepared.get(window.device_id) if window is not None else None
        if p is not None:
            p.owned = None

    def _prepare(
        self,
        device: str,
        tags: npt.NDArray[np.int64],
        db: DeadbandState,
        an: AnomalyState,
        last: _Prepared | None,
    ) -> _Prepared | None:
        """Align the parameters and state rows to a batch's tags (``None``: not the common case);
        ``last`` is the device's previous alignment, kept when only the tag array object changed."""
        if (
            last is not None
            and last.db_ids is db.tag_ids
            and last.an_ids is an.tag_ids
            and np.array_equal(last.tag_ids, tags)
        ):
            last.tag_ids = tags
            return last
        norm = self.normalizer._align(device, tags)
        band = self.deadband._align(device, tags)
        if not norm.all_configured or band.occurrence is not None:
            return None  # (``occurrence`` is set when a tag repeats: the kernel needs unique tags)
        pos = _rows(db.tag_ids, tags)
        if np.any((pos < 0) & band.configured):
            return None  # a tag the deadband has not published yet: its general path adds it
        pos[~band.configured] = -1
        if len(an.tag_ids):
            fp = self.detector._fast_params(an.tag_ids)
            if fp is None:
                return None
            pf, pi = fp.pf, fp.pi
        else:
            pf, pi = _NO_PF, _NO_PI
        checks = _rows(an.tag_ids, tags)
        if np.any((checks < 0) & (_rows(self._check_ids, tags) >= 0)):
            return None  # a tag whose checks have no state row yet: the detector's general path adds it
        rows = np.stack([pos, band.heartbeat_ns, checks, np.zeros_like(pos)])
        p = _Prepared(
            tag_ids=tags,
            db_ids=db.tag_ids,
            an_ids=an.tag_ids,
            w_ids=None,
            pn=np.stack([norm.gain, norm.bias, norm.low, norm.high, band.band]).astype(np.float64),
            pk=rows.astype(np.int64),
            pf=pf,
            pi=pi,
            empty=self._empty(device),
        )
        if len(self._prepared) >= _CACHE_MAX_DEVICES:
            self._prepared.clear()
        self._prepared[device] = p
        return p


def _rows(ids: npt.NDArray[np.int64], tags: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each tag's row in the sorted ``ids``, -1 where it has none."""
    pos = np.searchsorted(ids, tags)
    inside = pos < len(ids)
    found = np.zeros(len(tags), np.bool_)
    found[inside] = ids[pos[inside]] == tags[inside]
    return np.where(found, pos, -1).astype(np.int64)


def _align_bucket(p: _Prepared, a_ids: npt.NDArray[np.int64]) -> None:
    """Point ``p``'s bucket rows at the open bucket with tag ids ``a_ids`` (a new minute, new tags)."""
    p.pk[3] = _rows(a_ids, p.tag_ids)
    p.w_ids = a_ids
