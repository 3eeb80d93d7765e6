"""Bytewax 0.21 adapter for :class:`operators.window.WindowAggregator`.

``op.stateful`` with our own :class:`WindowLogic`, not ``stateful_map`` (it deep-copies state every
epoch) and not bytewax's windowing (``EventClock`` busy-loops at 100 % CPU when
``wait_for_system_duration > 0`` or event time lags arrival: bytewax issue #578). An idle flow sleeps
until the next bucket is due (``notify_at``); EOF flushes the open buckets; the snapshot is the state
object itself, which the core never mutates, so snapshotting costs nothing.

The stateful step id carries the window labels (``<step_id>_1s_1m``): a changed window set starts
from fresh state on recovery while the rest of the flow resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.records import AggBatch
from core.wakeups import announce_due
from operators.hot import keep_tags
from operators.window import WindowAggregator, WindowState

Tagged = tuple[str, AggBatch | PointBatch | DeviceConfig]
"""``("agg", AggBatch)``, ``("late", PointBatch)`` or ``("config", DeviceConfig)`` (on the aggregates'
side: the sink of the aggregates learns the device's new tags from it)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_to_utc_ceil(ts_ns: int) -> datetime:
    """Aware UTC datetime at or just after ``ts_ns`` (rounded up to the microsecond).

    Rounding up matters: a notification that fires a few hundred ns early would find nothing due
    and be rescheduled for a time already past, again and again.

    >>> ns_to_utc_ceil(1_500)
    datetime.datetime(1970, 1, 1, 0, 0, 0, 2, tzinfo=datetime.timezone.utc)
    """
    return _EPOCH + timedelta(microseconds=-(-ts_ns // 1000))


class WindowLogic(StatefulLogic[PointBatch | DeviceConfig, Tagged, WindowState]):
    """Per-device logic: feeds batches to the core, closes idle buckets on notification.

    A config item drops the open buckets and carried samples of tags the device no longer has
    (their partial aggregates are not emitted); the window lengths are the node's, not the
    device's, so there are no parameters to swap.
    """

    def __init__(self, core: WindowAggregator, clock: Callable[[], int], state: WindowState | None) -> None:
        self.core = core
        self.clock = clock
        self.state = state if state is not None else core.initial_state()

    @staticmethod
    def _tag(aggs: list[AggBatch], late: PointBatch | None = None) -> Sequence[Tagged]:
        if not aggs and (late is None or not len(late)):
            return ()  # most batches close nothing and are on time
        out: list[Tagged] = [("agg", a) for a in aggs]
        if late is not None and len(late):
            out.append(("late", late))
        return out

    def on_item(self, value: PointBatch | DeviceConfig) -> tuple[Iterable[Tagged], bool]:
        if isinstance(value, DeviceConfig):
            self.state = keep_tags(self.state, value.tag_ids)
            return [("config", value)], StatefulLogic.RETAIN
        now = self.clock()
        self.state, aggs, late = self.core.process(self.state, value, now)
        # Only a key that never received a point is expired here; it is not worth keeping.
        return self._tag(aggs, late), self.core.expired(self.state, now)

    def on_notify(self) -> tuple[Iterable[Tagged], bool]:
        now = self.clock()
        self.state, aggs = self.core.close_idle(self.state, now)
        # A device quiet for `tag_ttl_s` with nothing open is forgotten (bounded key space).
        return self._tag(aggs), self.core.expired(self.state, now)

    def on_eof(self) -> tuple[Iterable[Tagged], bool]:
        # Emit the open buckets as partial results but keep them: a resumed execution completes
        # them and emits them again (sinks are idempotent upserts keyed by bucket and tag).
        return self._tag(self.core.flush(self.state)), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        at = self._notify_at()
        announce_due(self, at)  # a napping worker wakes by then (core.wakeups)
        return at

    def _notify_at(self) -> datetime | None:
        due = self.core.next_deadline(self.state)
        if due is None:
            due = self.core.expiry_ns(self.state)
            if due is None:
                return None
        if self.clock is not time.time_ns:
            # An injected clock: translate its deadline into the engine's wall clock.
            due = time.time_ns() + (due - self.clock())
        return ns_to_utc_ceil(due)

    def snapshot(self) -> WindowState:
        return self.state  # never mutated by the core: no copy needed


@dataclass(frozen=True)
class WindowStreams:
    aggs: KeyedStream[AggBatch | DeviceConfig]
    late: KeyedStream[PointBatch]


@operator
def _tumbling(
    step_id: str,
    up: KeyedStream[PointBatch | DeviceConfig],
    aggregator: WindowAggregator,
    clock: Callable[[], int],
) -> WindowStreams:
    tagged = op.stateful("logic", up, lambda resume: WindowLogic(aggregator, clock, resume))
    split = op.branch("split", tagged, lambda kv: kv[1][0] != "late")
    aggs: KeyedStream[AggBatch | DeviceConfig] = op.map_value("aggs", split.trues, lambda t: t[1])  # type: ignore[arg-type,return-value]
    late: KeyedStream[PointBatch] = op.map_value("late", split.falses, lambda t: t[1])  # type: ignore[arg-type,return-value]
    return WindowStreams(aggs, late)


def tumbling_aggregate(
    step_id: str,
    up: KeyedStream[PointBatch | DeviceConfig],
    core: WindowAggregator,
    clock: Callable[[], int] = time.time_ns,
) -> tuple[KeyedStream[AggBatch | DeviceConfig], KeyedStream[PointBatch]]:
    """Tumbling-window aggregates and late points of a stream of point batches keyed by device.

    The step is named ``f"{step_id}_{'_'.join(core.labels)}"`` so that a changed window set gets
    fresh state on recovery. ``clock`` returns ns since the epoch (injected for tests).
    """
    out = _tumbling(f"{step_id}_{'_'.join(core.labels)}", up, core, clock)
    return out.aggs, out.late
