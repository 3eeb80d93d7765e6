"""Normalizer: scaling, conversion, clamping, quality rules, and equality with a naive reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.batch import PointBatch
from core.quality import Quality
from operators.normalize import NormalizeParams, Normalizer
from operators.units import UnitError
from tests.operators.operators_reference import (
    batch_sequences,
    copy_of,
    frozen,
    naive_normalize,
    normalize_config_st,
    same_batch,
)

GOOD, CLAMPED, BAD, OOR = (
    int(Quality.GOOD),
    int(Quality.CLAMPED),
    int(Quality.COMM_ERROR),
    int(Quality.OUT_OF_RANGE),
)


def batch(tags: list[int], values: list[float], quality: list[int] | int = 0, *, ts: int = 0) -> PointBatch:
    return frozen(PointBatch.from_values("d", tags, values, ts_ns=ts, quality=quality))


def test_scale_offset_then_convert() -> None:
    norm = Normalizer({1: NormalizeParams(scale=0.1, offset=-10.0, convert=(1.8, 32.0))})
    out = norm.apply(batch([1], [1100.0]))
    assert out.values.tolist() == [pytest.approx(212.0)]
    assert out.quality.tolist() == [GOOD]


def test_for_units_builds_the_conversion() -> None:
    norm = Normalizer(
        {1: NormalizeParams.for_units("bar", "kPa"), 2: NormalizeParams.for_units("degC", "degF")}
    )
    assert norm.apply(batch([1, 2], [1.0, 100.0])).values.tolist() == [100.0, 212.0]
    with pytest.raises(UnitError, match="'degC' to 'bar'"):
        NormalizeParams.for_units("degC", "bar")


def test_clamping_flags_good_points_and_keeps_worse_qualities() -> None:
    norm = Normalizer({1: NormalizeParams(clamp_low=0.0, clamp_high=100.0)})
    out = norm.apply(
        batch([1, 1, 1, 1, 1], [-5.0, 50.0, 150.0, 150.0, 100.0], [0, 0, 0, int(Quality.STALE), 0])
    )
    assert out.values.tolist() == [0.0, 50.0, 100.0, 100.0, 100.0]
    assert out.quality.tolist() == [CLAMPED, GOOD, CLAMPED, int(Quality.STALE), GOOD]


def test_one_sided_clamp() -> None:
    norm = Normalizer({1: NormalizeParams(clamp_low=0.0)})
    out = norm.apply(batch([1, 1], [-1.0, 1e9]))
    assert out.values.tolist() == [0.0, 1e9]
    assert out.quality.tolist() == [CLAMPED, GOOD]


def test_bad_points_pass_through_unchanged() -> None:
    norm = Normalizer({1: NormalizeParams(scale=10.0, clamp_high=1.0)})
    out = norm.apply(batch([1, 1], [float("nan"), 5.0], [BAD, int(Quality.DEVICE_EXCEPTION)]))
    assert math.isnan(out.values[0]) and out.values[1] == 5.0
    assert out.quality.tolist() == [BAD, int(Quality.DEVICE_EXCEPTION)]


def test_non_finite_good_values_become_out_of_range() -> None:
    norm = Normalizer({1: NormalizeParams(scale=1e300, clamp_low=-1.0, clamp_high=1.0)})
    out = norm.apply(batch([1, 1, 1, 1], [float("nan"), float("inf"), 1e300, 1e-301]))
    assert out.quality.tolist() == [OOR, OOR, OOR, GOOD]
    assert (
        math.isnan(out.values[0]) and out.values[1] == math.inf and out.values[2] == math.inf
    )  # not clamped
    assert out.values[3] == pytest.approx(0.1)


def test_unconfigured_tags_pass_through_unchanged() -> None:
    norm = Normalizer({1: NormalizeParams(scale=2.0)})
    inp = batch([9, 1, 8], [-0.0, 3.0, float("nan")])
    out = norm.apply(inp)
    assert out.values[1] == 6.0
    assert math.copysign(1.0, out.values[0]) == -1.0 and math.isnan(out.values[2])
    assert out.quality.tolist() == [GOOD, GOOD, GOOD]  # NaN of an unconfigured tag is not judged
    only_unconfigured = batch([9, 8], [1.0, 2.0])
    assert norm.apply(only_unconfigured) is only_unconfigured


def test_text_points_are_left_alone() -> None:
    norm = Normalizer({1: NormalizeParams(scale=2.0)})
    b = frozen(
        PointBatch(
            device_id="d",
            ts_ns=np.zeros(2, np.int64),
            tag_ids=np.array([1, 1]),
            values=np.array([np.nan, 2.0]),
            quality=np.zeros(2, np.uint8),
            text={0: "RUNNING"},
        )
    )
    out = norm.apply(b)
    assert out.quality.tolist() == [GOOD, GOOD] and out.values[1] == 4.0 and out.text == {0: "RUNNING"}


def test_input_is_not_mutated_and_output_is_new() -> None:
    norm = Normalizer({1: NormalizeParams(scale=2.0, clamp_high=5.0)})
    inp = batch([1, 2], [4.0, 4.0])
    before = copy_of(inp)
    out = norm.apply(inp)
    assert same_batch(inp, before)
    assert out is not inp and out.values is not inp.values and out.quality is not inp.quality
    assert out.values.tolist() == [5.0, 4.0]


def test_params_are_copied_at_construction() -> None:
    params = {1: NormalizeParams(scale=2.0)}
    norm = Normalizer(params)
    params[1] = NormalizeParams(scale=3.0)
    assert norm.apply(batch([1], [1.0])).values.tolist() == [2.0]
    with pytest.raises(TypeError):
        norm.params[1] = NormalizeParams()  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": math.nan}, "`scale` must be finite"),
        ({"offset": math.inf}, "`offset` must be finite"),
        ({"convert": (1.0, math.nan)}, "`convert` must be a finite"),
        (
            {"clamp_low": 2.0, "clamp_high": 1.0},
            "`clamp_low` \\(2.0\\) must not be above `clamp_high` \\(1.0\\)",
        ),
        ({"clamp_high": math.nan}, "`clamp_high` must not be NaN"),
    ],
)
def test_params_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NormalizeParams(**kwargs)  # type: ignore[arg-type]


def test_alignment_cache_follows_tag_set_changes() -> None:
    norm = Normalizer({1: NormalizeParams(scale=2.0), 2: NormalizeParams(scale=3.0)})
    assert norm.apply(batch([1, 2], [1.0, 1.0])).values.tolist() == [2.0, 3.0]
    assert norm.apply(batch([1, 2], [2.0, 2.0])).values.tolist() == [4.0, 6.0]  # cached
    assert norm.apply(batch([2, 1], [1.0, 1.0])).values.tolist() == [3.0, 2.0]  # same length, new order
    assert norm.apply(batch([2], [1.0])).values.tolist() == [3.0]
    assert norm.apply(PointBatch.empty("d")).values.tolist() == []


def test_empty_normalizer() -> None:
    norm = Normalizer({})
    b = batch([1], [1.0])
    assert norm.apply(b) is b


@settings(max_examples=300, deadline=None)
@given(normalize_config_st, batch_sequences(max_batches=4, max_points=16), st.data())
def test_vectorized_equals_naive_reference(
    params: dict[int, NormalizeParams], batches: list[PointBatch], data: st.DataObject
) -> None:
    norm = Normalizer(params)
    for raw in batches:
        b = frozen(raw)
        before = copy_of(b)
        out = norm.apply(b)
        values, quality = naive_normalize(params, b)
        np.testing.assert_array_equal(out.values, np.array(values, dtype=np.float64))
        assert out.quality.tolist() == quality
        assert out.tag_ids.tolist() == b.tag_ids.tolist() and out.ts_ns.tolist() == b.ts_ns.tolist()
        assert same_batch(b, before)
        # a second pass over an equal (not identical) tag array takes the cached path: same result
        again = norm.apply(
            PointBatch.from_values("dev", b.tag_ids.copy(), b.values, ts_ns=b.ts_ns, quality=b.quality)
        )
        assert same_batch(again, out)
