"""The compiled QoS 0 packer produces exactly the packets of the general path, for any batch."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mqtt.packing import PackTable
from connectors.mqtt.publisher import (
    _encode_tags,
    format_batch,
    json_numbers,
    pack_publish_qos0,
    unpack_publish_qos0,
)
from core.batch import PointBatch
from core.tags import TagInfo

TAGS = {
    1: TagInfo(1, "press-01", "temp", "degC", "acme/p1/press/l1/press-01/temp"),
    2: TagInfo(2, "press-01", "état", "", "acme/p1/presse-à-chaud/l1/press-01/état"),  # non-ASCII topic
    3: TagInfo(3, "press-01", "speed", 'r"p/m', "acme/p1/press/l1/press-01/" + "x" * 300),  # long topic
    5: TagInfo(5, "press-01", "big", "u" * 17_000, "acme/p1/big"),  # a packet over 16,383 bytes
    -6: TagInfo(-6, "press-01", "neg", "bar", "acme/p1/neg"),
    4: TagInfo(4, "press-01", "bad", "", "acme/+/bad"),  # not publishable: left to the general path
}
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6).map(float),
)


@st.composite
def batches(draw: st.DrawFn) -> PointBatch:
    n = draw(st.integers(0, 30))
    ids = draw(st.lists(st.sampled_from([1, 2, 3, 5, -6, 99, 2**62 + 1]), min_size=n, max_size=n))
    values = draw(st.lists(VALUES, min_size=n, max_size=n))
    quality = draw(st.lists(st.sampled_from([0, 64, 65, 128, 140, 200]), min_size=n, max_size=n))
    one_stamp = draw(st.booleans())
    stamps = st.one_of(
        st.integers(0, 2**63 - 1),  # 1970 to 2262
        st.integers(1_700_000_000_000_000_000, 1_700_000_100_000_000_000),  # around now
        st.integers(-(2**62), -1),  # before 1970: the per-point path
    )
    base = draw(stamps)
    ts = [base] * n if one_stamp else [draw(stamps) for _ in range(n)]
    texts = draw(st.dictionaries(st.integers(0, max(0, n - 1)), st.text(max_size=20), max_size=3))
    return PointBatch(
        "press-01",
        np.array(ts, dtype=np.int64),
        np.array(ids, dtype=np.int64),
        np.array(values, dtype=np.float64),
        np.array(quality, dtype=np.uint8),
        text=texts if n and texts else None,
    )


@settings(max_examples=500, deadline=None)
@given(batches(), st.booleans())
def test_compiled_packets_equal_the_general_path(batch: PointBatch, retain: bool) -> None:
    packed = PackTable().with_tags(TAGS).pack(batch, retain)
    messages, unknown_general = format_batch(batch, _encode_tags(TAGS))
    if packed is None:  # left to the general path: text points or a timestamp before 1970
        assert batch.text or bool((batch.ts_ns < 0).any())
        return
    blob, count, unknown = packed
    assert unknown == [t for t in batch.tag_ids.tolist() if t not in TAGS or t == 4]  # 4: not publishable
    assert unknown_general == [t for t in batch.tag_ids.tolist() if t not in TAGS]
    publishable = [m for m in messages if "+" not in m[0]]
    assert count == len(publishable)
    assert blob == b"".join(bytes(b) for b, _n in pack_publish_qos0(publishable, retain))
    assert unpack_publish_qos0(blob) == publishable


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 600), st.integers(1, 400), st.sampled_from(["", "bar", "°C"])), max_size=24
    )
)
def test_a_table_learned_change_by_change_packs_as_the_last_tags_say(
    changes: list[tuple[int, int, str]],
) -> None:
    """Tags learned in hot changes — new ones (the table grows), relearned ones with another unit or
    topic (old bytes dropped by compaction) — pack like a table built at once from the final tags."""
    table = PackTable()
    final: dict[int, TagInfo] = {}
    for version, (first, count, unit) in enumerate(changes):
        tags = {
            tid: TagInfo(tid, "d", f"t{tid}", unit, f"site/d/t{tid}/v{version % 3}")
            for tid in range(first + 1, first + 1 + count)
        }
        table = table.with_tags(tags)
        final.update(tags)
    assert len(table) == len(final)
    ids = [*sorted(final)[::7], 10**6]
    batch = PointBatch.from_values("d", ids, [float(i) for i in range(len(ids))], ts_ns=1_700_000_000 * 10**9)
    packed = table.pack(batch, retain=False)
    assert packed is not None
    messages, unknown = format_batch(batch, _encode_tags(final))
    assert packed[1:] == (len(messages), unknown)
    assert packed[0] == b"".join(bytes(b) for b, _n in pack_publish_qos0(messages, retain=False))


def test_a_tag_with_an_unpublishable_topic_is_not_packed() -> None:
    batch = PointBatch.from_values("press-01", [1, 4], [1.0, 2.0], ts_ns=1_700_000_000 * 10**9)
    _blob, count, unknown = PackTable().with_tags(TAGS).pack(batch, retain=False) or (b"", -1, [])
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
