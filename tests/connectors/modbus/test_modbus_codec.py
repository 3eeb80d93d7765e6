"""Golden vectors and round-trip properties of the register codec; coalescing of the read plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.modbus.codec import (
    ReadPlan,
    ReadRequest,
    decode_registers,
    decode_string,
    encode_string,
    encode_value,
    int_range,
    split_request,
    value_range,
)
from connectors.modbus.config import (
    BYTE_ORDER_64,
    ByteOrder,
    DataType,
    ModbusTagAddress,
    StringByteOrder,
    WordOrder,
)
from tests.connectors.modbus.modbus_testlib import GOLDEN as ORDER_GOLDEN

BYTE_ORDERS: list[ByteOrder] = ["ABCD", "CDAB", "BADC", "DCBA"]

A = ModbusTagAddress

# (data_type, value, registers with word_order="big", registers with word_order="little")
GOLDEN: list[tuple[DataType, float, list[int], list[int]]] = [
    ("bool", 1, [1], [1]),
    ("bool", 0, [0], [0]),
    ("int16", -1, [0xFFFF], [0xFFFF]),
    ("int16", -32768, [0x8000], [0x8000]),
    ("int16", 0x1234, [0x1234], [0x1234]),
    ("uint16", 65535, [0xFFFF], [0xFFFF]),
    ("uint16", 0xABCD, [0xABCD], [0xABCD]),
    ("int32", -2, [0xFFFF, 0xFFFE], [0xFFFE, 0xFFFF]),
    ("int32", 0x12345678, [0x1234, 0x5678], [0x5678, 0x1234]),
    ("int32", -(2**31), [0x8000, 0x0000], [0x0000, 0x8000]),
    ("uint32", 0x12345678, [0x1234, 0x5678], [0x5678, 0x1234]),
    ("uint32", 2**32 - 1, [0xFFFF, 0xFFFF], [0xFFFF, 0xFFFF]),
    ("uint32", 65536, [0x0001, 0x0000], [0x0000, 0x0001]),
    ("float32", 1.5, [0x3FC0, 0x0000], [0x0000, 0x3FC0]),
    ("float32", -2.0, [0xC000, 0x0000], [0x0000, 0xC000]),
    ("float32", 123.456, [0x42F6, 0xE979], [0xE979, 0x42F6]),
    ("float32", math.inf, [0x7F80, 0x0000], [0x0000, 0x7F80]),
]


@pytest.mark.parametrize(("data_type", "value", "big", "little"), GOLDEN)
@pytest.mark.parametrize("order", ["big", "little"])
def test_golden_vectors_legacy_word_order(
    data_type: DataType, value: float, big: list[int], little: list[int], order: WordOrder
) -> None:
    regs = big if order == "big" else little
    assert encode_value(value, data_type, order) == regs
    decoded = decode_registers(np.array(regs, dtype=np.uint16), data_type, order)
    expected = float(np.float32(value)) if data_type == "float32" else float(value)
    assert decoded.tolist() == [expected]


@pytest.mark.parametrize(("data_type", "value", "by_order"), ORDER_GOLDEN)
@pytest.mark.parametrize("order", BYTE_ORDERS)
def test_golden_vectors_every_byte_order(
    data_type: DataType, value: float, by_order: dict[str, list[int]], order: ByteOrder
) -> None:
    regs = by_order[order]
    assert encode_value(value, data_type, order) == regs
    expected = float(np.float32(value)) if data_type == "float32" else float(value)
    assert decode_registers(regs, data_type, order).tolist() == [expected]


def test_golden_vectors_cover_every_type_and_order() -> None:
    assert {g[0] for g in GOLDEN} == {"bool", "int16", "uint16", "int32", "uint32", "float32"}
    assert {g[0] for g in ORDER_GOLDEN} == {
        "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"
    }  # fmt: skip
    assert all(set(g[2]) == set(BYTE_ORDERS) for g in ORDER_GOLDEN)


def test_64_bit_order_names_are_aliases() -> None:
    for long, short in BYTE_ORDER_64.items():
        assert encode_value(0x0102030405060708, "int64", long) == encode_value(
            0x0102030405060708, "int64", short
        )


def test_bit_in_register() -> None:
    assert decode_registers([0x8001, 0x0000, 0x8000], "bit", bit=15).tolist() == [1.0, 0.0, 1.0]
    assert decode_registers([0x8001], "bit", bit=0).tolist() == [1.0]
    assert encode_value(True, "bit") == [1]
    with pytest.raises(ValueError, match="not a bool"):
        encode_value(2, "bit")


@pytest.mark.parametrize(
    ("text", "length", "order", "regs"),
    [
        ("AB", 1, "big", [0x4142]),
        ("AB", 1, "little", [0x4241]),
        ("ABC", 3, "big", [0x4142, 0x4300, 0x0000]),
        ("ABC", 2, "little", [0x4241, 0x0043]),
        ("", 2, "big", [0, 0]),
        ("é", 1, "big", [0xE900]),
    ],
)
def test_string_golden(text: str, length: int, order: StringByteOrder, regs: list[int]) -> None:
    assert encode_string(text, length, order) == regs
    assert decode_string(regs, order) == text


def test_string_stops_at_the_first_nul_and_refuses_what_does_not_fit() -> None:
    assert decode_string([0x4100, 0x4242]) == "A"
    with pytest.raises(ValueError, match="does not fit 1 registers"):
        encode_string("ABC", 1)
    with pytest.raises(ValueError, match="outside latin-1"):
        encode_string("€", 2)
    with pytest.raises(ValueError, match="is not a string"):
        encode_value(5, "string", length=2)
    with pytest.raises(ValueError, match="is not a number"):
        encode_value("5", "int16")


def test_decode_several_values_at_once() -> None:
    regs = [0x3FC0, 0, 0xC000, 0]
    assert decode_registers(regs, "float32").tolist() == [1.5, -2.0]
    with pytest.raises(ValueError, match="takes 2 registers per value, got 3"):
        decode_registers(regs[:3], "float32")


def test_float32_nan_round_trips() -> None:
    regs = encode_value(math.nan, "float32", "little")
    assert math.isnan(decode_registers(regs, "float32", "little")[0])


@pytest.mark.parametrize(
    ("value", "data_type", "message"),
    [
        (70000, "uint16", "value 70000 is out of range for uint16 (0..65535)"),
        (-1, "uint16", "value -1 is out of range for uint16 (0..65535)"),
        (32768, "int16", "value 32768 is out of range for int16 (-32768..32767)"),
        (2**32, "uint32", "out of range for uint32 (0..4294967295)"),
        (1.5, "int32", "value 1.5 is not an integer, as int32 requires"),
        (math.nan, "uint16", "is not an integer, as uint16 requires"),
        (1e39, "float32", "value 1e+39 is out of range for float32"),
        (2, "bool", "value 2 is not a bool"),
    ],
)
def test_encode_range_errors_name_type_and_value(value: float, data_type: DataType, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        encode_value(value, data_type)


def test_unknown_type_and_order() -> None:
    with pytest.raises(ValueError, match="unknown register data_type 'int128'"):
        encode_value(1, "int128")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown byte_order 'middle'"):
        encode_value(1, "int32", "middle")


def test_64_bit_range_is_exact() -> None:
    assert encode_value(2**63 - 1, "int64") == [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF]
    with pytest.raises(ValueError, match="out of range for int64"):
        encode_value(2**63, "int64")
    with pytest.raises(ValueError, match="out of range for uint64"):
        encode_value(-1, "uint64")


ORDERS = st.sampled_from(["big", "little"])
ALL_ORDERS = st.sampled_from(BYTE_ORDERS)


def _ints(data_type: DataType) -> st.SearchStrategy[int]:
    low, high = value_range(data_type)
    return st.integers(int(low), int(high))


@pytest.mark.parametrize("data_type", ["int16", "uint16", "int32", "uint32"])
@given(data=st.data())
def test_integer_round_trip(data_type: DataType, data: st.DataObject) -> None:
    value = data.draw(_ints(data_type))
    order = data.draw(ORDERS)
    regs = encode_value(value, data_type, order)
    assert len(regs) == (1 if data_type.endswith("16") else 2)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode_registers(regs, data_type, order).tolist() == [float(value)]


@pytest.mark.parametrize("data_type", ["int16", "uint16", "int32", "uint32", "int64", "uint64"])
@given(data=st.data())
def test_integer_round_trip_every_byte_order(data_type: DataType, data: st.DataObject) -> None:
    low, high = int_range(data_type)
    value = data.draw(st.integers(low, high))
    order = data.draw(ALL_ORDERS)
    regs = encode_value(value, data_type, order)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode_registers(regs, data_type, order).tolist() == [float(value)]  # float64: exact to 2**53
    # the raw words say exactly which integer it was, whatever the order
    words = regs[::-1] if order in ("CDAB", "DCBA") else regs
    if order in ("BADC", "DCBA"):
        words = [((w >> 8) | (w << 8)) & 0xFFFF for w in words]
    raw = int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big", signed=low < 0)
    assert raw == value


@given(value=st.floats(width=32, allow_nan=False), order=ALL_ORDERS)
def test_float32_round_trip(value: float, order: ByteOrder) -> None:
    regs = encode_value(value, "float32", order)
    assert decode_registers(regs, "float32", order)[0] == np.float32(value)


@given(value=st.floats(allow_nan=False), order=ALL_ORDERS)
def test_float64_round_trip(value: float, order: ByteOrder) -> None:
    regs = encode_value(value, "float64", order)
    assert decode_registers(regs, "float64", order).tolist() == [value]


@given(
    text=st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=20),
    extra=st.integers(0, 3),
    order=st.sampled_from(["big", "little"]),
)
def test_string_round_trip(text: str, extra: int, order: StringByteOrder) -> None:
    length = (len(text) + 1) // 2 + extra or 1
    regs = encode_string(text, length, order)
    assert len(regs) == length
    assert decode_string(regs, order) == text


@given(value=st.booleans(), order=ORDERS)
def test_bool_round_trip(value: bool, order: WordOrder) -> None:
    assert decode_registers(encode_value(value, "bool", order), "bool", order).tolist() == [float(value)]


@given(value=st.integers(0, 2**32 - 1))
def test_word_orders_are_mirror_images(value: int) -> None:
    assert encode_value(value, "uint32", "little") == encode_value(value, "uint32", "big")[::-1]


# -- read plan --------------------------------------------------------------------------------


def _spans(plan: ReadPlan) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in plan.requests]


def _u16(*addresses: int, table: str = "holding") -> list[tuple[int, ModbusTagAddress]]:
    return [(i, A(table=table, address=a)) for i, a in enumerate(addresses)]  # type: ignore[arg-type]


def test_contiguous_tags_share_one_request() -> None:
    assert _spans(ReadPlan(_u16(0, 1, 2, 3))) == [("holding", 0, 4)]


def test_gap_up_to_max_gap_is_bridged() -> None:
    assert _spans(ReadPlan(_u16(0, 9), max_gap=8)) == [("holding", 0, 10)]  # 8 unused registers
    assert _spans(ReadPlan(_u16(0, 10), max_gap=8)) == [("holding", 0, 1), ("holding", 10, 1)]
    assert _spans(ReadPlan(_u16(0, 1), max_gap=0)) == [("holding", 0, 2)]
    assert _spans(ReadPlan(_u16(0, 2), max_gap=0)) == [("holding", 0, 1), ("holding", 2, 1)]


def test_request_size_limit_125() -> None:
    plan = ReadPlan(_u16(*range(200)))
    assert _spans(plan) == [("holding", 0, 125), ("holding", 125, 75)]
    assert plan.n_words == 200


def test_a_value_is_never_split_across_requests() -> None:
    tags = [*_u16(*range(124)), (999, A(table="holding", address=124, data_type="float32"))]
    assert _spans(ReadPlan(tags)) == [("holding", 0, 124), ("holding", 124, 2)]


def test_small_max_registers() -> None:
    assert _spans(ReadPlan(_u16(0, 1, 2, 3, 4), max_registers=2)) == [
        ("holding", 0, 2),
        ("holding", 2, 2),
        ("holding", 4, 1),
    ]
    with pytest.raises(ValueError, match="needs 2 registers, more than max_registers=1"):
        ReadPlan([(1, A(table="input", address=0, data_type="int32"))], max_registers=1)


def test_tables_get_separate_requests_in_a_fixed_order() -> None:
    tags = [
        (1, A(table="discrete", address=0, data_type="bool")),
        (2, A(table="input", address=0)),
        (3, A(table="coil", address=0, data_type="bool")),
        (4, A(table="holding", address=0)),
    ]
    plan = ReadPlan(tags)
    assert _spans(plan) == [("holding", 0, 1), ("input", 0, 1), ("coil", 0, 1), ("discrete", 0, 1)]
    assert [r.points.tolist() for r in plan.requests] == [[3], [1], [2], [0]]
    assert plan.tag_ids.tolist() == [1, 2, 3, 4]


def test_bit_tables_use_max_bits_and_a_gap_of_16_bits_per_register() -> None:
    coils = [(i, A(table="coil", address=a, data_type="bool")) for i, a in enumerate(range(0, 4000, 2))]
    assert _spans(ReadPlan(coils)) == [("coil", 0, 1999), ("coil", 2000, 1999)]
    far = [
        (0, A(table="coil", address=0, data_type="bool")),
        (1, A(table="coil", address=129, data_type="bool")),
    ]
    assert _spans(ReadPlan(far, max_gap=8)) == [("coil", 0, 130)]
    assert len(ReadPlan(far, max_gap=7).requests) == 2


def test_unsorted_and_overlapping_tags() -> None:
    tags = [
        (1, A(table="holding", address=9, data_type="uint32")),
        (2, A(table="holding", address=10, data_type="uint16")),  # the low word of tag 1
        (3, A(table="holding", address=0, data_type="int16")),
    ]
    plan = ReadPlan(tags)
    assert _spans(plan) == [("holding", 0, 11)]
    words, bits = plan.buffers()
    words[0], words[9], words[10] = 0xFFFF, 0x0001, 0x0002
    assert plan.decode(words, bits).tolist() == [65538.0, 2.0, -1.0]


def test_empty_plan() -> None:
    plan = ReadPlan([])
    assert plan.requests == () and len(plan) == 0
    assert plan.decode(*plan.buffers()).tolist() == []


TAGS = st.lists(
    st.one_of(
        st.builds(
            lambda t, a, d, o: A(table=t, address=a, data_type=d, byte_order=o),
            st.sampled_from(["holding", "input"]),
            st.integers(0, 600),
            st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"]),
            ALL_ORDERS,
        ),
        st.builds(
            lambda t, a, b: A(table=t, address=a, data_type="bit", bit=b),
            st.sampled_from(["holding", "input"]),
            st.integers(0, 600),
            st.integers(0, 15),
        ),
        st.builds(
            lambda t, a: A(table=t, address=a, data_type="bool"),
            st.sampled_from(["coil", "discrete"]),
            st.integers(0, 5000),
        ),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    tags=TAGS, seed=st.integers(0, 2**32 - 1), max_gap=st.integers(0, 20), max_registers=st.integers(4, 125)
)
def test_vectorized_decode_equals_per_tag_reference(
    tags: list[ModbusTagAddress], seed: int, max_gap: int, max_registers: int
) -> None:
    rng = np.random.default_rng(seed)
    memory = {t: rng.integers(0, 2**16, size=5002, dtype=np.uint16) for t in ("holding", "input")}
    memory |= {t: rng.integers(0, 2, size=5002).astype(bool) for t in ("coil", "discrete")}
    plan = ReadPlan(list(enumerate(tags)), max_gap=max_gap, max_registers=max_registers, max_bits=100)
    words, bits = plan.buffers()
    covered: set[int] = set()
    for r in plan.requests:
        assert r.count <= (100 if r.is_bits else max_registers)
        covered.update(r.points.tolist())
        target = bits if r.is_bits else words
        target[r.offset : r.offset + r.count] = memory[r.table][r.address : r.address + r.count]
    assert covered == set(range(len(tags)))  # every tag is served exactly by some request
    assert sum(len(r.points) for r in plan.requests) == len(tags)
    got = plan.decode(words, bits)
    for i, t in enumerate(tags):
        regs = memory[t.table][t.address : t.address + t.register_count]
        want = decode_registers(regs, t.data_type, t.byte_order, bit=t.bit or 0)[0]
        assert (got[i] == want) or (math.isnan(got[i]) and math.isnan(want)), (i, t)


def test_strings_decode_to_text_and_nan() -> None:
    tags = [
        (1, A(table="holding", address=0, data_type="string", length=2)),
        (2, A(table="holding", address=2, data_type="int16")),
        (3, A(table="holding", address=3, data_type="string", length=1, string_byte_order="little")),
    ]
    plan = ReadPlan(tags)
    words, bits = plan.buffers()
    words[:] = [0x4142, 0x4300, 7, 0x5958]
    values = plan.decode(words, bits)
    assert np.isnan(values[[0, 2]]).all() and values[1] == 7
    assert plan.decode_text(words) == {0: "ABC", 2: "XY"}
    assert plan.text_points.tolist() == [0, 2]


def test_split_request_halves_tags_until_one_is_left() -> None:
    plan = ReadPlan(_u16(0, 1, 2, 5, 6))
    (req,) = plan.requests
    first, second = split_request(req)  # type: ignore[misc]
    assert (first.address, first.count, first.offset, first.points.tolist()) == (0, 2, 0, [0, 1])
    assert (second.address, second.count, second.offset, second.points.tolist()) == (2, 5, 2, [2, 3, 4])
    leaves: list[ReadRequest] = []
    todo = [req]
    while todo:
        r = todo.pop()
        halves = split_request(r)
        if halves is None:
            leaves.append(r)
        else:
            todo.extend(halves)
    assert sorted((r.address, r.count, r.offset) for r in leaves) == [
        (0, 1, 0), (1, 1, 1), (2, 1, 2), (5, 1, 5), (6, 1, 6)
    ]  # fmt: skip
