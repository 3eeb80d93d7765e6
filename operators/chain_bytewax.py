"""Bytewax 0.21 adapter for :class:`operators.chain.OperatorChain`: the whole chain as one keyed
stateful step (instead of normalize, deadband, windows and checks as four), then one cheap
``flat_map_value`` per output stream.

Each keyed step costs Bytewax ``on_batch`` → ``on_item`` → ``notify_at`` per item (~4-5 µs per
device poll); one step for the chain pays it once. The windows' idle closing and end-of-input flush
are :class:`~operators.window_bytewax.WindowLogic`'s; the snapshot is the device's
:class:`~operators.chain.ChainState` pickled to bytes (its anomaly part is updated in place).

Hot config items (:class:`~core.device_config.DeviceConfig`) get what the per-operator steps give
them (``operators.bytewax_ops``, ``window_bytewax``, ``anomaly_bytewax``): the device's normalize,
deadband and (with checks) anomaly parameters are swapped, the state of tags that stay is kept
(:func:`~operators.hot.keep_tags`), and the item is passed on, ahead of the device's next points,
to the points and the derived streams. The swapped parameters travel in the snapshot
(:class:`~operators.hot.Swapped`, against the flow version the process started with) — the
normalize parameters too, which the per-operator flow's stateless map step cannot keep.

>>> from bytewax.dataflow import Dataflow
>>> import bytewax.operators as op
>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> from core.batch import PointBatch
>>> from operators.anomaly import AnomalyDetector, RangeCheck, TagChecks
>>> from operators.deadband import Deadband, DeadbandParams
>>> from operators.normalize import NormalizeParams, Normalizer
>>> from operators.window import WindowAggregator
>>> chain = OperatorChain(Normalizer({1: NormalizeParams(scale=0.1)}), Deadband({1: DeadbandParams(absolute=1.0)}),
...                       WindowAggregator([60.0]), AnomalyDetector({1: TagChecks(range=RangeCheck(high=50.0))}))
>>> t0 = 1_700_000_040 * 10**9
>>> polls = [PointBatch.from_values("oven", [1], [v], ts_ns=t0 + i * 10**9) for i, v in enumerate([100, 105, 600])]
>>> flow = Dataflow("doc")
>>> keyed = op.key_on("key", op.input("in", flow, TestingSource(polls)), lambda b: b.device_id)
>>> out = operator_chain("chain", keyed, chain, clock=lambda: t0)
>>> points, alerts, aggs = [], [], []
>>> op.output("points", out.points, TestingSink(points))
>>> op.output("alerts", out.alerts, TestingSink(alerts))
>>> op.output("aggs", out.aggs, TestingSink(aggs))
>>> run_main(flow)
>>> [b.values.tolist() for _, b in points], [a.message for _, a in alerts], [a.count.tolist() for _, a in aggs]
([[10.0], [60.0]], ['value 60 above high limit 50'], [[2]])
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.records import AggBatch, Alert
from core.wakeups import announce_due
from operators.chain import ChainResult, ChainState, OperatorChain
from operators.hot import HotCore, Swapped, keep_tags
from operators.window_bytewax import ns_to_utc_ceil

__all__ = ["HOT_KINDS", "ChainLogic", "ChainStreams", "SinkStreams", "chain_to_sinks", "operator_chain"]

Item = PointBatch | DeviceConfig
Out = tuple[PointBatch, list[AggBatch], PointBatch, list[Alert]]
"""What the step emits per batch: ``(points, aggregates, late, alerts)``; a config item is emitted as is."""
Emitted = Out | DeviceConfig
Snapshot = bytes | ChainState | Swapped[bytes | ChainState]
"""A device's state as the step snapshots it: pickled when it has an anomaly part (changed in place),
else a new :class:`ChainState` around the same deadband and window states (those are replaced, never
changed): Bytewax takes a snapshot of every touched key at every epoch, with or without recovery, and
pickling the whole state each time was ~6 % of the worker at 500 devices (BENCHMARKS.md)."""

HOT_KINDS = ("normalize", "deadband", "anomaly")
"""The parameter kinds of a :class:`DeviceConfig` the chain swaps (see :meth:`OperatorChain.swapped`)."""


class ChainLogic(StatefulLogic[Item, Emitted, Snapshot]):
    """One device's chain state around the framework-free :class:`OperatorChain`.

    ``kinds`` are the parameter kinds a config item swaps: a flow without an anomaly node leaves
    ``anomaly`` out, so its chain keeps a detector without checks whatever the item carries.
    """

    def __init__(
        self,
        core: OperatorChain,
        clock: Callable[[], int],
        state: ChainState | None,
        kinds: tuple[str, ...] = HOT_KINDS,
    ) -> None:
        self.hot = HotCore(core, kinds, core.swapped)
        self.clock = clock
        self.state = state if state is not None else core.initial_state()

    @classmethod
    def resume(
        cls,
        core: OperatorChain,
        clock: Callable[[], int],
        resume_state: Snapshot | None,
        kinds: tuple[str, ...] = HOT_KINDS,
        start_version: int = 0,
    ) -> ChainLogic:
        """The logic rebuilt from its snapshot; swapped parameters in it are used only when newer
        than ``start_version`` (the flow version the process started with)."""
        logic = cls(core, clock, None, kinds)
        raw = logic.hot.resume(resume_state, start_version)
        if raw is not None:
            logic.state = pickle.loads(raw) if isinstance(raw, bytes) else _copy(raw)
        return logic

    @property
    def core(self) -> OperatorChain:
        return self.hot.core

    def on_item(self, value: Item) -> tuple[Iterable[Emitted], bool]:
        if value.__class__ is DeviceConfig:
            return self._swap(value), StatefulLogic.RETAIN  # type: ignore[arg-type]
        now = self.clock()
        result: ChainResult = self.hot.core.process(self.state, value, now)  # type: ignore[arg-type]
        self.state = result[0]
        return (result[1:],), StatefulLogic.RETAIN

    def _swap(self, item: DeviceConfig) -> tuple[DeviceConfig]:
        self.hot.swap(item)
        keep = item.tag_ids
        st = self.state
        st.deadband = keep_tags(st.deadband, keep)
        st.window = keep_tags(st.window, keep)
        st.anomaly = keep_tags(st.anomaly, keep)
        return (item,)

    def on_notify(self) -> tuple[Iterable[Emitted], bool]:
        window = self.state.window
        if window is None:
            return (), StatefulLogic.RETAIN
        now = self.clock()
        windows = self.hot.core.windows
        self.state.window, aggs = windows.close_idle(window, now)
        if windows.expired(self.state.window, now):
            # A quiet device's window state goes (bounded state, as the window step discards its
            # key); its deadband and checks state and its swapped parameters stay, as theirs do.
            self.state.window = None
        return self._aggs(aggs), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Emitted], bool]:
        # Open buckets go out as partial results and stay: a resumed run completes them (upserts).
        window = self.state.window
        return self._aggs([] if window is None else self.hot.core.windows.flush(window)), StatefulLogic.RETAIN

    def _aggs(self, aggs: list[AggBatch]) -> Iterable[Emitted]:
        if not aggs:
            return ()
        empty = PointBatch.empty(aggs[0].device_id)
        return ((empty, aggs, empty, []),)

    def notify_at(self) -> datetime | None:
        at = self._notify_at()
        announce_due(self, at)  # a napping worker wakes by then (core.wakeups)
        return at

    def _notify_at(self) -> datetime | None:
        window = self.state.window
        if window is None:
            return None
        windows = self.hot.core.windows
        due = windows.next_deadline(window)
        if due is None:
            due = windows.expiry_ns(window)
            if due is None:
                return None
        if self.clock is not time.time_ns:
            due = time.time_ns() + (due - self.clock())
        return ns_to_utc_ceil(due)

    def snapshot(self) -> Snapshot:
        state = self.state
        kept: bytes | ChainState = (
            _copy(state) if state.anomaly is None else pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        )
        return self.hot.snapshot(kept)


def _copy(state: ChainState) -> ChainState:
    """A new container around the same (never changed) deadband and window states; the logic assigns
    new ones to its own container."""
    return ChainState(state.deadband, state.window, state.anomaly)


def _stateful(
    up: KeyedStream[PointBatch] | KeyedStream[Item],
    chain: OperatorChain,
    clock: Callable[[], int],
    kinds: tuple[str, ...],
    start_version: int,
) -> KeyedStream[Emitted]:
    """The chain's one keyed stateful step, named ``logic_<window labels>`` (a changed window set
    starts from fresh state on recovery, as with :func:`~operators.window_bytewax.tumbling_aggregate`)."""
    labels = "_".join(chain.windows.labels)

    def build(resume: Snapshot | None) -> ChainLogic:
        return ChainLogic.resume(chain, clock, resume, kinds, start_version)

    return op.stateful(f"logic_{labels}", up, build)


@dataclass(frozen=True)
class ChainStreams:
    points: KeyedStream[PointBatch | DeviceConfig]
    """The normalized points that passed the deadband (what the sinks store and publish), and the
    config items."""
    aggs: KeyedStream[AggBatch | DeviceConfig]
    late: KeyedStream[PointBatch]
    alerts: KeyedStream[Alert | DeviceConfig]


def _points(out: Emitted) -> Iterable[PointBatch | DeviceConfig]:
    if out.__class__ is DeviceConfig:
        return (out,)  # type: ignore[return-value]
    return (out[0],) if len(out[0]) else ()  # type: ignore[index]


def _aggs(out: Emitted) -> Iterable[AggBatch | DeviceConfig]:
    return (out,) if out.__class__ is DeviceConfig else out[1]  # type: ignore[index,return-value]


def _late(out: Emitted) -> Iterable[PointBatch]:
    if out.__class__ is DeviceConfig:
        return ()
    return (out[2],) if len(out[2]) else ()  # type: ignore[index]


def _alerts(out: Emitted) -> Iterable[Alert | DeviceConfig]:
    return (out,) if out.__class__ is DeviceConfig else out[3]  # type: ignore[index,return-value]


@operator
def operator_chain(
    step_id: str,
    up: KeyedStream[PointBatch],
    chain: OperatorChain,
    clock: Callable[[], int] = time.time_ns,
    *,
    start_version: int = 0,
    kinds: tuple[str, ...] = HOT_KINDS,
) -> ChainStreams:
    """normalize → deadband → windows → checks per device key in one stateful step.

    ``clock`` returns ns since the epoch (injected for tests); ``start_version`` is the flow version
    the process started with and ``kinds`` what a config item swaps (see :class:`ChainLogic`). A
    config item in ``up`` (typed as batches for the callers that send none) comes out on ``points``,
    ``aggs`` and ``alerts``, as the per-operator steps pass it on.
    """
    out = _stateful(up, chain, clock, kinds, start_version)
    return ChainStreams(
        points=op.flat_map_value("points", out, _points),
        aggs=op.flat_map_value("aggs", out, _aggs),
        late=op.flat_map_value("late", out, _late),
        alerts=op.flat_map_value("alerts", out, _alerts),
    )


@dataclass(frozen=True)
class SinkStreams:
    points: Stream[PointBatch | DeviceConfig]
    """The points for the sinks, and the config items, un-keyed."""
    derived: Stream[AggBatch | Alert | DeviceConfig]
    """Aggregates, alerts and the config items (once each), un-keyed."""


@operator
def chain_to_sinks(
    step_id: str,
    up: KeyedStream[Item],
    chain: OperatorChain,
    *,
    count_late: Callable[[int], None] | None = None,
    clock: Callable[[], int] = time.time_ns,
    start_version: int = 0,
    kinds: tuple[str, ...] = HOT_KINDS,
) -> SinkStreams:
    """:func:`operator_chain` shaped for a compiled flow: two un-keyed output steps of one Python
    call per activation each (``flat_map_batch``), instead of four per-item splits, each stream's
    un-keying and a merge. ``count_late`` is given the number of late points of each batch that has
    some (they go nowhere else, as with the window step's late stream in a compiled flow).
    """
    out = _stateful(up, chain, clock, kinds, start_version)

    def points(kvs: list[tuple[str, Emitted]]) -> list[PointBatch | DeviceConfig]:
        got: list[PointBatch | DeviceConfig] = []
        for _k, v in kvs:
            if v.__class__ is DeviceConfig:
                got.append(v)  # type: ignore[arg-type]
            elif len(v[0]):  # type: ignore[index]
                got.append(v[0])  # type: ignore[index]
        return got

    def derived(kvs: list[tuple[str, Emitted]]) -> list[AggBatch | Alert | DeviceConfig]:
        got: list[AggBatch | Alert | DeviceConfig] = []
        for _k, v in kvs:
            if v.__class__ is DeviceConfig:
                got.append(v)  # type: ignore[arg-type]
                continue
            _p, aggs, late, alerts = v  # type: ignore[misc]
            if aggs:
                got += aggs
            if alerts:
                got += alerts
            if count_late is not None and len(late):
                count_late(len(late))
        return got

    return SinkStreams(
        points=op.flat_map_batch("points", out, points),
        derived=op.flat_map_batch("derived", out, derived),
    )
