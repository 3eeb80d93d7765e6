"""``nexus_latest``: the newest stored point of every tag, kept by the historian writer.

"Latest value of 10,000 tags" over a 50-million-row ``nexus_points`` costs one index descent per tag
and partition (hundreds of milliseconds); reading a 10,000-row table costs a few. The writer upserts
each tag's newest row of every chunk it copies, in the same transaction as the COPY, so the table is
never ahead of ``nexus_points``. An upsert only moves a tag forward in time (a replayed older chunk
leaves it alone). ``time`` is not indexed, so updates are HOT and the table stays small.

The writer keeps the rows that the table lacks in a :class:`LatestRows` (each tag's newest row,
merged chunk by chunk in one compiled pass) and takes them out, in tag order, when it upserts.

>>> rows = LatestRows()
>>> rows.merge(np.array([5, 1, 3]), np.array([7, 7, 8]), np.array([0.5, 0.1, 0.3]), np.zeros(3, np.uint8))
>>> rows.merge(np.array([5]), np.array([8]), np.array([9.0]), np.zeros(1, np.uint8))
>>> t, ids, values, quality = rows.peek()
>>> ids.tolist(), t.tolist(), values.tolist(), len(rows)
([7, 8], [5, 5], [0.5, 9.0], 2)
>>> rows.clear(); len(rows), rows.peek()[1].tolist()
(0, [])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import psycopg

from core.idtable import claim
from core.jit import compiled

__all__ = [
    "LATEST_DDL",
    "LatestRows",
    "backfill_latest",
    "ensure_latest",
]

LATEST_DDL = """
CREATE TABLE IF NOT EXISTS nexus_latest (
    tag_id bigint PRIMARY KEY,
    time timestamptz NOT NULL,
    value double precision,
    quality smallint NOT NULL
) WITH (fillfactor = 50)"""


def _merge_rows(  # noqa: PLR0917 - the table's columns, flat for the compiled kernel
    used: npt.NDArray[np.bool_],
    keys: npt.NDArray[np.int64],
    kept: npt.NDArray[np.bool_],
    t: npt.NDArray[np.int64],
    v: npt.NDArray[np.float64],
    q: npt.NDArray[np.uint8],
    time_us: npt.NDArray[np.int64],
    tag_ids: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    quality: npt.NDArray[np.uint8],
    bits: int,
    keep: bool,
) -> tuple[int, int]:
    """Merge rows into the open-addressing table of ``2**bits`` slots (linear probing; at most half
    full, the caller sees to it). A tag's kept row is replaced by a row as new or newer (later rows
    win ties); a slot whose row is not kept (written, then cleared) takes any row. With ``keep``
    false the rows' tags only take their slots. Returns how many slots the rows took (new tags) and
    how many rows became kept."""
    slots = 0
    rows = 0
    for i in range(len(tag_ids)):
        slot, new = claim(used, keys, tag_ids[i], bits)
        if new:
            slots += 1
        if not keep:
            continue
        if kept[slot]:
            if time_us[i] < t[slot]:
                continue
        else:
            kept[slot] = True
            rows += 1
        t[slot] = time_us[i]
        v[slot] = values[i]
        q[slot] = quality[i]
    return slots, rows


_merge_kernel = compiled(_merge_rows)


def _take_rows(  # noqa: PLR0917 - the table's columns and the output's, flat for the compiled kernel
    order: npt.NDArray[np.intp],
    kept: npt.NDArray[np.bool_],
    t: npt.NDArray[np.int64],
    keys: npt.NDArray[np.int64],
    v: npt.NDArray[np.float64],
    q: npt.NDArray[np.uint8],
    out_t: npt.NDArray[np.int64],
    out_ids: npt.NDArray[np.int64],
    out_v: npt.NDArray[np.float64],
    out_q: npt.NDArray[np.uint8],
) -> int:
    """Copy the kept rows of the slots in ``order`` into the outputs, in that order; how many (-1:
    more than the outputs hold, nothing beyond them written)."""
    n = 0
    for slot in order:
        if kept[slot]:
            if n == out_t.shape[0]:
                return -1
            out_t[n] = t[slot]
            out_ids[n] = keys[slot]
            out_v[n] = v[slot]
            out_q[n] = q[slot]
            n += 1
    return n


_take_kernel = compiled(_take_rows)


class LatestRows:
    """Each tag's newest row since :meth:`clear`, what ``nexus_latest`` lacks.

    An open-addressing hash table in arrays, merged by a compiled kernel in one pass over a chunk.
    It replaced a sort of every chunk with the rows kept so far (``np.lexsort``, ~7.5 ms for 50,000
    rows with 50,000 kept, once per commit at 500 devices x 100 tags: about half the writer thread's
    CPU). :meth:`peek` hands the kept rows out in tag order (concurrent upserts then lock rows in one
    order). A tag keeps its slot after :meth:`clear` (only its row stops being kept), so the order
    of the slots by tag is sorted once, and again only when new tags take slots: the kept rows of an
    interval are a different subset of the tags each time (a deadband passes only changes), and
    sorting them afresh (``np.argsort``) was ~7 % of the writer thread's CPU at 100 devices x 100
    tags (perf, 2026-12-03). Used by the writer thread only.
    """

    _MIN_SLOTS = 1024

    def __init__(self) -> None:
        self._alloc(self._MIN_SLOTS)

    def _alloc(self, slots: int) -> None:
        self._used = np.zeros(slots, np.bool_)
        """Slots that hold a tag (kept row or not)."""
        self._keys = np.zeros(slots, np.int64)
        self._kept = np.zeros(slots, np.bool_)
        """Slots whose row is kept (not yet in ``nexus_latest``)."""
        self._t = np.zeros(slots, np.int64)
        self._v = np.zeros(slots, np.float64)
        self._q = np.zeros(slots, np.uint8)
        self._tags = 0
        self._count = 0
        self._order: npt.NDArray[np.intp] | None = None
        """The used slots in tag order; ``None`` after new tags took slots."""

    def __len__(self) -> int:
        return self._count

    def merge(
        self,
        time_us: npt.NDArray[np.int64],
        tag_ids: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
    ) -> None:
        """Keep each tag's newest row of these (on a tie with a kept row, these win: written later)."""
        need = 2 * (self._tags + len(tag_ids))
        if need > len(self._keys):  # grow: every tag (and kept row) into a table twice the size needed
            slots = np.flatnonzero(self._used)
            kept = self._kept[slots]
            rows = slots[kept]
            t, ids, v, q = self._t[rows], self._keys[rows], self._v[rows], self._q[rows]
            others = self._keys[slots[~kept]]
            self._alloc(1 << (need - 1).bit_length())
            self._merge(t, ids, v, q)
            self._merge(t[:0], others, v[:0], q[:0], keep=False)
        self._merge(time_us, tag_ids, values, quality)

    def _merge(
        self,
        time_us: npt.NDArray[np.int64],
        tag_ids: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        *,
        keep: bool = True,
    ) -> None:
        bits = len(self._keys).bit_length() - 1
        slots, rows = _merge_kernel(
            self._used,
            self._keys,
            self._kept,
            self._t,
            self._v,
            self._q,
            time_us,
            tag_ids,
            values,
            quality,
            bits,
            keep,
        )
        if slots:
            self._tags += int(slots)
            self._order = None
        self._count += int(rows)

    def peek(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
        """The kept rows in tag order: ``(time_us, tag_ids, values, quality)``, new arrays (one compiled
        pass: the five fancy-indexing gathers it replaced were ~0.27 ms of a 10,000-row commit)."""
        order = self._order
        if order is None:
            slots = np.flatnonzero(self._used)
            order = self._order = slots[np.argsort(self._keys[slots])]
        n = self._count  # (the kept rows: each counted once as it became kept)
        t, ids, v, q = (
            np.empty(n, np.int64),
            np.empty(n, np.int64),
            np.empty(n, np.float64),
            np.empty(n, np.uint8),
        )
        n = _take_kernel(order, self._kept, self._t, self._keys, self._v, self._q, t, ids, v, q)
        if n < 0:  # (never while the count is right) the gathers the kernel replaced
            slots = order[self._kept[order]]
            return self._t[slots], self._keys[slots], self._v[slots], self._q[slots]
        return t[:n], ids[:n], v[:n], q[:n]

    def clear(self) -> None:
        """Forget every kept row (they are in ``nexus_latest`` now). The tags keep their slots: the
        table's size follows the tags seen (a flow's configured ones), not the rows of a burst."""
        self._kept[:] = False
        self._count = 0


def ensure_latest(conn: psycopg.Connection) -> bool:
    """Create ``nexus_latest`` if missing (call inside the schema lock); True when it was just created."""
    exists = conn.execute("SELECT to_regclass('nexus_latest') IS NOT NULL").fetchone()
    if exists and exists[0]:
        return False
    conn.execute(LATEST_DDL)
    return True


def backfill_latest(conn: psycopg.Connection) -> int:
    """Fill ``nexus_latest`` from ``nexus_points`` (once, when the table is created on a populated store)."""
    cur = conn.execute(
        "INSERT INTO nexus_latest (tag_id, time, value, quality) "
        "SELECT t.tag_id, p.time, p.value, p.quality FROM nexus_tags t CROSS JOIN LATERAL ("
        "  SELECT time, value, quality FROM nexus_points WHERE tag_id = t.tag_id ORDER BY time DESC LIMIT 1"
        ") p ON CONFLICT (tag_id) DO NOTHING"
    )
    return max(cur.rowcount, 0)
