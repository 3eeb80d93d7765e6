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
import numpy as np
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.records import OeeResult
from core.wakeups import announce_due
from operators.expressions import CalculatedState, CalculatedTags
from operators.hot import HotCore, Swapped, keep_tags
from operators.oee import OeeCalculator, OeeState
from operators.swinging_door import SwingingDoor, SwingingDoorParams, SwingingDoorState
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

Item = PointBatch | DeviceConfig


# -- calculated tags --------------------------------------------------------------------------------


def _same_core(core: CalculatedTags | None) -> CalculatedTags | None:
    return core


def realign(core: CalculatedTags, state: CalculatedState | None) -> CalculatedState:
    """A state for ``core``'s inputs that keeps the rows of the inputs ``state`` already had."""
    fresh = core.initial_state()
    if state is None or not len(state.tag_ids) or not len(fresh.tag_ids):
        return fresh
    pos = np.minimum(np.searchsorted(state.tag_ids, fresh.tag_ids), len(state.tag_ids) - 1)
    found = state.tag_ids[pos] == fresh.tag_ids
    if not found.any():
        return fresh
    return CalculatedState(
        tag_ids=fresh.tag_ids,
        value=np.where(found, state.value[pos], fresh.value),
        ts_ns=np.where(found, state.ts_ns[pos], fresh.ts_ns),
        quality=np.where(found, state.quality[pos], fresh.quality).astype(np.uint8),
        seen=np.where(found, state.seen[pos], fresh.seen),
    )


class CalculatedLogic(StatefulLogic[Item, Item, CalculatedState | Swapped[CalculatedState | None]]):
    """One device's calculated tags; batches of other devices pass through (and keep no state).

    A config item swaps in the device's new calculations (or none); the kept input values of
    inputs that stay are carried over, so a calculation over unchanged inputs continues at once.
    """

    def __init__(
        self,
        cores: Mapping[str, CalculatedTags],
        state: CalculatedState | Swapped[CalculatedState | None] | None,
        start_version: int = 0,
    ) -> None:
        self.cores = cores
        self.hot: HotCore[CalculatedTags | None] | None = None
        self._realign = False
        if isinstance(state, Swapped):
            hot: HotCore[CalculatedTags | None] = HotCore(None, "calculate", _same_core)
            state = hot.resume(state, start_version)
            self.hot = hot if hot.swapped else None
            self._realign = not hot.swapped  # the spec's calculations may take other inputs
        self.state: CalculatedState | None = state  # type: ignore[assignment]

    def _core(self, device_id: str) -> CalculatedTags | None:
        if self.hot is not None:
            return self.hot.core
        return self.cores.get(device_id)

    def on_item(self, value: Item) -> tuple[Iterable[Item], bool]:
        if isinstance(value, DeviceConfig):
            if self.hot is None:
                self.hot = HotCore(self.cores.get(value.device_id), "calculate", _same_core)
            self.hot.swap(value)
            core = self.hot.core
            self.state = None if core is None else realign(core, self.state)
            return (value,), StatefulLogic.RETAIN
        core = self._core(value.device_id)
        if core is None:
            # No calculations: keep the logic only to remember a swap (it says "none now").
            return (value,), StatefulLogic.RETAIN if self.hot is not None else StatefulLogic.DISCARD
        if self.state is None or self._realign:
            self.state, self._realign = realign(core, self.state), False
        self.state, out = core.apply(self.state, value)
        return (out,), StatefulLogic.RETAIN

    def snapshot(self) -> CalculatedState | Swapped[CalculatedState | None]:
        if self.hot is not None:  # only ever set together with a swap
            return Swapped(self.hot.version, self.hot.params, self.state)
        assert self.state is not None  # a discarded logic is never snapshotted
        return self.state


@operator
def _calculated(
    step_id: str, up: KeyedStream[Item], cores: Mapping[str, CalculatedTags], start_version: int
) -> KeyedStream[Item]:
    return op.stateful("logic", up, lambda resume: CalculatedLogic(cores, resume, start_version))


def calculated_tags(
    step_id: str,
    up: KeyedStream[Item],
    core: CalculatedTags | Mapping[str, CalculatedTags],
    start_version: int = 0,
) -> KeyedStream[Item]:
    """Each batch with its device's calculated points appended (one core, or one per device id)."""
    cores = {core.device_id: core} if isinstance(core, CalculatedTags) else dict(core)
    return _calculated(step_id, up, cores, start_version)


# -- swinging door ----------------------------------------------------------------------------------


def _sdt_core(params: Mapping[int, SwingingDoorParams] | None) -> SwingingDoor:
    return SwingingDoor(params or {})


_SdtSnapshot = tuple[str, SwingingDoorState] | Swapped[tuple[str, SwingingDoorState]]


class SwingingDoorLogic(StatefulLogic[Item, Item, _SdtSnapshot]):
    """One device's SDT; EOF archives the held points (a resumed run continues from them).

    A config item archives nothing: tags that stay keep their held point and door, removed tags
    are dropped (their held point with them), new tags start with their first point.
    """

    def __init__(self, core: SwingingDoor, resume: _SdtSnapshot | None, start_version: int = 0) -> None:
        self.hot = HotCore(core, "swinging_door", _sdt_core)
        resumed: tuple[str, SwingingDoorState] | None = self.hot.resume(resume, start_version)
        self.device_id, self.state = resumed if resumed is not None else ("", core.initial_state())

    @property
    def core(self) -> SwingingDoor:
        return self.hot.core

    def on_item(self, value: Item) -> tuple[Iterable[Item], bool]:
        self.device_id = value.device_id
        if isinstance(value, DeviceConfig):
            self.hot.swap(value)
            self.state = keep_tags(self.state, value.tag_ids)
            return (value,), StatefulLogic.RETAIN
        self.state, out = self.hot.core.process(self.state, value)
        return ((out,) if len(out) else _EMPTY), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Item], bool]:
        self.state, out = self.hot.core.flush(self.state, self.device_id)
        return ((out,) if len(out) else _EMPTY), StatefulLogic.RETAIN

    def snapshot(self) -> _SdtSnapshot:
        return self.hot.snapshot((self.device_id, self.state))


@operator
def _swinging_door(
    step_id: str, up: KeyedStream[Item], sdt: SwingingDoor, start_version: int
) -> KeyedStream[Item]:
    return op.stateful("logic", up, lambda resume: SwingingDoorLogic(sdt, resume, start_version))


def swinging_door(
    step_id: str, up: KeyedStream[Item], core: SwingingDoor, start_version: int = 0
) -> KeyedStream[Item]:
    """The archived points of each device's batches (empty outputs are not emitted)."""
    return _swinging_door(step_id, up, core, start_version)


# -- OEE --------------------------------------------------------------------------------------------


class OeeLogic(StatefulLogic[Item, OeeResult, OeeState]):
    """One device's machines. Sleeps until the next period end (+ lateness) when idle."""

    def __init__(self, core: OeeCalculator, clock: Callable[[], int], state: OeeState | None) -> None:
        self.core = core
        self.clock = clock
        self.state = state if state is not None else core.initial_state()

    def on_item(self, value: Item) -> tuple[Iterable[OeeResult], bool]:
        if isinstance(value, DeviceConfig):
            # Machines are flow-level (a change to them redeploys); their tags are checked to
            # exist when the change is validated, so nothing here depends on the device's tags.
            return _EMPTY, StatefulLogic.RETAIN
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
            at = None
        else:
            if self.clock is not time.time_ns:
                due = time.time_ns() + (due - self.clock())  # translate an injected clock to wall time
            at = ns_to_utc_ceil(due)
        announce_due(self, at)  # a napping worker wakes by then (core.wakeups)
        return at

    def snapshot(self) -> OeeState:
        return self.state


@operator
def _oee(
    step_id: str, up: KeyedStream[Item], calculator: OeeCalculator, clock: Callable[[], int]
) -> KeyedStream[OeeResult]:
    return op.stateful("logic", up, lambda resume: OeeLogic(calculator, clock, resume))


def oee(
    step_id: str,
    up: KeyedStream[Item],
    core: OeeCalculator,
    clock: Callable[[], int] = time.time_ns,
) -> KeyedStream[OeeResult]:
    """OEE results of the machines on each device, one item per closed period.

    ``clock`` returns ns since the epoch (injected in tests); it closes periods of quiet machines.
    """
    return _oee(step_id, up, core, clock)
