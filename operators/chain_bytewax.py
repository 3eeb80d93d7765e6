"""Bytewax 0.21 adapter for :class:`operators.chain.OperatorChain`: the whole chain as one keyed
stateful step (instead of normalize, deadband, windows and checks as four), then one cheap
``flat_map_value`` per output stream (:func:`operator_chain`), or none: a compiled flow's sinks read
the step's output themselves (:func:`chain_to_sinks`, :func:`output_picked`).

Each keyed step costs Bytewax ``on_batch`` → ``notify_at`` per item (~4-5 µs per device poll); one
step for the chain pays it once, and :class:`ChainLogic` is a ``StatefulBatchLogic`` itself (no
``op.stateful`` shim calling ``on_item`` from ``on_batch``). The windows' idle closing and
end-of-input flush are :class:`~operators.window_bytewax.WindowLogic`'s; the snapshot is the
device's :class:`~operators.chain.ChainState` pickled to bytes (its anomaly part is updated in
place).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.records import AggBatch, Alert
from core.wakeups import announce_due
from operators.chain import ChainResult, ChainState, OperatorChain
from operators.hot import HotCore, Swapped, keep_tags
from operators.window_bytewax import ns_to_utc_ceil

__all__ = [
    "HOT_KINDS",
    "ChainLogic",
    "ChainOutput",
    "ChainStreams",
    "Picked",
    "chain_to_sinks",
    "operator_chain",
    "output_picked",
]

Item = PointBatch | DeviceConfig
Out = tuple[PointBatch, list[AggBatch], PointBatch, list[Alert]]
"""What the step emits per batch: ``(points, aggregates, late, alerts)``; a config item is emitted as is."""
Emitted = Out | DeviceConfig
Snapshot = bytes | ChainState | Swapped[bytes | ChainState]
"""A device's state as the step snapshots it: pickled when it has an anomaly part (changed in place),
else a new :class:`ChainState` around the same deadband and window states (those are replaced, never
changed): Bytewax takes a snapshot of every touched key at every epoch, with or without recovery, and
pickling the whole state each time was ~6 % of the worker at 500 devices (BENCHMARKS.md)."""

X = TypeVar("X")

DUE_GRID_NS = 50_000_000
"""A device's timer is rounded up to this grid (50 ms). Its deadline moves with every poll's transport
lag (:meth:`~operators.window.WindowAggregator.next_deadline`); rounded, it mostly stays put, and an
unchanged one is handed back as it was, without a new ``datetime`` or a new entry in the worker's
nap (~5 us a poll, BENCHMARKS.md). A bucket closes at most this much later; lateness is seconds."""
_UNSET = -1

HOT_KINDS = ("normalize", "deadband", "anomaly")
"""The parameter kinds of a :class:`DeviceConfig` the chain swaps (see :meth:`OperatorChain.swapped`)."""


class ChainLogic(StatefulBatchLogic[Item, Emitted, Snapshot]):
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
        self._due: int | None = _UNSET
        """The last timer handed out (ns on the grid, ``None``: none) and its ``datetime``."""
        self._at: datetime | None = None

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

    def on_batch(self, values: list[Item]) -> tuple[Iterable[Emitted], bool]:
        """Each item's output in order: a batch's ``(points, aggregates, late, alerts)``, a config
        item itself (after swapping the device's parameters)."""
        if len(values) == 1:  # (one poll per activation: the common case)
            return (self._one(values[0]),), StatefulBatchLogic.RETAIN
        return [self._one(v) for v in values], StatefulBatchLogic.RETAIN

    def on_item(self, value: Item) -> tuple[Iterable[Emitted], bool]:
        """``on_batch`` of one item (``op.stateful``'s shape, for callers that feed items one by one)."""
        return (self._one(value),), StatefulBatchLogic.RETAIN

    def _one(self, value: Item) -> Emitted:
        if value.__class__ is DeviceConfig:
            return self._swap(value)  # type: ignore[arg-type]
        result: ChainResult = self.hot.core.process(self.state, value, self.clock())  # type: ignore[arg-type]
        self.state = result[0]
        return result[1:]

    def _swap(self, item: DeviceConfig) -> DeviceConfig:
        self.hot.swap(item)
        keep = item.tag_ids
        st = self.state
        st.deadband = keep_tags(st.deadband, keep)
        st.window = keep_tags(st.window, keep)
        st.anomaly = keep_tags(st.anomaly, keep)
        return item

    def on_notify(self) -> tuple[Iterable[Emitted], bool]:
        # the nap dropped the timer that brought this call: the next one is announced, even if unchanged
        self._due = _UNSET
        window = self.state.window
        if window is None:
            return (), StatefulBatchLogic.RETAIN
        now = self.clock()
        windows = self.hot.core.windows
        self.state.window, aggs = windows.close_idle(window, now)
        if windows.expired(self.state.window, now):
            # A quiet device's window state goes (bounded state, as the window step discards its
            # key); its deadband and checks state and its swapped parameters stay, as theirs do.
            self.state.window = None
        return self._aggs(aggs), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Emitted], bool]:
        # Open buckets go out as partial results and stay: a resumed run completes them (upserts).
        window = self.state.window
        self.hot.core.hand_out(self.state)  # the open buckets' aggregates hold their arrays
        return self._aggs(
            [] if window is None else self.hot.core.windows.flush(window)
        ), StatefulBatchLogic.RETAIN

    def _aggs(self, aggs: list[AggBatch]) -> Iterable[Emitted]:
        if not aggs:
            return ()
        empty = PointBatch.empty(aggs[0].device_id)
        return ((empty, aggs, empty, []),)

    def notify_at(self) -> datetime | None:
        due = self._due_ns()
        if due == self._due:  # (Bytewax asks after every batch; the nap has this one already)
            return self._at
        at = None if due is None else ns_to_utc_ceil(due)
        self._due, self._at = due, at
        announce_due(self, at)  # a napping worker wakes by then (core.wakeups)
        return at

    def _due_ns(self) -> int | None:
        """When :meth:`on_notify` has work (wall-clock ns, rounded up to :data:`DUE_GRID_NS`)."""
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
        return -(-due // DUE_GRID_NS) * DUE_GRID_NS

    def snapshot(self) -> Snapshot:
        state = self.state
        kept: bytes | ChainState
        if state.anomaly is None:
            kept = _copy(state)
            self.hot.core.hand_out(state)  # the snapshot holds its arrays: the next poll writes new ones
        else:
            kept = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        return self.hot.snapshot(kept)


def _copy(state: ChainState) -> ChainState:
    """A new container around the same deadband and window states, which are not changed from then
    on (see :meth:`OperatorChain.hand_out`); the logic assigns new ones to its own container."""
    return ChainState(state.deadband, state.window, state.anomaly)


@operator
def _logic(
    step_id: str,
    up: KeyedStream[PointBatch] | KeyedStream[Item],
    build: Callable[[Snapshot | None], ChainLogic],
) -> KeyedStream[Emitted]:
    # ``stateful_batch`` under the name ``op.stateful`` gives its own (``<step_id>.stateful_batch``):
    # snapshots taken when the step was an ``op.stateful`` resume.
    return op.stateful_batch("stateful_batch", up, build)


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

    return _logic(f"logic_{labels}", up, build)


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


def chain_points(kvs: list[tuple[str, Emitted]]) -> list[PointBatch | DeviceConfig]:
    """The sinks' items of a batch of the chain step's output: the points that passed (non-empty
    batches) and the config items."""
    got: list[PointBatch | DeviceConfig] = []
    for _k, v in kvs:
        if v.__class__ is DeviceConfig:
            got.append(v)  # type: ignore[arg-type]
        elif len(v[0]):  # type: ignore[index]
            got.append(v[0])  # type: ignore[index]
    return got


def chain_derived(
    count_late: Callable[[int], None] | None,
) -> Callable[[list[tuple[str, Emitted]]], list[AggBatch | Alert | DeviceConfig]]:
    """What picks the derived sink's items from a batch of the chain step's output: aggregates,
    alerts and config items; ``count_late`` is given the number of late points of each batch that has
    some (they go nowhere else, as with the window step's late stream in a compiled flow)."""

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

    return derived


@dataclass(frozen=True)
class ChainOutput:
    """The chain step's keyed output and what picks each kind of sink's items from a batch of it
    (:func:`output_picked`)."""

    stream: KeyedStream[Emitted]
    points: Callable[[list[tuple[str, Emitted]]], list[PointBatch | DeviceConfig]]
    """The points for the sinks, and the config items (:func:`chain_points`)."""
    derived: Callable[[list[tuple[str, Emitted]]], list[AggBatch | Alert | DeviceConfig]]
    """Aggregates, alerts and the config items, once each (:func:`chain_derived`)."""


@operator
def _chain_step(
    step_id: str,
    up: KeyedStream[Item],
    chain: OperatorChain,
    *,
    clock: Callable[[], int],
    kinds: tuple[str, ...],
    start_version: int,
) -> KeyedStream[Emitted]:
    return _stateful(up, chain, clock, kinds, start_version)


def chain_to_sinks(
    step_id: str,
    up: KeyedStream[Item],
    chain: OperatorChain,
    *,
    count_late: Callable[[int], None] | None = None,
    clock: Callable[[], int] = time.time_ns,
    start_version: int = 0,
    kinds: tuple[str, ...] = HOT_KINDS,
) -> ChainOutput:
    """:func:`operator_chain` shaped for a compiled flow: no step after the chain's own. Each sink
    reads the step's output and picks its items as it writes them (:func:`output_picked`), instead of
    a step per output stream (a Python call and the engine's scheduling per activation each: about
    5 µs per poll, BENCHMARKS.md). ``count_late``: see :func:`chain_derived`.
    """
    out = _chain_step(step_id, up, chain, clock=clock, kinds=kinds, start_version=start_version)
    return ChainOutput(out, chain_points, chain_derived(count_late))


@dataclass(frozen=True)
class Picked(Generic[X]):
    """A sink of :func:`output_picked`: the step id it would have as a step of its own (its node id),
    the sink, and what makes its items of a batch of the stream (:class:`ChainOutput`'s ``points``
    or ``derived``)."""

    step_id: str
    sink: Sink[Any]
    """A ``DynamicSink`` (:func:`output_picked`)."""
    pick: Callable[[list[X]], list[Any]]


def output_picked(step_id: str, up: Stream[X], outputs: Sequence[Picked[X]]) -> None:
    """One output step, ``step_id`` (the sink's own when there is one), writing each batch of ``up``
    to every sink of ``outputs``: to each the items its ``pick`` makes of the batch (nothing when
    that is empty).

    A step per sink costs the engine's scheduling and a Python call per activation each, and a step
    per kind of output before them the same again (BENCHMARKS.md). Each sink is built under the
    step id it would have as a step of its own (the flow's id, a dot, its own), so its partitions
    are named as before; the sinks must be dynamic (``TypeError`` naming the sink otherwise).
    """
    for o in outputs:
        if not isinstance(o.sink, DynamicSink):
            raise TypeError(f"sink {o.step_id!r}: a DynamicSink is needed here, got {type(o.sink).__name__}")
    if not outputs:
        raise ValueError(f"{step_id!r}: no sinks to write to")
    op.output(outputs[0].step_id if len(outputs) == 1 else step_id, up, _FanOut(list(outputs)))


class _FanOut(DynamicSink[X]):
    def __init__(self, outputs: list[Picked[X]]) -> None:
        self.outputs = outputs

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FanOutPartition[X]:
        prefix = step_id.rpartition(".")[0]
        parts = _FanOutPartition[X]([])
        try:
            for o in self.outputs:
                own = f"{prefix}.{o.step_id}" if prefix else o.step_id
                sink = cast("DynamicSink[Any]", o.sink)  # (checked by output_picked)
                parts.parts.append((sink.build(own, worker_index, worker_count), o.pick))
        except BaseException:
            parts.close()  # the sinks built so far (connections, spool threads)
            raise
        return parts


class _FanOutPartition(StatelessSinkPartition[X]):
    def __init__(
        self, parts: list[tuple[StatelessSinkPartition[Any], Callable[[list[X]], list[Any]]]]
    ) -> None:
        self.parts = parts

    def write_batch(self, items: list[X]) -> None:
        last: Callable[[list[X]], list[Any]] | None = None
        got: list[Any] = []
        for part, pick in self.parts:
            if pick is not last:  # (the sinks of the points share one pick)
                got, last = pick(items), pick
            if got:
                part.write_batch(got)

    def close(self) -> None:
        """Close every sink (each flushes what it holds) even when one fails; then raise the first
        failure."""
        first: BaseException | None = None
        for part, _pick in self.parts:
            try:
                part.close()
            except BaseException as exc:  # re-raised below, once the others are closed
                first = first or exc
        if first is not None:
            raise first
