"""Where the edge node keeps data while it cannot publish it (no broker, or the primary host away).

The seam for store-and-forward: whatever implements :class:`Backlog` receives every batch the node
could not send, and hands it back (oldest first) once a new session has sent its births; the node
then publishes it in DDATA with ``is_historical = true``. :class:`MemoryBacklog` is the bounded
in-process default; :class:`SpoolBacklog` keeps it in the disk spool (:mod:`connectors.spool`), so
it survives a restart of the flow.

>>> from core.batch import PointBatch
>>> b = MemoryBacklog(max_points=3)
>>> for v in (1.0, 2.0):
...     b.append(PointBatch.from_values("d", [1, 2], [v, v], ts_ns=0))
>>> len(b), b.dropped_points, [x.values.tolist() for x in b.drain(10)], len(b)
(1, 2, [[2.0, 2.0]], 0)
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Protocol

from core.batch import PointBatch

if TYPE_CHECKING:
    from connectors.spool import Spool

__all__ = ["Backlog", "MemoryBacklog", "SpoolBacklog"]


class Backlog(Protocol):
    """Batches kept for later, oldest first."""

    def append(self, batch: PointBatch) -> None:
        """Keep ``batch`` (may drop the oldest data to stay within bounds)."""

    def drain(self, max_batches: int) -> list[PointBatch]:
        """Up to ``max_batches`` of the oldest batches, removed from the backlog (an empty list: empty)."""
        ...

    def __len__(self) -> int:
        """Batches kept."""
        ...


class MemoryBacklog:
    """A bounded in-memory backlog: beyond ``max_points`` the oldest batches are dropped (and counted)."""

    def __init__(self, max_points: int) -> None:
        if max_points < 0:
            raise ValueError(f"`max_points` must be >= 0, got {max_points}")
        self.max_points = max_points
        self._items: deque[PointBatch] = deque()
        self._points = 0
        self._lock = threading.Lock()
        self.dropped_points = 0

    def append(self, batch: PointBatch) -> None:
        with self._lock:
            if len(batch) > self.max_points:
                self.dropped_points += len(batch)
                return
            self._items.append(batch)
            self._points += len(batch)
            while self._points > self.max_points:
                old = self._items.popleft()
                self._points -= len(old)
                self.dropped_points += len(old)

    def drain(self, max_batches: int) -> list[PointBatch]:
        with self._lock:
            items = [self._items.popleft() for _ in range(min(max_batches, len(self._items)))]
            self._points -= sum(len(b) for b in items)
            return items

    def __len__(self) -> int:
        return len(self._items)


class SpoolBacklog:
    """The disk spool as a backlog: batches are spool records (``encode_batch``), drained oldest
    first and acknowledged as they are handed out (the node publishes them at once, at QoS 0 as
    Sparkplug data always is). Bounds, drops and durability are the spool's."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def append(self, batch: PointBatch) -> None:
        from connectors.spool import encode_batch

        self.spool.append(encode_batch(batch))

    def drain(self, max_batches: int) -> list[PointBatch]:
        from connectors.spool import batches_from

        records = self.spool.read(max_records=max_batches)
        if not records:
            return []
        self.spool.ack(records[-1][0])
        return batches_from(records)

    def __len__(self) -> int:
        return self.spool.pending_records

    def close(self) -> None:
        self.spool.close()
