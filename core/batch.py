"""The unit of work: a frozen, columnar batch of points from one device poll.

>>> import numpy as np
>>> b = PointBatch.from_values("press-01", [1, 2], [3.5, 4.0], ts_ns=1_700_000_000_000_000_000)
>>> len(b), b.values.tolist(), b.quality.tolist()
(2, [3.5, 4.0], [0, 0])
>>> b.select(np.array([False, True])).tag_ids.tolist()
[2]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from core.quality import QUALITY_DTYPE, Quality

TS_DTYPE = np.int64
TAG_DTYPE = np.int64
VALUE_DTYPE = np.float64


def now_ns() -> int:
    """Wall-clock time as integer nanoseconds since the Unix epoch (UTC)."""
    return time.time_ns()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_to_datetime(ts_ns: int) -> datetime:
    """Integer nanoseconds since the epoch to an aware UTC datetime (exact to the microsecond).

    >>> ns_to_datetime(1_700_000_000_123_456_789).isoformat()
    '2023-11-14T22:13:20.123456+00:00'
    """
    return _EPOCH + timedelta(microseconds=int(ts_ns) // 1000)


def tag_id_for(device_id: str, tag_name: str) -> int:
    """A stable 63-bit id for a device's tag, the same in every process and every run.

    >>> tag_id_for("press-01", "temperature") == tag_id_for("press-01", "temperature")
    True
    >>> 0 < tag_id_for("a", "b") < 2**63
    True
    """
    digest = hashlib.blake2b(f"{device_id}\x1f{tag_name}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


@dataclass(frozen=True, slots=True, eq=False)
class PointBatch:
    """Points read from one device at (about) one time.

    Columns are numpy arrays of equal length: ``ts_ns`` (int64 ns since the epoch, UTC),
    ``tag_ids`` (int64, see :func:`tag_id_for`), ``values`` (float64) and ``quality``
    (uint8 :class:`~core.quality.Quality` codes). ``text`` is the side channel for the rare
    non-numeric value, keyed by the point's index in the batch (its ``values`` entry is NaN);
    it is ``None`` when the batch holds numbers only.

    Batches are never mutated: operators build new ones with :meth:`replace` / :meth:`select`.
    """

    device_id: str
    ts_ns: npt.NDArray[np.int64]
    tag_ids: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]
    text: Mapping[int, str] | None = None

    def __post_init__(self) -> None:
        n = len(self.tag_ids)
        if not (len(self.ts_ns) == len(self.values) == len(self.quality) == n):
            raise ValueError(
                f"PointBatch for device {self.device_id!r}: column lengths differ "
                f"(ts_ns={len(self.ts_ns)}, tag_ids={n}, values={len(self.values)}, "
                f"quality={len(self.quality)})"
            )

    def __len__(self) -> int:
        return len(self.tag_ids)

    @classmethod
    def from_values(
        cls,
        device_id: str,
        tag_ids: Sequence[int] | npt.NDArray[np.int64],
        values: Sequence[float] | npt.NDArray[np.float64],
        *,
        ts_ns: int | npt.NDArray[np.int64],
        quality: int | Sequence[int] | npt.NDArray[np.uint8] = Quality.GOOD,
    ) -> PointBatch:
        ids = np.asarray(tag_ids, dtype=TAG_DTYPE)
        n = len(ids)
        ts = np.asarray(ts_ns, dtype=TS_DTYPE)
        q = np.asarray(quality, dtype=QUALITY_DTYPE)
        return cls(
            device_id=device_id,
            ts_ns=np.broadcast_to(ts, (n,)).copy() if ts.ndim == 0 else ts,
            tag_ids=ids,
            values=np.asarray(values, dtype=VALUE_DTYPE),
            quality=np.full(n, q, dtype=QUALITY_DTYPE) if q.ndim == 0 else q,
        )

    @classmethod
    def empty(cls, device_id: str) -> PointBatch:
        return cls(
            device_id=device_id,
            ts_ns=np.empty(0, TS_DTYPE),
            tag_ids=np.empty(0, TAG_DTYPE),
            values=np.empty(0, VALUE_DTYPE),
            quality=np.empty(0, QUALITY_DTYPE),
        )

    def replace(
        self,
        *,
        values: npt.NDArray[np.float64] | None = None,
        quality: npt.NDArray[np.uint8] | None = None,
    ) -> PointBatch:
        """A batch with the same points and new values and/or qualities."""
        return PointBatch(
            device_id=self.device_id,
            ts_ns=self.ts_ns,
            tag_ids=self.tag_ids,
            values=self.values if values is None else values,
            quality=self.quality if quality is None else quality,
            text=self.text,
        )

    def select(self, mask: npt.NDArray[np.bool_]) -> PointBatch:
        """The points where ``mask`` is true, in order."""
        text: Mapping[int, str] | None
        if self.text:
            kept = np.flatnonzero(mask)
            position = {int(old): new for new, old in enumerate(kept)}
            text = {position[i]: s for i, s in self.text.items() if i in position}
        else:
            text = None
        return PointBatch(
            device_id=self.device_id,
            ts_ns=self.ts_ns[mask],
            tag_ids=self.tag_ids[mask],
            values=self.values[mask],
            quality=self.quality[mask],
            text=text,
        )
