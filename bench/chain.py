"""The operator chain of the micro-benchmark: normalize → deadband → 1-minute windows → range, stuck and
rate-of-change checks, on 100-tag device batches; run on the cores directly or as a Bytewax flow.

>>> from bench.load import Load
>>> load = Load(devices=2, tags=4, change_rate=1.0)
>>> chain = Chain.for_load(load)
>>> r = chain.run_cores(load.batches(polls=3, ts0_ns=1_700_000_000 * 10**9))
>>> r.points_in, r.points_out > 0
(24, True)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from bench.load import Load
from core.batch import PointBatch
from core.records import AggBatch
from operators import bytewax_ops
from operators.anomaly import AnomalyDetector, RangeCheck, RateCheck, StuckCheck, TagChecks
from operators.anomaly_bytewax import detect_anomalies
from operators.chain import OperatorChain
from operators.chain_bytewax import Item, Picked, chain_to_sinks, output_picked
from operators.deadband import Deadband, DeadbandParams
from operators.normalize import NormalizeParams, Normalizer
from operators.window import WindowAggregator
from operators.window_bytewax import tumbling_aggregate


@dataclass
class ChainResult:
    points_in: int = 0
    points_out: int = 0
    """Points that left the deadband (into the windows and the checks)."""
    aggregates: int = 0
    alerts: int = 0
    seconds: float = 0.0

    @property
    def points_per_s(self) -> float:
        return self.points_in / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Chain:
    """The four cores of the chain; :meth:`run_cores` and :meth:`build_flow` run them as one
    :class:`~operators.chain.OperatorChain` (one compiled call per poll in the common case) unless
    ``fused`` is off (the cores one by one, each with its own Bytewax step)."""

    normalizer: Normalizer
    deadband: Deadband
    windows: WindowAggregator
    detector: AnomalyDetector
    states: dict[str, Any] = field(default_factory=dict)
    fused: bool = True

    @classmethod
    def for_load(cls, load: Load) -> Chain:
        ids = [int(t) for i in range(load.devices) for t in load.tag_ids(i)]
        checks = TagChecks(
            range=RangeCheck(low=100.0, high=6400.0, hysteresis=10.0),
            stuck=StuckCheck(samples=30),
            rate=RateCheck(max_per_s=50_000.0),
        )
        return cls(
            normalizer=Normalizer(
                {t: NormalizeParams(scale=0.1, clamp_low=0.0, clamp_high=6500.0) for t in ids}
            ),
            deadband=Deadband({t: DeadbandParams(absolute=0.05) for t in ids}),
            windows=WindowAggregator([60.0], lateness_s=0.0, max_future_s=3600.0),
            detector=AnomalyDetector(dict.fromkeys(ids, checks)),
        )

    @cached_property
    def operator_chain(self) -> OperatorChain:
        return OperatorChain(self.normalizer, self.deadband, self.windows, self.detector)

    def run_cores(self, batches: Iterable[PointBatch]) -> ChainResult:
        """Push ``batches`` through the cores in this process (no engine); event time is the clock
        (a batch's last timestamp)."""
        if self.fused:
            return self._run_fused(batches)
        r = ChainResult()
        normalize, deadband, windows, detector = (
            self.normalizer.apply,
            self.deadband.process,
            self.windows.process,
            self.detector.process,
        )
        states = self.states
        points_in = points_out = n_aggs = n_alerts = 0  # locals: the loop is what is measured
        t0 = time.perf_counter()
        for batch in batches:
            st = states.get(batch.device_id)
            if st is None:
                st = states[batch.device_id] = [self.deadband.initial_state(), None, None]
            points_in += len(batch)
            b = normalize(batch)
            st[0], b = deadband(st[0], b)
            n = len(b)
            if not n:
                continue
            points_out += n
            st[1], aggs, _late = windows(st[1], b, int(b.ts_ns[-1]))
            if aggs:
                n_aggs += sum(len(a) for a in aggs)
            st[2], alerts = detector(st[2], b)
            n_alerts += len(alerts)
        r.seconds = time.perf_counter() - t0
        r.points_in, r.points_out, r.aggregates, r.alerts = points_in, points_out, n_aggs, n_alerts
        return r

    def _run_fused(self, batches: Iterable[PointBatch]) -> ChainResult:
        r = ChainResult()
        process = self.operator_chain.process
        states = self.states
        points_in = points_out = n_aggs = n_alerts = 0  # locals: the loop is what is measured
        t0 = time.perf_counter()
        for batch in batches:
            device = batch.device_id
            points_in += len(batch)
            states[device], points, aggs, _late, alerts = process(
                states.get(device), batch, int(batch.ts_ns[-1])
            )
            points_out += len(points)
            if aggs:
                n_aggs += sum(len(a) for a in aggs)
            n_alerts += len(alerts)
        r.seconds = time.perf_counter() - t0
        r.points_in, r.points_out, r.aggregates, r.alerts = points_in, points_out, n_aggs, n_alerts
        return r

    def build_flow(self, flow: Dataflow, batches: Stream[PointBatch], sink: DynamicSink[Any]) -> None:
        """The same chain with the project's Bytewax adapters; every output goes to ``sink``.

        Fused: one keyed stateful step for the whole chain, whose output each sink picks its items
        from, as compiled flows run it (:func:`operators.chain_bytewax.chain_to_sinks`); else four
        (normalize is a map before the key)."""
        if self.fused:
            items = cast("Stream[Item]", batches)  # (a stream of batches is one of items)
            out = chain_to_sinks("chain", op.key_on("key", items, _device), self.operator_chain)
            output_picked(
                "out",
                out.stream,
                [Picked("out_points", sink, out.points), Picked("out_derived", sink, out.derived)],
            )
            return
        s = bytewax_ops.normalize("normalize", batches, self.normalizer)
        keyed = op.key_on("key", s, _device)
        passed = bytewax_ops.deadband("deadband", keyed, self.deadband)
        aggs, _late = tumbling_aggregate("window", passed, self.windows)
        alerts = detect_anomalies("checks", passed, self.detector)
        op.output("out_points", passed, sink)
        op.output("out_aggs", aggs, sink)
        op.output("out_alerts", alerts, sink)


def _device(item: Item) -> str:
    return item.device_id


class CountingSink(DynamicSink[Any]):
    """Counts points (batches by length), aggregate rows and alerts; ``first`` and ``last`` are the
    wall-clock times (``time.time()``, comparable between processes) of the first and last write."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts = counts if counts is not None else {"points": 0, "aggregates": 0, "alerts": 0}
        self.first: float | None = None
        self.last: float | None = None
        self.last_cpu: float | None = None
        """This process's CPU time (all threads) at the last write."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPart:
        return _CountingPart(self, step_id)


class _CountingPart(StatelessSinkPartition[Any]):
    def __init__(self, owner: CountingSink, step_id: str) -> None:
        self.owner = owner
        self.kind = step_id.rsplit("out_", 1)[-1]

    def write_batch(self, items: list[Any]) -> None:
        counts = self.owner.counts
        if self.kind == "derived":  # aggregates and alerts in one stream (the compiled flows' shape)
            for item in items:
                if isinstance(item, AggBatch):
                    counts["aggregates"] = counts.get("aggregates", 0) + len(item)
                else:
                    counts["alerts"] = counts.get("alerts", 0) + 1
        else:
            n = 0
            for item in items:
                value = item[1] if isinstance(item, tuple) else item
                n += len(value) if hasattr(value, "__len__") else 1
            counts[self.kind] = counts.get(self.kind, 0) + n
        now = time.time()
        if self.owner.first is None:
            self.owner.first = now
        self.owner.last = now
        self.owner.last_cpu = time.process_time()


class SyntheticSource(FixedPartitionedSource[PointBatch, None]):
    """Device polls from memory as fast as the flow takes them: one partition per device.

    Each partition cycles through ``pool`` pre-built value arrays with advancing timestamps and stops
    after ``polls`` polls (``StopIteration``), so a cluster's processes split the devices between them.
    ``started`` is the wall-clock time (``time.time()``) of this process's first poll, ``started_cpu``
    the process's CPU time then.
    """

    def __init__(self, load: Load, polls: int, ts0_ns: int, *, per_call: int = 20, pool: int = 16) -> None:
        self.load = load
        self.polls = polls
        self.ts0_ns = ts0_ns
        self.per_call = per_call
        self.pool = pool
        self.started: float | None = None
        self.started_cpu: float | None = None

    def list_parts(self) -> list[str]:
        return [self.load.device_id(i) for i in range(self.load.devices)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SyntheticPart:
        i = int(for_part.removeprefix("dev"))
        one = Load(devices=1, tags=self.load.tags, change_rate=self.load.change_rate)
        pool = one.batches(self.pool, 0, seed=i + 1)
        return _SyntheticPart(
            for_part,
            self.load.tag_ids(i),
            values=[b.values for b in pool],
            polls=self.polls,
            ts0_ns=self.ts0_ns,
            source=self,
        )


class _SyntheticPart(StatefulSourcePartition[PointBatch, None]):
    def __init__(
        self,
        device: str,
        tag_ids: Any,
        *,
        values: Sequence[Any],
        polls: int,
        ts0_ns: int,
        source: SyntheticSource,
    ) -> None:
        self.device = device
        self.tag_ids = tag_ids
        self.values = values
        self.left = polls
        self.k = 0
        self.ts0_ns = ts0_ns
        self.step_ns = round(source.load.poll_interval_s * 1e9)
        self.per_call = source.per_call
        self.source = source

    def next_batch(self) -> list[PointBatch]:
        if self.source.started is None:
            self.source.started = time.time()
            self.source.started_cpu = time.process_time()
        if self.left <= 0:
            raise StopIteration
        n = min(self.per_call, self.left)
        out = []
        for _ in range(n):
            k = self.k
            out.append(
                PointBatch.from_values(
                    self.device,
                    self.tag_ids,
                    self.values[k % len(self.values)],
                    ts_ns=self.ts0_ns + k * self.step_ns,
                )
            )
            self.k += 1
        self.left -= n
        return out

    def snapshot(self) -> None:
        return None
