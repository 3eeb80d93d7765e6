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


class _Tiny(LatestRows):
    """Four slots to start with: growing (with kept rows and with tags whose rows were written) is
    exercised by a few rows."""

    _MIN_SLOTS = 4


_many_ids = st.sampled_from([*range(1, 20), 2**40 + 5, 2**62 + 11, 2**63 - 1, 123_456_789_012])
_many_chunks = st.lists(
    st.lists(
        st.tuples(_many_ids, st.integers(-5, 5), st.floats(allow_nan=True), st.integers(0, 255)), max_size=30
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(chunks=_chunks | _many_chunks, clear_after=st.integers(0, 8), tiny=st.booleans())
def test_newest_row_per_tag_in_tag_order(chunks: list[list[Row]], clear_after: int, tiny: bool) -> None:
    table = _Tiny() if tiny else LatestRows()
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


def test_grows_with_its_tags_and_keeps_them_after_a_clear() -> None:
    rng = np.random.default_rng(7)
    table = LatestRows()
    ids = rng.integers(1, 2**63 - 1, 20_000, dtype=np.int64)
    for k in range(3):  # the same 20,000 tags three times: the last time wins
        table.merge(np.full(20_000, k, np.int64), ids, np.full(20_000, float(k)), np.zeros(20_000, np.uint8))
    t, got, v, _q = table.peek()
    assert got.tolist() == sorted(set(ids.tolist())) and set(t.tolist()) == {2} and set(v.tolist()) == {2.0}
    slots = len(table._keys)
    order = table._order
    table.clear()
    some = ids[::7]
    table.merge(np.full(len(some), 5, np.int64), some, np.full(len(some), 5.0), np.zeros(len(some), np.uint8))
    t, got, v, _q = table.peek()
    assert got.tolist() == sorted(set(some.tolist())) and set(v.tolist()) == {5.0} and len(table) == len(got)
    assert len(table._keys) == slots and table._order is order  # same slots: not sorted again


def _first_slot(tag: int, bits: int = 10) -> int:
    """The slot :mod:`core.idtable` tries first for ``tag`` in a table of ``2**bits`` slots."""
    return ((tag * int(_HASH)) % 2**64) >> (64 - bits)


def test_a_new_tag_after_a_clear_is_sorted_in() -> None:
    """Tags keep their slots after a clear, so the slots' order by tag is kept too, until a new tag
    takes a slot: then it is sorted again (the new tag probes past an old one's slot here)."""
    a = 10**6
    b = next(t for t in range(2, 100_000) if _first_slot(t) == _first_slot(a))  # b < a, after a's slot
    table = LatestRows()
    one = np.zeros(1, np.int64)
    table.merge(one, np.array([a], np.int64), np.array([1.0]), np.zeros(1, np.uint8))
    assert _rows(table) == [(a, 0, 1.0, 0)]
    table.clear()
    assert _rows(table) == [] and len(table) == 0
    table.merge(
        np.zeros(2, np.int64), np.array([a, b], np.int64), np.array([10.0, 20.0]), np.zeros(2, np.uint8)
    )
    assert _rows(table) == [(b, 0, 20.0, 0), (a, 0, 10.0, 0)]
    table.clear()
    table.merge(one, np.array([a], np.int64), np.array([3.0]), np.zeros(1, np.uint8))
    assert _rows(table) == [(a, 0, 3.0, 0)]  # b's row was written: not kept


def test_peek_never_writes_past_its_outputs() -> None:
    """The compiled copy sizes its outputs by the kept-row count; were the count ever short, it stops
    at their end and ``peek`` gathers the rows the plain numpy way instead (no write out of bounds)."""
    table = LatestRows()
    table.merge(np.array([5, 6, 7]), np.array([3, 1, 2]), np.array([0.5, 0.1, 0.2]), np.zeros(3, np.uint8))
    table._count = 1  # a count gone wrong
    t, ids, values, _ = table.peek()
    assert ids.tolist() == [1, 2, 3] and t.tolist() == [6, 7, 5] and values.tolist() == [0.1, 0.2, 0.5]
