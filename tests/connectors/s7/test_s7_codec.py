"""Read planning: coalescing, PDU packing limits, per-item quality, vectorized decode vs reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.s7.address import S7Address, parse_address
from connectors.s7.codec import MAX_ITEMS_PER_REQUEST, ReadPlan, decode_value, encode_value
from core.quality import Quality


def _check_plan(plan: ReadPlan) -> None:
    assert sorted(k for r in plan.requests for k in r.items) == list(range(len(plan.items)))
    for r in plan.requests:
        assert 1 <= len(r.items) <= MAX_ITEMS_PER_REQUEST
        assert r.request_bytes <= plan.pdu_size
        assert r.response_bytes <= plan.pdu_size
    for it in plan.items:
        assert it.size <= plan.pdu_size - 18


def test_adjacent_tags_share_one_item_and_gaps_split_them() -> None:
    tags = [
        (1, parse_address("DB1.DBD0", "REAL")),
        (2, parse_address("DB1.DBW10", "INT")),  # gap of 6 <= 16
        (3, parse_address("DB1.DBW100", "INT")),  # gap too large
        (4, parse_address("DB2.DBW0", "INT")),  # another DB
        (5, parse_address("M0.0", "BOOL")),
        (6, parse_address("M0.1", "BOOL")),  # same byte
    ]
    plan = ReadPlan(tags, pdu_size=480, max_gap=16)
    assert [(i.area, i.db, i.start, i.size) for i in plan.items] == [
        ("DB", 1, 0, 12),
        ("DB", 1, 100, 2),
        ("DB", 2, 0, 2),
        ("M", 0, 0, 1),
    ]
    assert len(plan.requests) == 1
    _check_plan(plan)


def test_many_scattered_tags_need_several_requests_within_the_pdu() -> None:
    tags = [(i, parse_address(f"DB1.DBD{i * 40}", "REAL")) for i in range(500)]  # one item per tag
    for pdu in (240, 480, 960):
        plan = ReadPlan(tags, pdu_size=pdu)
        assert len(plan.items) == 500
        assert len(plan.requests) >= 500 / MAX_ITEMS_PER_REQUEST
        _check_plan(plan)
    dense = [(i, parse_address(f"DB1.DBD{i * 4}", "REAL")) for i in range(500)]  # 2000 contiguous bytes
    plan = ReadPlan(dense, pdu_size=240)
    assert len(plan.items) == 10 and all(i.size <= 222 for i in plan.items)
    assert len(plan.requests) == 10  # an item this large fills a response alone
    _check_plan(plan)


def test_a_string_longer_than_one_pdu_spans_items() -> None:
    addr = parse_address("DB1.DBB10", "STRING", 254)
    plan = ReadPlan([(1, parse_address("DB1.DBB0", "BYTE")), (2, addr)], pdu_size=240)
    _check_plan(plan)
    assert [(i.start, i.size) for i in plan.items] == [(0, 1), (10, 222), (232, 34)]
    memory = np.zeros(300, np.uint8)
    memory[10:266] = np.frombuffer(encode_value("x" * 254, addr), np.uint8)
    buf = plan.buffer()
    for it in plan.items:
        buf[it.offset : it.offset + it.size] = memory[it.start : it.start + it.size]
    _, quality, text = plan.decode(buf, np.zeros(3, np.uint8))
    assert text == {1: "x" * 254} and quality.tolist() == [0, 0]
    item_q = np.array([Quality.GOOD, Quality.GOOD, Quality.DEVICE_EXCEPTION], np.uint8)
    _, quality, text = plan.decode(buf, item_q)
    assert quality.tolist() == [Quality.GOOD, Quality.DEVICE_EXCEPTION] and text == {}


def test_item_quality_maps_to_its_tags_only() -> None:
    tags = [(1, parse_address("DB1.DBW0", "INT")), (2, parse_address("DB9.DBW0", "INT"))]
    plan = ReadPlan(tags)
    item_q = np.array([Quality.GOOD, Quality.DEVICE_EXCEPTION], np.uint8)
    values, quality, _ = plan.decode(plan.buffer(), item_q)
    assert quality.tolist() == [Quality.GOOD, Quality.DEVICE_EXCEPTION]
    assert values[0] == 0 and np.isnan(values[1])


def test_nan_real_is_out_of_range_and_overlong_string_a_config_error() -> None:
    tags = [(1, parse_address("MD0", "REAL")), (2, parse_address("MB4", "STRING", 2))]
    plan = ReadPlan(tags)
    buf = plan.buffer()
    buf[:4] = [0x7F, 0xC0, 0, 0]
    buf[4:8] = [2, 5, 65, 66]  # actual length 5 > declared 2
    _, quality, text = plan.decode(buf, np.zeros(len(plan.items), np.uint8))
    assert quality.tolist() == [Quality.OUT_OF_RANGE, Quality.CONFIG_ERROR] and text == {}


_TYPES = ("BOOL", "BYTE", "WORD", "INT", "DWORD", "DINT", "REAL", "LREAL", "STRING")


@st.composite
def _tag(draw: st.DrawFn) -> S7Address:
    dt = draw(st.sampled_from(_TYPES))
    area = draw(st.sampled_from(["DB1.DB", "DB2.DB", "M", "I", "Q"]))
    byte = draw(st.integers(0, 600))
    if dt == "BOOL":
        return parse_address(f"{area}X{byte}.{draw(st.integers(0, 7))}", dt)
    letter = {"WORD": "W", "INT": "W", "DWORD": "D", "DINT": "D", "REAL": "D"}.get(dt, "B")
    return parse_address(f"{area}{letter}{byte}", dt, draw(st.integers(1, 40)) if dt == "STRING" else None)


@settings(max_examples=60, deadline=None)
@given(
    addrs=st.lists(_tag(), min_size=1, max_size=80),
    pdu=st.sampled_from([240, 480, 960]),
    seed=st.integers(0, 99),
)
def test_vectorized_decode_equals_the_scalar_reference(addrs: list[S7Address], pdu: int, seed: int) -> None:
    plan = ReadPlan(list(enumerate(addrs)), pdu_size=pdu)
    _check_plan(plan)
    # fill the device memory with random bytes, then copy every item as a device would answer
    rng = np.random.default_rng(seed)
    memory = {
        key: rng.integers(0, 256, 1000, dtype=np.uint8)
        for key in [("DB", 1), ("DB", 2), ("M", 0), ("I", 0), ("Q", 0)]
    }
    for a in addrs:
        if a.data_type == "STRING":  # keep strings well-formed
            assert a.length is not None
            memory[(a.area, a.db or 0)][a.byte + 1] %= a.length + 1
    buf = plan.buffer()
    for it in plan.items:
        buf[it.offset : it.offset + it.size] = memory[(it.area, it.db)][it.start : it.start + it.size]
    values, quality, text = plan.decode(buf, np.zeros(len(plan.items), np.uint8))
    for i, a in enumerate(addrs):
        mem = memory[(a.area, a.db or 0)]
        expected = decode_value(mem[a.byte : a.byte + a.size].tobytes(), a)
        if isinstance(expected, str):
            assert text[i] == expected
        elif np.isfinite(expected):
            assert values[i] == expected and quality[i] == Quality.GOOD
        else:
            assert quality[i] == Quality.OUT_OF_RANGE


def test_pdu_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="`pdu_size` must be >="):
        ReadPlan([], pdu_size=10)
