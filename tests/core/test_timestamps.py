"""The timestamp rule every source applies (core.timestamps)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.timestamps import SECOND, TimestampWindow

NOW = 1_780_000_000 * SECOND
INT64 = np.iinfo(np.int64)


@given(st.integers(min_value=-(10**40), max_value=10**40) | st.none())
def test_any_stamp_comes_out_inside_the_window_and_fits_int64(stamp: int | None) -> None:
    w = TimestampWindow(max_past_s=3600, max_future_s=60)
    used, reason = w.check(stamp, NOW)
    assert NOW - 3600 * SECOND <= used <= NOW + 60 * SECOND
    assert INT64.min <= used <= INT64.max
    assert (reason is None) == (stamp is not None and used == stamp)


def test_edges_are_inclusive_and_reasons_named() -> None:
    w = TimestampWindow(max_past_s=10, max_future_s=1)
    assert w.check(NOW - 10 * SECOND, NOW) == (NOW - 10 * SECOND, None)
    assert w.check(NOW - 10 * SECOND - 1, NOW) == (NOW, "too_old")
    assert w.check(NOW + SECOND, NOW) == (NOW + SECOND, None)
    assert w.check(NOW + SECOND + 1, NOW) == (NOW, "future")
    assert w.check(None, NOW) == (NOW, "unreadable")


def test_array_check_matches_the_scalar_one() -> None:
    w = TimestampWindow(max_past_s=10, max_future_s=1)
    ts = np.array([INT64.min, NOW - 11 * SECOND, NOW, NOW + 2 * SECOND, INT64.max], dtype=np.int64)
    used, reasons = w.check_array(ts, NOW)
    expected = [w.check(int(t), NOW) for t in ts]
    assert used.tolist() == [u for u, _ in expected]
    assert reasons.tolist() == [r for _, r in expected]
    assert ts[0] == INT64.min  # input untouched


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_window_refuses_bad_bounds(bad: float) -> None:
    with pytest.raises(ValueError, match="max_past_s"):
        TimestampWindow(max_past_s=bad)
