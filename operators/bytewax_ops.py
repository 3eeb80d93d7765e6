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
from operators.deadband import Deadband, DeadbandState
from operators.normalize import Normalizer

__all__ = ["deadband", "normalize"]

_NOTHING: tuple[PointBatch, ...] = ()


@operator
def normalize(step_id: str, up: Stream[PointBatch], normalizer: Normalizer) -> Stream[PointBatch]:
    """Scale, convert and clamp every batch (see :class:`~operators.normalize.Normalizer`)."""
    return op.map("apply", up, normalizer.apply)


class DeadbandLogic(StatefulLogic[PointBatch, PointBatch, DeadbandState]):
    """Per-device Bytewax logic: threads the device's :class:`DeadbandState` through the core.

    The core returns a new state object for every change and never modifies an old one, so
    :meth:`snapshot` hands Bytewax the current state as is: no deep copy per epoch (unlike
    ``stateful_map``). Empty output batches are dropped. The logic is never discarded: the key
    space is the set of configured devices.
    """

    def __init__(self, core: Deadband, state: DeadbandState | None = None) -> None:
        self.core = core
        self.state = core.initial_state() if state is None else state

    def on_item(self, value: PointBatch) -> tuple[Iterable[PointBatch], bool]:
        self.state, out = self.core.process(self.state, value)
        return ((out,) if len(out) else _NOTHING), StatefulLogic.RETAIN

    def snapshot(self) -> DeadbandState:
        return self.state


@operator
def deadband(step_id: str, up: KeyedStream[PointBatch], deadband_core: Deadband) -> KeyedStream[PointBatch]:
    """Deadband per device key: ``(device_id, batch)`` in, ``(device_id, published points)`` out.

    (The core parameter cannot be called ``core``: Bytewax's ``Operator`` has a field of that name.)
    """

    def build(resume: DeadbandState | None) -> DeadbandLogic:
        return DeadbandLogic(deadband_core, resume)

    return op.stateful("stateful", up, build)
