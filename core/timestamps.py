"""The one rule every source applies to a timestamp it did not take from its own clock.

Devices and gateways stamp their values (an MQTT payload's ``timestamp_path``, an OPC UA
SourceTimestamp). A stamp can be garbage: year 1, year 9999, a PLC whose clock was never set, an
epoch in the wrong unit. Trusted as is, one such stamp kills the flow (it does not fit an int64 of
nanoseconds), makes every later reading of the tag "late" for the windows, runs the OEE clock
across decades, and makes the historian create one partition per distinct day. So every source
checks each stamp against its receive time with :class:`TimestampWindow`:

- a stamp within ``[receive - max_past_s, receive + max_future_s]`` is kept;
- anything else (unreadable, before, after) is replaced by the receive time, the point is flagged
  ``uncertain`` (never better), and the replacement is counted in
  ``nexus_timestamps_replaced{source, reason}`` (``reason``: ``unreadable``, ``too_old``,
  ``future``).

>>> w = TimestampWindow(max_past_s=3600, max_future_s=60)
>>> now = 1_700_000_000 * SECOND
>>> w.check(now - 10 * SECOND, now)
(1699999990000000000, None)
>>> w.check(-62135596800 * SECOND, now)  # 0001-01-01
(1700000000000000000, 'too_old')
>>> w.check(now + 61 * SECOND, now)
(1700000000000000000, 'future')
>>> ts, reasons = w.check_array(np.array([now, now - 7200 * SECOND]), now)
>>> ts.tolist(), reasons.tolist()
([1700000000000000000, 1700000000000000000], [None, 'too_old'])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MAX_FUTURE_S",
    "DEFAULT_MAX_PAST_S",
    "DEFAULT_WINDOW",
    "SECOND",
    "Reason",
    "TimestampWindow",
    "count_replaced",
]

SECOND = 1_000_000_000
DEFAULT_MAX_PAST_S = 7 * 86_400.0
"""A week: what a device buffering through an outage may still deliver (store and forward)."""
DEFAULT_MAX_FUTURE_S = 60.0
"""A minute of clock skew; one future-stamped reading would make every later one 'late'."""

Reason = Literal["unreadable", "too_old", "future"]


@dataclass(frozen=True, slots=True)
class TimestampWindow:
    """Accept device timestamps within ``[receive - max_past_s, receive + max_future_s]``."""

    max_past_s: float = DEFAULT_MAX_PAST_S
    max_future_s: float = DEFAULT_MAX_FUTURE_S

    def __post_init__(self) -> None:
        for name in ("max_past_s", "max_future_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")

    @property
    def past_ns(self) -> int:
        return round(self.max_past_s * SECOND)

    @property
    def future_ns(self) -> int:
        return round(self.max_future_s * SECOND)

    def check(self, stamp_ns: int | None, recv_ns: int) -> tuple[int, Reason | None]:
        """``(timestamp to use, why the stamp was replaced or None)``; ``None`` stamp: unreadable.

        ``stamp_ns`` may be any Python int (a decoded year 1 or year 9999 does not fit an int64).
        """
        if stamp_ns is None:
            return recv_ns, "unreadable"
        if stamp_ns < recv_ns - self.past_ns:
            return recv_ns, "too_old"
        if stamp_ns > recv_ns + self.future_ns:
            return recv_ns, "future"
        return int(stamp_ns), None

    def check_array(
        self, ts_ns: npt.NDArray[np.int64], recv_ns: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
        """Vectorized :meth:`check` of int64 stamps: the stamps to use and the reasons (object
        array, ``None`` where kept). ``ts_ns`` is not modified."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        old = ts < recv_ns - self.past_ns
        future = ts > recv_ns + self.future_ns
        reasons = np.full(ts.shape, None, dtype=object)
        reasons[old] = "too_old"
        reasons[future] = "future"
        return np.where(old | future, np.int64(recv_ns), ts), reasons


DEFAULT_WINDOW = TimestampWindow()


@functools.cache
def _metric() -> Any:
    from prometheus_client import Counter

    return Counter(
        "nexus_timestamps_replaced",
        "Device timestamps replaced by the receive time (unreadable, too old or in the future)",
        ["source", "reason"],
    )


def count_replaced(source: str, reason: Reason, n: int = 1) -> None:
    """Count ``n`` replaced timestamps of ``source`` (``mqtt:{device}``, ``opcua:{device}``)."""
    if n > 0:
        _metric().labels(source=source, reason=reason).inc(n)
