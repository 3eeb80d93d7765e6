"""Configuration of the historian writer.

>>> c = HistorianConfig(url="postgresql://postgres@127.0.0.1:5432/nexus")
>>> c.batch_rows, c.max_delay_s, c.partition_interval
(50000, 1.0, '1 day')
>>> try:
...     HistorianConfig(url="postgresql://u:pw@db/x", batch_rows=0)
... except ValueError as exc:
...     print(exc.errors()[0]["loc"], "pw" in str(exc))
('batch_rows',) False
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HistorianConfig"]

INTERVAL_SECONDS = {"1 hour": 3600, "1 day": 86400}


class HistorianConfig(BaseModel):
    """Where the raw points go and how the writer batches and retries."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str = Field(repr=False)
    batch_rows: int = Field(default=50_000, gt=0)
    """Write when this many rows are buffered ..."""
    max_delay_s: float = Field(default=1.0, gt=0)
    """... or when the oldest buffered row has waited this long."""
    queue_batches: int = Field(default=512, gt=0)
    """Point batches handed to the writer thread in memory; beyond it the thread reads them back from
    the spool (``write`` never waits). The thread is woken early when the queue is half full: at 64,
    a 500-device flow (500 batches/s) woke it ~40 times a second instead of about once per commit.
    It keeps at most 4x this many batches while behind (~7 MB at 512 batches of 100 points)."""
    partition_interval: Literal["1 hour", "1 day"] = "1 day"
    """Chunk (TimescaleDB) or partition (native PostgreSQL) size."""
    compress_after: str | None = "7 days"
    """TimescaleDB only: compress chunks older than this (``None``: no compression policy)."""
    retention: str | None = None
    """TimescaleDB only: drop chunks older than this (``None``: keep everything)."""
    partition_past_s: float = Field(default=8 * 86_400.0, ge=0, allow_inf_nan=False)
    """Native partitioning: partitions are created for rows at most this far behind the clock (and
    ``partition_future_s`` ahead); older or later rows go to the DEFAULT partition. The sources
    already refuse such timestamps (:mod:`core.timestamps`); this bounds what any other writer
    (a replay, a test, a tool) can make the writer create — one partition per distinct day of 1950
    otherwise."""
    partition_future_s: float = Field(default=2 * 86_400.0, ge=0, allow_inf_nan=False)
    use_timescaledb: bool = True
    """Use TimescaleDB when the server offers it; ``False`` forces native partitioning."""
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)
    """Backoff cap while the database is away: short, since rows wait in the spool, not in memory."""
    connect_timeout_s: int = Field(default=5, gt=0)
    spool_dir: str | None = None
    """Folder of this sink's disk spool (``None``: a private temporary folder, removed at close)."""
    spool_max_bytes: int = Field(default=1 << 30, gt=0)
    """The spool's bound in bytes; beyond it the oldest segment is dropped (counted and alerted)."""
    spool_max_age_s: float = Field(default=7 * 86400.0, gt=0)
    """The spool's bound in age: segments older than this are dropped (counted and alerted)."""
    spool_sync_interval_s: float = Field(default=1.5, gt=0)
    """Group commit: a row is fsynced this long after it was accepted unless the database has
    committed it by then (a commit acknowledges it in the spool). A ``kill -9`` loses nothing either
    way (the page cache survives it); a power loss loses at most this long of rows the database has
    not committed. Half a second longer than ``max_delay_s`` by default: a commit on time (after
    ``max_delay_s`` and the statement's few milliseconds) comes first, so while the database keeps
    up the spool makes no fsync at all. At 1 s, the commit and the fsync were due at the same
    moment and the fsync won, once a second (~0.0002-0.0003 cores of a 10-device flow's ~0.008 and
    a journal write on the flash each time; BENCHMARKS.md, issue 16); at 0.1 s, before 2026-12-03,
    there were ten."""
    latest_interval_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """``nexus_latest`` is upserted at most this often (with each tag's newest row since), and by
    every flush: it lags ``nexus_points`` by at most this long, and a tag polled faster costs one
    upsert per interval instead of one per chunk."""
    drain_rows_per_s: float = Field(default=200_000.0, gt=0)
    """Pace of the catch-up after an outage or a restart with rows in the spool (rows/s), so the
    database keeps room for live rows and other clients; rows arriving live are never paced."""
