"""``nexus_latest``: the newest stored point of every tag, kept by the historian writer.

"Latest value of 10,000 tags" over a 50-million-row ``nexus_points`` costs one index descent per tag
and partition (hundreds of milliseconds); reading a 10,000-row table costs a few. The writer upserts
each tag's newest row of every chunk it copies, in the same transaction as the COPY, so the table is
never ahead of ``nexus_points``. An upsert only moves a tag forward in time (a replayed older chunk
leaves it alone). ``time`` is not indexed, so updates are HOT and the table stays small.

>>> last_per_tag(np.array([5, 1, 3]), np.array([7, 7, 8]))
array([0, 2])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import psycopg

__all__ = [
    "LATEST_DDL",
    "LATEST_STAGE_DDL",
    "backfill_latest",
    "ensure_latest",
    "last_per_tag",
    "upsert_latest_sql",
    "write_latest",
]

LATEST_DDL = """
CREATE TABLE IF NOT EXISTS nexus_latest (
    tag_id bigint PRIMARY KEY,
    time timestamptz NOT NULL,
    value double precision,
    quality smallint NOT NULL
) WITH (fillfactor = 50)"""

COPY_LATEST_STAGE = "COPY nexus_latest_stage (time, tag_id, value, quality) FROM STDIN (FORMAT BINARY)"

upsert_latest_sql = (
    "INSERT INTO nexus_latest AS l (tag_id, time, value, quality) "
    "SELECT tag_id, time, value, quality FROM nexus_latest_stage "
    "ON CONFLICT (tag_id) DO UPDATE SET time = EXCLUDED.time, value = EXCLUDED.value, "
    "quality = EXCLUDED.quality WHERE EXCLUDED.time >= l.time"
)


def last_per_tag(time_us: npt.NDArray[np.int64], tag_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Indices of each tag's newest row (one per tag, in tag order)."""
    order = np.lexsort((time_us, tag_ids))
    sorted_ids = tag_ids[order]
    is_last = np.ones(len(order), dtype=bool)
    is_last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    return order[is_last]


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


LATEST_STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS nexus_latest_stage "
    "(time timestamptz, tag_id bigint, value double precision, quality smallint) ON COMMIT DELETE ROWS"
)
"""The session's staging table of :func:`write_latest`: run once per connection (per commit it was a
round trip and a notice every second)."""


def write_latest(cur: psycopg.Cursor, payload: bytes | memoryview) -> None:
    """Upsert the rows of a binary COPY payload (already reduced to one row per tag) into nexus_latest
    (the connection ran :data:`LATEST_STAGE_DDL`)."""
    with cur.copy(COPY_LATEST_STAGE) as copy:
        copy.write(payload)
    cur.execute(upsert_latest_sql)
