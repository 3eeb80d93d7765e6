"""Thin Bytewax 0.21 adapters for the operator cores; the logic lives in the cores.

>>> from bytewax.dataflow import Dataflow
>>> import bytewax.operators as op
>>> from bytewax.testing import TestingSink, TestingSource, run_main
>>> from core.batch import PointBatch
>>> from operators.deadband import Deadband, DeadbandParams
>>> from operators.normalize import NormalizeParams, Normalizer
>>> polls = [PointBatch.from_values("oven", [1, 2], [v, 5.0], ts_ns=i) for i, v in enumerate([200, 201, 230])]
>>> flow = Dataflow("doc")
>>> s = op.input("devices", flow, TestingSource(polls))
>>> s = normalize("normalize", s, Normalizer({1: NormalizeParams(scale=0.1)}))
>>> keyed = deadband("deadband", op.key_on("key", s, lambda b: b.device_id),
...                  Deadband({1: DeadbandParams(absolute=1.0), 2: DeadbandParams(absolute=1.0)}))
>>> got: list = []
>>> op.output("out", keyed, TestingSink(got))
>>> run_main(flow)
>>> [(key, b.values.tolist()) for key, b in got]
[('oven', [20.0, 5.0]), ('oven', [23.0])]
"""

from __future__ import annotations

from collections.abc import Iterable

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.device_config import DeviceConfig
from operators.deadband import Deadband, DeadbandParams, DeadbandState
from operators.hot import HotCore, Swapped, keep_tags
from operators.normalize import NormalizeParams, Normalizer

__all__ = ["HotNormalizer", "deadband", "normalize"]

Item = PointBatch | DeviceConfig

_NOTHING: tuple[PointBatch, ...] = ()


@operator
def normalize(step_id: str, up: Stream[PointBatch], normalizer: Normalizer) -> Stream[PointBatch]:
    """Scale, convert and clamp every batch (see :class:`~operators.normalize.Normalizer`)."""
    return op.map("apply", up, normalizer.apply)


def _normalizer(params: dict[int, NormalizeParams] | None) -> Normalizer:
    return Normalizer(params or {})


class HotNormalizer:
    """Normalization with per-device parameters swapped by config items (a stateless map step).

    Batches of a device use the spec's normalizer until a :class:`DeviceConfig` of that device
    passes; from then on a normalizer built from the item's ``normalize`` parameters. Items pass
    through unchanged. A map step keeps no state: after a restart the spec (or the retained
    config notification, applied again by the source) sets the parameters.
    """

    def __init__(self, base: Normalizer) -> None:
        self.base = base
        self._by_device: dict[str, Normalizer] = {}

    def __call__(self, item: Item) -> Item:
        if isinstance(item, DeviceConfig):
            self._by_device[item.device_id] = _normalizer(item.params.get("normalize"))
            return item
        return self._by_device.get(item.device_id, self.base).apply(item)


def _deadband_core(params: dict[int, DeadbandParams] | None) -> Deadband:
    return Deadband(params or {})


class DeadbandLogic(StatefulLogic[Item, Item, DeadbandState | Swapped[DeadbandState]]):
    """Per-device Bytewax logic: threads the device's :class:`DeadbandState` through the core.

    The core returns a new state object for every change and never modifies an old one, so
    :meth:`snapshot` hands Bytewax the current state as is: no deep copy per epoch (unlike
    ``stateful_map``). Empty output batches are dropped. The logic is never discarded: the key
    space is the set of configured devices.
    """

    def __init__(
        self,
        core: Deadband,
        state: DeadbandState | Swapped[DeadbandState] | None = None,
        start_version: int = 0,
    ) -> None:
        self.hot = HotCore(core, "deadband", _deadband_core)
        resumed = self.hot.resume(state, start_version)
        self.state: DeadbandState = core.initial_state() if resumed is None else resumed

    @property
    def core(self) -> Deadband:
        return self.hot.core

    def on_item(self, value: Item) -> tuple[Iterable[Item], bool]:
        if isinstance(value, DeviceConfig):
            self.hot.swap(value)
            self.state = keep_tags(self.state, value.tag_ids)
            return (value,), StatefulLogic.RETAIN
        self.state, out = self.hot.core.process(self.state, value)
        return ((out,) if len(out) else _NOTHING), StatefulLogic.RETAIN

    def snapshot(self) -> DeadbandState | Swapped[DeadbandState]:
        return self.hot.snapshot(self.state)


@operator
def deadband(
    step_id: str, up: KeyedStream[Item], deadband_core: Deadband, start_version: int = 0
) -> KeyedStream[Item]:
    """Deadband per device key: ``(device_id, batch)`` in, ``(device_id, published points)`` out.

    Config items swap the device's deadbands and pass on; ``start_version`` is the flow version
    the process started with (a resumed snapshot with older swapped parameters yields to the spec).
    (The core parameter cannot be called ``core``: Bytewax's ``Operator`` has a field of that name.)
    """

    def build(resume: DeadbandState | Swapped[DeadbandState] | None) -> DeadbandLogic:
        return DeadbandLogic(deadband_core, resume, start_version)

    return op.stateful("stateful", up, build)
