"""Per-point quality codes.

Codes are small integers (they fit a PostgreSQL ``smallint``) grouped by class, the way
OPC UA groups its status codes: ``0..63`` good, ``64..127`` uncertain, ``128..255`` bad.
The class of a whole array is found with one comparison, so operators never loop.

>>> import numpy as np
>>> q = np.array([Quality.GOOD, Quality.CLAMPED, Quality.COMM_ERROR], dtype=np.uint8)
>>> is_good(q).tolist(), is_bad(q).tolist()
([True, False, False], [False, False, True])
>>> quality_name(Quality.DEVICE_EXCEPTION)
'bad_device_exception'
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

QUALITY_DTYPE = np.uint8


class Quality(IntEnum):
    GOOD = 0
    UNCERTAIN = 64
    CLAMPED = 65
    """The value was outside its configured limits and was clamped to them."""
    STALE = 66
    """The value was not refreshed within its expected period."""
    REPLAYED = 67
    """The value was replayed from a spool or a recovery snapshot."""
    BAD = 128
    COMM_ERROR = 129
    """The device could not be reached (connect, timeout, transport error)."""
    DEVICE_EXCEPTION = 130
    """The device answered with an error (a Modbus exception response, a Bad status)."""
    OUT_OF_RANGE = 131
    """The value is not plausible (NaN, infinite, outside the physical range)."""
    CONFIG_ERROR = 132
    """The tag's configuration does not fit what the device returned."""


_NAMES = {
    Quality.GOOD: "good",
    Quality.UNCERTAIN: "uncertain",
    Quality.CLAMPED: "uncertain_clamped",
    Quality.STALE: "uncertain_stale",
    Quality.REPLAYED: "uncertain_replayed",
    Quality.BAD: "bad",
    Quality.COMM_ERROR: "bad_comm_error",
    Quality.DEVICE_EXCEPTION: "bad_device_exception",
    Quality.OUT_OF_RANGE: "bad_out_of_range",
    Quality.CONFIG_ERROR: "bad_config_error",
}

QUALITY_NAMES: tuple[str, ...] = tuple(
    _NAMES.get(code, "bad" if code >= 128 else "uncertain" if code >= 64 else "good")  # type: ignore[call-overload]
    for code in range(256)
)
"""Name of every code 0..255, indexable by an integer code (unknown codes get their class name)."""


def quality_name(code: int) -> str:
    return QUALITY_NAMES[int(code)]


def is_good(q: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    return np.asarray(q) < 64


def is_uncertain(q: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    a = np.asarray(q)
    return (a >= 64) & (a < 128)


def is_bad(q: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    return np.asarray(q) >= 128
