"""Bytewax adapter for :class:`operators.anomaly.AnomalyDetector`.

Uses ``op.stateful`` with its own :class:`~bytewax.operators.StatefulLogic` rather than
``stateful_map``: the latter deep-copies every touched key's state at every epoch, which costs
tens of milliseconds per river HalfSpaceTrees model. Here ``snapshot()`` returns the state
pickled to bytes — immutable by construction and one serialisation instead of a deepcopy plus a
pickle.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.records import Alert
from operators.anomaly import AnomalyDetector, AnomalyState, TagChecks
from operators.hot import HotCore, Swapped, keep_tags

__all__ = ["AnomalyLogic", "detect_anomalies"]

Item = PointBatch | DeviceConfig


def _detector(checks: Mapping[int, TagChecks] | None) -> AnomalyDetector:
    return AnomalyDetector(checks or {})


class AnomalyLogic(StatefulLogic[Item, Alert | DeviceConfig, bytes | Swapped[bytes]]):
    """The state of one key (device) around the framework-free detector.

    A config item swaps the device's checks: the alarm flags, runs and models of tags that stay
    are kept (an active alarm clears against its new limits), removed tags are forgotten, new
    tags start fresh. The item is passed on so the alert sink learns the device's new tags.
    """

    def __init__(self, core: AnomalyDetector, state: AnomalyState | None = None) -> None:
        self.hot = HotCore(core, "anomaly", _detector)
        self.state = state

    @property
    def core(self) -> AnomalyDetector:
        return self.hot.core

    def on_item(self, value: Item) -> tuple[Iterable[Alert | DeviceConfig], bool]:
        if isinstance(value, DeviceConfig):
            self.hot.swap(value)
            self.state = keep_tags(self.state, value.tag_ids)
            return (value,), StatefulLogic.RETAIN
        self.state, alerts = self.hot.core.process(self.state, value)
        return alerts, StatefulLogic.RETAIN

    def snapshot(self) -> bytes | Swapped[bytes]:
        return self.hot.snapshot(pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def resume(
        cls, core: AnomalyDetector, resume_state: bytes | Swapped[bytes] | None, start_version: int = 0
    ) -> AnomalyLogic:
        logic = cls(core, None)
        raw = logic.hot.resume(resume_state, start_version)
        logic.state = pickle.loads(raw) if raw is not None else None
        return logic


@operator
def detect_anomalies(
    step_id: str, up: KeyedStream[Item], detector: AnomalyDetector, start_version: int = 0
) -> KeyedStream[Alert | DeviceConfig]:
    """Run ``detector`` on each device's batches (keyed by device id); emit each alert as one item.

    (The parameter cannot be called ``core``: Bytewax's ``@operator`` refuses arguments that
    shadow fields of its ``Operator`` dataclass, and ``core`` is one.)

    The step's state (per key) resumes from the bytes its ``snapshot()`` returned; keep
    ``step_id`` stable or recovery silently starts fresh.
    """

    def builder(resume_state: bytes | Swapped[bytes] | None) -> AnomalyLogic:
        return AnomalyLogic.resume(detector, resume_state, start_version)

    return op.stateful("stateful", up, builder)
