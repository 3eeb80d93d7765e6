"""Derived records that operators emit and sinks store: window aggregates, alerts, OEE results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True, eq=False)
class AggBatch:
    """Closed tumbling-window aggregates of one device for one window length, columnar.

    One row per (bucket, tag): ``bucket_ns`` is the bucket start (int64 ns UTC). ``avg`` is
    ``sum / count``; ``twa`` the time-weighted average over the bucket (NaN when undefined).
    """

    device_id: str
    window: str
    """Label of the window length, e.g. ``"1m"``; also the table and topic suffix."""
    window_ns: int
    bucket_ns: npt.NDArray[np.int64]
    tag_ids: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]
    sum: npt.NDArray[np.float64]
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    first: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    twa: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.tag_ids)

    @property
    def avg(self) -> npt.NDArray[np.float64]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count


AlertState = Literal["raised", "cleared"]
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert raised or cleared on one tag (raised once, cleared once)."""

    device_id: str
    tag_id: int
    kind: str
    """``high``, ``low``, ``stuck``, ``rate``, ``ml``, ..."""
    state: AlertState
    severity: Severity
    value: float
    limit: float | None
    ts_ns: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class OeeResult:
    """OEE of one machine over one period (a window or a shift)."""

    machine: str
    period: str
    """``window:5m`` or ``shift:<name>``."""
    start_ns: int
    end_ns: int
    availability: float
    performance: float
    quality: float
    oee: float
    run_s: float
    planned_stop_s: float
    unplanned_stop_s: float
    total_count: float
    good_count: float
    reject_count: float
    downtime_s: Mapping[str, float] = field(default_factory=dict)
    """Unplanned and planned stop time by reason (the machine-state label)."""
