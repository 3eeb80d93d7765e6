"""The one-pass QoS 0 packer produces exactly the packets of the general path, for any batch."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mqtt.publisher import (
    _encode_tags,
    _packed_tags,
    format_batch,
    json_numbers,
    pack_batch_qos0,
    pack_publish_qos0,
    unpack_publish_qos0,
)
from core.batch import PointBatch
from core.tags import TagInfo

TAGS = {
    1: TagInfo(1, "press-01", "temp", "degC", "acme/p1/press/l1/press-01/temp"),
    2: TagInfo(2, "press-01", "état", "", "acme/p1/presse-à-chaud/l1/press-01/état"),  # non-ASCII topic
    3: TagInfo(3, "press-01", "speed", 'r"p/m', "acme/p1/press/l1/press-01/" + "x" * 300),  # long topic
    4: TagInfo(4, "press-01", "bad", "", "acme/+/bad"),  # not publishable: left to the general path
}
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6).map(float),
)


@st.composite
def batches(draw: st.DrawFn) -> PointBatch:
    n = draw(st.integers(0, 30))
    ids = draw(st.lists(st.sampled_from([1, 2, 3, 99]), min_size=n, max_size=n))
    values = draw(st.lists(VALUES, min_size=n, max_size=n))
    quality = draw(st.lists(st.sampled_from([0, 64, 65, 128, 140, 200]), min_size=n, max_size=n))
    one_stamp = draw(st.booleans())
    base = 1_700_000_000_123_456_789
    ts = [base] * n if one_stamp else [base + draw(st.integers(0, 10**12)) for _ in range(n)]
    texts = draw(st.dictionaries(st.integers(0, max(0, n - 1)), st.text(max_size=20), max_size=3))
    return PointBatch(
        "press-01",
        np.array(ts, dtype=np.int64),
        np.array(ids, dtype=np.int64),
        np.array(values, dtype=np.float64),
        np.array(quality, dtype=np.uint8),
        text=texts if n and texts else None,
    )


@settings(max_examples=300, deadline=None)
@given(batches(), st.booleans())
def test_one_pass_packets_equal_the_general_path(batch: PointBatch, retain: bool) -> None:
    blob, count, unknown = pack_batch_qos0(batch, _packed_tags(TAGS), retain)
    messages, unknown_general = format_batch(batch, _encode_tags(TAGS))
    assert unknown == unknown_general
    assert count == len(messages)
    general = b"".join(bytes(b) for b, _n in pack_publish_qos0(messages, retain))
    assert blob == general
    assert unpack_publish_qos0(blob) == messages


def test_a_tag_with_an_unpublishable_topic_is_not_packed() -> None:
    batch = PointBatch.from_values("press-01", [1, 4], [1.0, 2.0], ts_ns=1_700_000_000 * 10**9)
    _blob, count, unknown = pack_batch_qos0(batch, _packed_tags(TAGS), retain=False)
    assert (count, unknown) == (1, [4])  # the publisher then takes the general path, which refuses it


def _reference(v: float) -> str:
    return repr(v) if math.isfinite(v) else "null"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(VALUES, st.floats(-1e-3, 1e-3), st.floats(width=32)), max_size=40))
def test_json_numbers_are_pythons_repr(values: list[float]) -> None:
    """The batch formatter (orjson over the array) writes each value as ``repr`` would, any magnitude."""
    assert json_numbers(np.array(values, dtype=np.float64)) == [_reference(v) for v in values]


def test_json_numbers_of_a_strided_view() -> None:
    values = np.arange(10, dtype=np.float64) * 1e-6  # 0, 1e-06, 2e-06, ...: the repr-notation range
    assert json_numbers(values[::3]) == [_reference(v) for v in values[::3].tolist()]
