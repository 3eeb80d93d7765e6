"""Bytewax adapter for :class:`operators.anomaly.AnomalyDetector`.

Uses ``op.stateful`` with its own :class:`~bytewax.operators.StatefulLogic` rather than
``stateful_map``: the latter deep-copies every touched key's state at every epoch, which costs
tens of milliseconds per river HalfSpaceTrees model. Here ``snapshot()`` returns the state
pickled to bytes — immutable by construction and one serialisation instead of a deepcopy plus a
pickle.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.records import Alert
from operators.anomaly import AnomalyDetector, AnomalyState

__all__ = ["AnomalyLogic", "detect_anomalies"]


class AnomalyLogic(StatefulLogic[PointBatch, Alert, bytes]):
    """The state of one key (device) around the framework-free detector."""

    def __init__(self, core: AnomalyDetector, state: AnomalyState | None = None) -> None:
        self.core = core
        self.state = state

    def on_item(self, value: PointBatch) -> tuple[Iterable[Alert], bool]:
        self.state, alerts = self.core.process(self.state, value)
        return alerts, StatefulLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def resume(cls, core: AnomalyDetector, resume_state: bytes | None) -> AnomalyLogic:
        state = pickle.loads(resume_state) if resume_state is not None else None
        return cls(core, state)


@operator
def detect_anomalies(
    step_id: str, up: KeyedStream[PointBatch], detector: AnomalyDetector
) -> KeyedStream[Alert]:
    """Run ``detector`` on each device's batches (keyed by device id); emit each alert as one item.

    (The parameter cannot be called ``core``: Bytewax's ``@operator`` refuses arguments that
    shadow fields of its ``Operator`` dataclass, and ``core`` is one.)

    The step's state (per key) resumes from the bytes its ``snapshot()`` returned; keep
    ``step_id`` stable or recovery silently starts fresh.
    """

    def builder(resume_state: bytes | None) -> AnomalyLogic:
        return AnomalyLogic.resume(detector, resume_state)

    return op.stateful("stateful", up, builder)
