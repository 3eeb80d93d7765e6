"""The in-band configuration item: a device's new parameters, travelling through the dataflow
ahead of the first batch polled with them.

A hot config change (``$nexus/config/flows/{flow}/devices/{device}``) is applied by the device's
source partition at a poll boundary; the partition then emits one :class:`DeviceConfig` keyed by
the device, before its next :class:`~core.batch.PointBatch`. Every step passes it on in order, so
each stateful step swaps its per-device parameters exactly between the last batch of the old
configuration and the first of the new one, and the sinks learn the device's new tags before
their first points arrive.

``params`` holds, per operator kind (``normalize``, ``deadband``, ``swinging_door``,
``calculate``, ``anomaly``), that operator's parameters for this device only, in the form its core
takes (built by the compiler; opaque here). ``tags`` describes every read and calculated tag of
the device after the change (what the sinks need: topic, unit).

>>> cfg = DeviceConfig("press-01", 3, {7: TagInfo(7, "press-01", "t", "degC", "a/b/c/d/press-01/t")}, {})
>>> len(cfg), cfg.tag_ids.tolist()
(0, [7])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.tags import TagInfo

__all__ = ["DeviceConfig"]


@dataclass(frozen=True, slots=True, eq=False)
class DeviceConfig:
    """One device's configuration after a hot change (see the module docstring)."""

    device_id: str
    version: int
    """The flow version this configuration belongs to."""
    tags: Mapping[int, TagInfo]
    """Every read and calculated tag of the device after the change, by tag id."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Per operator kind, its parameters for this device (the form its core takes)."""

    def __len__(self) -> int:
        return 0  # no points: counters and sizes treat it as an empty item

    @property
    def tag_ids(self) -> npt.NDArray[np.int64]:
        """The device's tag ids, sorted (states of tags not listed are dropped)."""
        return np.array(sorted(self.tags), dtype=np.int64)
