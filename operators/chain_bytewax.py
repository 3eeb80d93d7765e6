"""Bytewax 0.21 adapter for :class:`operators.chain.OperatorChain`: the whole chain as one keyed
stateful step (instead of normalize, deadband, windows and checks as four), then one cheap
``flat_map_value`` per output stream.

Each keyed step costs Bytewax ``on_batch`` → ``on_item`` → ``notify_at`` per item (~4-5 µs per
device poll); one step for the chain pays it once. The windows' idle closing, end-of-input flush
and device expiry are :class:`~operators.window_bytewax.WindowLogic`'s; the snapshot is the
device's :class:`~operators.chain.ChainState` pickled to bytes (its anomaly part is updated in place).

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
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.records import AggBatch, Alert
from core.wakeups import announce_due
from operators.chain import ChainResult, ChainState, OperatorChain
from operators.window_bytewax import ns_to_utc_ceil

__all__ = ["ChainLogic", "ChainStreams", "operator_chain"]

Out = tuple[PointBatch, list[AggBatch], PointBatch, list[Alert]]
"""What the step emits per batch: ``(points, aggregates, late, alerts)``."""


class ChainLogic(StatefulLogic[PointBatch, Out, bytes]):
    """One device's chain state around the framework-free :class:`OperatorChain`."""

    def __init__(self, core: OperatorChain, clock: Callable[[], int], state: ChainState | None) -> None:
        self.core = core
        self.clock = clock
        self.state = state if state is not None else core.initial_state()

    def on_item(self, value: PointBatch) -> tuple[Iterable[Out], bool]:
        now = self.clock()
        result: ChainResult = self.core.process(self.state, value, now)
        self.state = result[0]
        return (result[1:],), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Out], bool]:
        window = self.state.window
        if window is None:
            return (), StatefulLogic.RETAIN
        now = self.clock()
        self.state.window, aggs = self.core.windows.close_idle(window, now)
        return self._aggs(aggs), self.core.windows.expired(self.state.window, now)

    def on_eof(self) -> tuple[Iterable[Out], bool]:
        # Open buckets go out as partial results and stay: a resumed run completes them (upserts).
        window = self.state.window
        return self._aggs([] if window is None else self.core.windows.flush(window)), StatefulLogic.RETAIN

    def _aggs(self, aggs: list[AggBatch]) -> Iterable[Out]:
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
        windows = self.core.windows
        due = windows.next_deadline(window)
        if due is None:
            due = windows.expiry_ns(window)
            if due is None:
                return None
        if self.clock is not time.time_ns:
            due = time.time_ns() + (due - self.clock())
        return ns_to_utc_ceil(due)

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True)
class ChainStreams:
    points: KeyedStream[PointBatch]
    """The normalized points that passed the deadband (what the sinks store and publish)."""
    aggs: KeyedStream[AggBatch]
    late: KeyedStream[PointBatch]
    alerts: KeyedStream[Alert]


def _points(out: Out) -> Iterable[PointBatch]:
    return (out[0],) if len(out[0]) else ()


def _aggs(out: Out) -> Iterable[AggBatch]:
    return out[1]


def _late(out: Out) -> Iterable[PointBatch]:
    return (out[2],) if len(out[2]) else ()


def _alerts(out: Out) -> Iterable[Alert]:
    return out[3]


@operator
def operator_chain(
    step_id: str, up: KeyedStream[PointBatch], chain: OperatorChain, clock: Callable[[], int] = time.time_ns
) -> ChainStreams:
    """normalize → deadband → windows → checks per device key in one stateful step.

    The stateful step is named ``logic_<window labels>`` (a changed window set starts from fresh
    state on recovery, as with :func:`~operators.window_bytewax.tumbling_aggregate`); ``clock``
    returns ns since the epoch (injected for tests). Device config items (hot swaps) are not
    handled here: flows that swap parameters at run time use the per-operator adapters.
    """
    labels = "_".join(chain.windows.labels)

    def build(resume: bytes | None) -> ChainLogic:
        return ChainLogic(chain, clock, None if resume is None else pickle.loads(resume))

    out = op.stateful(f"logic_{labels}", up, build)
    return ChainStreams(
        points=op.flat_map_value("points", out, _points),
        aggs=op.flat_map_value("aggs", out, _aggs),
        late=op.flat_map_value("late", out, _late),
        alerts=op.flat_map_value("alerts", out, _alerts),
    )
