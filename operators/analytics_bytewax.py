"""Bytewax 0.21 adapters for calculated tags, swinging-door compression and OEE.

Each is ``op.stateful`` with its own :class:`~bytewax.operators.StatefulLogic` (not
``stateful_map``, which deep-copies every touched state at every epoch). The cores never modify a
state they were given, so ``snapshot()`` returns the state object itself: no copy. Streams are
keyed by device id; one logic (and one state) per key.

``@operator`` refuses a parameter named ``core`` (it shadows a field of Bytewax's ``Operator``),
so each public function is a plain wrapper around a private ``@operator``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.records import OeeResult
from operators.expressions import CalculatedState, CalculatedTags
from operators.oee import OeeCalculator, OeeState
from operators.swinging_door import SwingingDoor, SwingingDoorState
from operators.window_bytewax import ns_to_utc_ceil

__all__ = [
    "CalculatedLogic",
    "OeeLogic",
    "SwingingDoorLogic",
    "calculated_tags",
    "oee",
    "swinging_door",
]

_EMPTY: tuple[()] = ()


# -- calculated tags --------------------------------------------------------------------------------


class CalculatedLogic(StatefulLogic[PointBatch, PointBatch, CalculatedState]):
    """One device's calculated tags; batches of other devices pass through (and keep no state)."""

    def __init__(self, cores: Mapping[str, CalculatedTags], state: CalculatedState | None) -> None:
        self.cores = cores
        self.state = state

    def on_item(self, value: PointBatch) -> tuple[Iterable[PointBatch], bool]:
        core = self.cores.get(value.device_id)
        if core is None:
            return (value,), StatefulLogic.DISCARD
        if self.state is None:
            self.state = core.initial_state()
        self.state, out = core.apply(self.state, value)
        return (out,), StatefulLogic.RETAIN

    def snapshot(self) -> CalculatedState:
        assert self.state is not None  # a discarded logic is never snapshotted
        return self.state


@operator
def _calculated(
    step_id: str, up: KeyedStream[PointBatch], cores: Mapping[str, CalculatedTags]
) -> KeyedStream[PointBatch]:
    return op.stateful("logic", up, lambda resume: CalculatedLogic(cores, resume))


def calculated_tags(
    step_id: str,
    up: KeyedStream[PointBatch],
    core: CalculatedTags | Mapping[str, CalculatedTags],
) -> KeyedStream[PointBatch]:
    """Each batch with its device's calculated points appended (one core, or one per device id)."""
    cores = {core.device_id: core} if isinstance(core, CalculatedTags) else dict(core)
    return _calculated(step_id, up, cores)


# -- swinging door ----------------------------------------------------------------------------------


class SwingingDoorLogic(StatefulLogic[PointBatch, PointBatch, tuple[str, SwingingDoorState]]):
    """One device's SDT; EOF archives the held points (a resumed run continues from them)."""

    def __init__(self, core: SwingingDoor, resume: tuple[str, SwingingDoorState] | None) -> None:
        self.core = core
        self.device_id, self.state = resume if resume is not None else ("", core.initial_state())

    def on_item(self, value: PointBatch) -> tuple[Iterable[PointBatch], bool]:
        self.device_id = value.device_id
        self.state, out = self.core.process(self.state, value)
        return ((out,) if len(out) else _EMPTY), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[PointBatch], bool]:
        self.state, out = self.core.flush(self.state, self.device_id)
        return ((out,) if len(out) else _EMPTY), StatefulLogic.RETAIN

    def snapshot(self) -> tuple[str, SwingingDoorState]:
        return self.device_id, self.state


@operator
def _swinging_door(step_id: str, up: KeyedStream[PointBatch], sdt: SwingingDoor) -> KeyedStream[PointBatch]:
    return op.stateful("logic", up, lambda resume: SwingingDoorLogic(sdt, resume))


def swinging_door(step_id: str, up: KeyedStream[PointBatch], core: SwingingDoor) -> KeyedStream[PointBatch]:
    """The archived points of each device's batches (empty outputs are not emitted)."""
    return _swinging_door(step_id, up, core)


# -- OEE --------------------------------------------------------------------------------------------


class OeeLogic(StatefulLogic[PointBatch, OeeResult, OeeState]):
    """One device's machines. Sleeps until the next period end (+ lateness) when idle."""

    def __init__(self, core: OeeCalculator, clock: Callable[[], int], state: OeeState | None) -> None:
        self.core = core
        self.clock = clock
        self.state = state if state is not None else core.initial_state()

    def on_item(self, value: PointBatch) -> tuple[Iterable[OeeResult], bool]:
        self.state, results = self.core.process(self.state, value, self.clock())
        return results, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[OeeResult], bool]:
        self.state, results = self.core.close_idle(self.state, self.clock())
        return results, StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[OeeResult], bool]:
        # Partial results of the open periods; they stay open so a resumed run completes them
        # (and emits them again: sinks upsert by machine, period and start).
        return self.core.flush(self.state), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self.core.next_deadline(self.state)
        if due is None:
            return None
        if self.clock is not time.time_ns:
            due = time.time_ns() + (due - self.clock())  # translate an injected clock to wall time
        return ns_to_utc_ceil(due)

    def snapshot(self) -> OeeState:
        return self.state


@operator
def _oee(
    step_id: str, up: KeyedStream[PointBatch], calculator: OeeCalculator, clock: Callable[[], int]
) -> KeyedStream[OeeResult]:
    return op.stateful("logic", up, lambda resume: OeeLogic(calculator, clock, resume))


def oee(
    step_id: str,
    up: KeyedStream[PointBatch],
    core: OeeCalculator,
    clock: Callable[[], int] = time.time_ns,
) -> KeyedStream[OeeResult]:
    """OEE results of the machines on each device, one item per closed period.

    ``clock`` returns ns since the epoch (injected in tests); it closes periods of quiet machines.
    """
    return _oee(step_id, up, core, clock)
