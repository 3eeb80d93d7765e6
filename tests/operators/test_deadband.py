"""Deadband: band, heartbeat, quality changes, tag sets, duplicates, and the naive reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings

from core.batch import PointBatch
from core.quality import Quality
from operators.deadband import Deadband, DeadbandParams, DeadbandState
from tests.operators.operators_reference import (
    NaiveDeadband,
    batch_sequences,
    copy_of,
    deadband_config_st,
    frozen,
    published_mask,
    same_batch,
)

S = 1_000_000_000


class Feed:
    """Feeds one device's batches through a core, keeping the state like the Bytewax logic does."""

    def __init__(self, core: Deadband) -> None:
        self.core = core
        self.state = DeadbandState.empty()

    def __call__(
        self,
        tags: list[int],
        values: list[float],
        *,
        t: float | list[float] = 0,
        quality: list[int] | int = 0,
    ) -> list[tuple[int, float]]:
        ts = np.asarray(np.array(t) * S, dtype=np.int64)
        b = frozen(PointBatch.from_values("d", tags, values, ts_ns=ts, quality=quality))
        self.state, out = self.core.process(self.state, b)
        return list(zip(out.tag_ids.tolist(), out.values.tolist(), strict=True))


def test_absolute_band_is_strict_and_measured_from_the_last_published_value() -> None:
    feed = Feed(Deadband({1: DeadbandParams(absolute=1.0)}))
    assert feed([1], [10.0], t=0) == [(1, 10.0)]  # first point
    assert feed([1], [11.0], t=1) == []  # exactly the band: not more
    assert feed([1], [10.6], t=2) == []
    assert feed([1], [11.5], t=3) == [(1, 11.5)]  # > band from 10.0 (not from 10.6)
    assert feed([1], [10.5], t=4) == []  # exactly the band below
    assert feed([1], [10.4], t=5) == [(1, 10.4)]


def test_percent_band_of_span() -> None:
    feed = Feed(Deadband({1: DeadbandParams(percent=0.5, span=400.0)}))  # band 2.0
    assert feed([1], [100.0]) == [(1, 100.0)]
    assert feed([1], [101.9], t=1) == []
    assert feed([1], [102.1], t=2) == [(1, 102.1)]


def test_both_bands_use_the_smaller() -> None:
    assert DeadbandParams(absolute=5.0, percent=1.0, span=100.0).band() == 1.0
    assert DeadbandParams(absolute=0.5, percent=1.0, span=100.0).band() == 0.5
    assert DeadbandParams().band() == 0.0  # report by exception: any change


def test_percent_without_positive_span_is_refused_naming_the_tag() -> None:
    for span in (None, 0.0, -3.0):
        with pytest.raises(ValueError, match=r"tag 42.*`percent`.*positive `span`"):
            Deadband({42: DeadbandParams(percent=1.0, span=span)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"absolute": -1.0}, "`absolute` must be a finite number >= 0, got -1.0"),
        ({"percent": math.nan}, "`percent` must be a finite number >= 0"),
        ({"heartbeat_s": 0.0}, "`heartbeat_s` must be > 0, got 0.0"),
        ({"heartbeat_s": math.inf}, "`heartbeat_s` must be > 0"),
    ],
)
def test_params_fail_at_construction(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeadbandParams(**kwargs)


def test_heartbeat_republishes_a_steady_value() -> None:
    feed = Feed(Deadband({1: DeadbandParams(absolute=1.0, heartbeat_s=30.0)}))
    assert feed([1], [5.0], t=0) == [(1, 5.0)]
    assert feed([1], [5.0], t=29.9) == []
    assert feed([1], [5.2], t=30) == [(1, 5.2)]  # due: republished with the current value
    assert feed([1], [5.2], t=59) == []
    assert feed([1], [5.2], t=60) == [(1, 5.2)]


def test_heartbeat_clock_restarts_on_every_publication() -> None:
    feed = Feed(Deadband({1: DeadbandParams(absolute=1.0, heartbeat_s=10.0)}))
    feed([1], [0.0], t=0)
    assert feed([1], [5.0], t=8) == [(1, 5.0)]  # band
    assert feed([1], [5.0], t=12) == []  # 4 s after the last publication
    assert feed([1], [5.0], t=18) == [(1, 5.0)]


def test_quality_change_publishes() -> None:
    feed = Feed(Deadband({1: DeadbandParams(absolute=10.0)}))
    assert feed([1], [1.0], quality=0) == [(1, 1.0)]
    assert feed([1], [1.0], quality=int(Quality.CLAMPED), t=1) == [(1, 1.0)]
    assert feed([1], [1.0], quality=int(Quality.CLAMPED), t=2) == []
    out = feed([1], [math.nan], quality=int(Quality.COMM_ERROR), t=3)
    assert len(out) == 1 and math.isnan(out[0][1])
    assert feed([1], [math.nan], quality=int(Quality.COMM_ERROR), t=4) == []  # a steady fault is quiet
    assert feed([1], [1.0], quality=0, t=5) == [(1, 1.0)]  # recovery


def test_nan_ness_change_publishes_even_with_the_same_quality() -> None:
    feed = Feed(Deadband({1: DeadbandParams(absolute=10.0)}))
    feed([1], [1.0])
    assert len(feed([1], [math.nan], t=1)) == 1
    assert feed([1], [math.nan], t=2) == []
    assert feed([1], [1.0], t=3) == [(1, 1.0)]


def test_unconfigured_tags_always_pass() -> None:
    feed = Feed(Deadband({1: DeadbandParams(absolute=10.0)}))
    assert feed([1, 2], [1.0, 1.0]) == [(1, 1.0), (2, 1.0)]
    assert feed([1, 2], [1.0, 1.0], t=1) == [(2, 1.0)]
    assert len(feed.state) == 1  # no state kept for tags without a deadband


def test_new_tags_appear_and_absent_tags_keep_their_state() -> None:
    params = {t: DeadbandParams(absolute=1.0) for t in (1, 2, 3, 4)}
    feed = Feed(Deadband(params))
    assert feed([1, 2], [0.0, 0.0]) == [(1, 0.0), (2, 0.0)]
    assert feed([3, 1, 2], [7.0, 0.5, 0.5], t=1) == [(3, 7.0)]  # new tag 3 published, others held
    assert feed.state.tag_ids.tolist() == [1, 2, 3]
    assert feed([3], [7.5], t=2) == []  # tags 1 and 2 absent: their state stays
    assert feed.state.last(1) == (0.0, 0, 0)
    assert feed([2, 1, 4], [0.9, 1.6, 0.0], t=3) == [(1, 1.6), (4, 0.0)]  # back, measured from 0.0
    assert feed.state.tag_ids.tolist() == [1, 2, 3, 4]
    assert feed([4, 2], [0.0, 1.1], t=4) == [(2, 1.1)]


def test_duplicate_tags_in_one_batch_are_processed_in_order() -> None:
    feed = Feed(Deadband({1: DeadbandParams(absolute=1.0), 2: DeadbandParams(absolute=1.0)}))
    out = feed([1, 2, 1, 1, 2, 1], [0.0, 5.0, 0.5, 1.5, 5.2, 2.0], t=[0, 0, 1, 2, 2, 3])
    assert out == [(1, 0.0), (2, 5.0), (1, 1.5)]  # 2.0 is within the band of 1.5
    assert feed.state.last(1) == (1.5, 2 * S, 0)


def test_text_points_always_pass() -> None:
    core = Deadband({1: DeadbandParams(absolute=1.0)})
    b = PointBatch(
        device_id="d",
        ts_ns=np.array([0, 1]),
        tag_ids=np.array([1, 1]),
        values=np.array([np.nan, np.nan]),
        quality=np.zeros(2, np.uint8),
        text={0: "A", 1: "B"},
    )
    state, out = core.process(DeadbandState.empty(), frozen(b))
    assert out is b and len(state) == 0


def test_state_is_never_modified_in_place() -> None:
    core = Deadband({1: DeadbandParams(absolute=1.0), 2: DeadbandParams(absolute=1.0)})
    s0 = DeadbandState.empty()
    s1, _ = core.process(s0, PointBatch.from_values("d", [1, 2], [0.0, 0.0], ts_ns=0))
    kept = (s1.tag_ids.copy(), s1.value.copy(), s1.ts_ns.copy(), s1.quality.copy())
    for column in (s1.tag_ids, s1.value, s1.ts_ns, s1.quality):
        column.flags.writeable = False
    s2, _ = core.process(s1, PointBatch.from_values("d", [1, 2], [5.0, 0.1], ts_ns=1))
    s3, _ = core.process(s2, PointBatch.from_values("d", [3, 1], [1.0, 9.0], ts_ns=2))
    assert len(s0) == 0
    for was, now in zip(kept, (s1.tag_ids, s1.value, s1.ts_ns, s1.quality), strict=True):
        np.testing.assert_array_equal(was, now)
    assert s2.last(1) == (5.0, 1, 0) and s3.last(1) == (9.0, 2, 0)
    s4, out = core.process(s3, PointBatch.from_values("d", [1], [9.5], ts_ns=3))
    assert s4 is s3 and len(out) == 0  # nothing published: the same state object


def test_empty_batch_and_empty_config() -> None:
    core = Deadband({})
    state = DeadbandState.empty()
    b = PointBatch.from_values("d", [1], [1.0], ts_ns=0)
    assert core.process(state, b) == (state, b)
    e = PointBatch.empty("d")
    assert Deadband({1: DeadbandParams()}).process(state, e) == (state, e)


@settings(max_examples=400, deadline=None)
@given(deadband_config_st, batch_sequences())
def test_vectorized_equals_naive_reference(
    params: dict[int, DeadbandParams], batches: list[PointBatch]
) -> None:
    core = Deadband(params)
    naive = NaiveDeadband(params)
    state = DeadbandState.empty()
    for raw in batches:
        b = frozen(raw)
        before = copy_of(b)
        state, out = core.process(state, b)
        want = naive.process(b)
        assert same_batch(out, b.select(np.array(want, dtype=bool)))
        assert same_batch(b, before)
    for tag, (v, ts, q) in naive.last.items():
        got = state.last(tag)
        assert (
            got is not None and got[1:] == (ts, q) and (got[0] == v or (math.isnan(v) and math.isnan(got[0])))
        )
    assert len(state) == len(naive.last)


@settings(max_examples=400, deadline=None)
@given(deadband_config_st, batch_sequences())
def test_published_value_never_drifts_past_the_band_nor_stays_silent_past_the_heartbeat(
    params: dict[int, DeadbandParams], batches: list[PointBatch]
) -> None:
    core = Deadband(params)
    state = DeadbandState.empty()
    last: dict[int, tuple[float, int, int]] = {}
    for b in batches:
        state, out = core.process(state, b)
        for i, published in enumerate(published_mask(b, out)):
            tag, v, ts, q = int(b.tag_ids[i]), float(b.values[i]), int(b.ts_ns[i]), int(b.quality[i])
            p = params.get(tag)
            if p is None:
                assert published
                continue
            if published:
                last[tag] = (v, ts, q)
                continue
            assert tag in last, "a tag's first point is always published"
            lv, lts, lq = last[tag]
            assert q == lq
            assert math.isnan(v) == math.isnan(lv)
            assert math.isnan(v) or abs(v - lv) <= p.band(tag)
            hb = p.heartbeat_ns()
            assert hb is None or ts - lts < hb
