"""Golden vectors and round-trip properties of the register codec; coalescing of the read plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.modbus.codec import ReadPlan, decode_registers, encode_value, value_range
from connectors.modbus.config import DataType, ModbusTagAddress, WordOrder

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
def test_golden_vectors(
    data_type: DataType, value: float, big: list[int], little: list[int], order: WordOrder
) -> None:
    regs = big if order == "big" else little
    assert encode_value(value, data_type, order) == regs
    decoded = decode_registers(np.array(regs, dtype=np.uint16), data_type, order)
    expected = float(np.float32(value)) if data_type == "float32" else float(value)
    assert decoded.tolist() == [expected]


def test_golden_vectors_cover_every_type() -> None:
    assert {g[0] for g in GOLDEN} == {"bool", "int16", "uint16", "int32", "uint32", "float32"}


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
    with pytest.raises(ValueError, match="unknown register data_type 'int64'"):
        encode_value(1, "int64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown word_order 'middle'"):
        encode_value(1, "int32", "middle")  # type: ignore[arg-type]


ORDERS = st.sampled_from(["big", "little"])


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


@given(value=st.floats(width=32, allow_nan=False), order=ORDERS)
def test_float32_round_trip(value: float, order: WordOrder) -> None:
    regs = encode_value(value, "float32", order)
    assert decode_registers(regs, "float32", order)[0] == np.float32(value)


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
            lambda t, a, d, o: A(table=t, address=a, data_type=d, word_order=o),
            st.sampled_from(["holding", "input"]),
            st.integers(0, 600),
            st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
            ORDERS,
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
    tags=TAGS, seed=st.integers(0, 2**32 - 1), max_gap=st.integers(0, 20), max_registers=st.integers(2, 125)
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
        want = decode_registers(regs, t.data_type, t.word_order)[0]
        assert (got[i] == want) or (math.isnan(got[i]) and math.isnan(want)), (i, t)
