"""``LatestRows``: each tag's newest row over a run of chunks, as a plain reference computes it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.historian.latest import LatestRows
from core.idtable import _HASH

Row = tuple[int, int, float, int]  # tag id, time, value, quality

# few distinct ids (ties and repeats are the point) among 63-bit ones, like tag_id_for's
_ids = st.sampled_from([1, 2, 3, 7, 2**40 + 5, 2**62 + 11, 2**63 - 1, 123_456_789_012])
_row = st.tuples(_ids, st.integers(-5, 5), st.floats(allow_nan=True), st.integers(0, 255))
_chunks = st.lists(st.lists(_row, max_size=30), min_size=1, max_size=8)


def _reference(rows: list[Row]) -> dict[int, Row]:
    """Each tag's newest row; of rows with the same time, the later one."""
    newest: dict[int, Row] = {}
    for row in rows:
        kept = newest.get(row[0])
        if kept is None or row[1] >= kept[1]:
            newest[row[0]] = row
    return newest


def _merge(table: LatestRows, chunk: list[Row]) -> None:
    table.merge(
        np.array([r[1] for r in chunk], np.int64),
        np.array([r[0] for r in chunk], np.int64),
        np.array([r[2] for r in chunk], np.float64),
        np.array([r[3] for r in chunk], np.uint8),
    )


def _rows(table: LatestRows) -> list[Row]:
    t, ids, v, q = table.peek()
    return list(zip(ids.tolist(), t.tolist(), v.tolist(), q.tolist(), strict=True))


def _same(got: list[Row], want: dict[int, Row]) -> bool:
    expected = [want[k] for k in sorted(want)]
    return len(got) == len(expected) and all(
        g[:2] == e[:2] and g[3] == e[3] and (g[2] == e[2] or (g[2] != g[2] and e[2] != e[2]))
        for g, e in zip(got, expected, strict=True)
    )


@settings(max_examples=300, deadline=None)
@given(chunks=_chunks, clear_after=st.integers(0, 8))
def test_newest_row_per_tag_in_tag_order(chunks: list[list[Row]], clear_after: int) -> None:
    table = LatestRows()
    seen: list[Row] = []
    for i, chunk in enumerate(chunks):
        _merge(table, chunk)
        seen += chunk
        assert _same(_rows(table), _reference(seen))  # every peek, so the kept order meets new rows
        if i == clear_after:  # written to nexus_latest: forgotten
            table.clear()
            seen = []
    assert _same(_rows(table), _reference(seen))
    assert len(table) == len(_reference(seen))


def test_grows_past_its_first_size_and_shrinks_after_a_burst() -> None:
    rng = np.random.default_rng(7)
    table = LatestRows()
    ids = rng.integers(1, 2**63 - 1, 20_000, dtype=np.int64)
    for k in range(3):  # the same 20,000 tags three times: the last time wins
        table.merge(np.full(20_000, k, np.int64), ids, np.full(20_000, float(k)), np.zeros(20_000, np.uint8))
    t, got, v, _q = table.peek()
    assert got.tolist() == sorted(set(ids.tolist())) and set(t.tolist()) == {2} and set(v.tolist()) == {2.0}
    table.clear()
    table.merge(np.array([1], np.int64), np.array([5], np.int64), np.array([1.0]), np.zeros(1, np.uint8))
    assert _rows(table) == [(5, 1, 1.0, 0)] and len(table) == 1


def _first_slot(tag: int, bits: int = 10) -> int:
    """The slot :mod:`core.idtable` tries first for ``tag`` in a table of ``2**bits`` slots."""
    return ((tag * int(_HASH)) % 2**64) >> (64 - bits)


def test_the_same_slots_holding_other_tags_are_sorted_afresh() -> None:
    """The table keeps its last peek's order while the same tags sit in the same slots. Two tags
    that want the same slot swap places when they come in the other order after a clear: the used
    slots are the same, the keys in them are not, and the old order would pair the wrong rows."""
    a = 1
    b = next(t for t in range(2, 100_000) if _first_slot(t) == _first_slot(a))
    table = LatestRows()
    zeros = np.zeros(2, np.int64)
    table.merge(zeros, np.array([a, b], np.int64), np.array([1.0, 2.0]), np.zeros(2, np.uint8))
    assert _rows(table) == [(a, 0, 1.0, 0), (b, 0, 2.0, 0)]
    used = np.flatnonzero(table._used).tolist()
    table.clear()
    table.merge(zeros, np.array([b, a], np.int64), np.array([20.0, 10.0]), np.zeros(2, np.uint8))
    assert np.flatnonzero(table._used).tolist() == used  # the same slots, the tags swapped
    assert _rows(table) == [(a, 0, 10.0, 0), (b, 0, 20.0, 0)]
