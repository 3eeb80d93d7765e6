"""S7 addresses: notation, width/type checks, golden encodings and codec round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.s7.address import S7Address, parse_address
from connectors.s7.codec import ReadPlan, decode_value, encode_value, value_range
from core.quality import Quality


@pytest.mark.parametrize(
    ("text", "data_type", "length", "expected"),
    [
        ("DB1.DBX0.3", "BOOL", None, S7Address("DB", 1, 0, 3, "BOOL")),
        ("DB1.DBB4", "BYTE", None, S7Address("DB", 1, 4, None, "BYTE")),
        ("DB1.DBW6", "WORD", None, S7Address("DB", 1, 6, None, "WORD")),
        ("db1.dbw6", "INT", None, S7Address("DB", 1, 6, None, "INT")),
        ("DB1.DBD20", "DWORD", None, S7Address("DB", 1, 20, None, "DWORD")),
        ("DB1.DBD20", "DINT", None, S7Address("DB", 1, 20, None, "DINT")),
        ("DB1.DBD20", "REAL", None, S7Address("DB", 1, 20, None, "REAL")),
        ("DB7.DBB20", "REAL", None, S7Address("DB", 7, 20, None, "REAL")),  # DB byte offset
        ("DB1.DBB24", "LREAL", None, S7Address("DB", 1, 24, None, "LREAL")),
        ("DB1.DBD24", "LREAL", None, S7Address("DB", 1, 24, None, "LREAL")),
        ("DB3.DBB10", "STRING", 20, S7Address("DB", 3, 10, None, "STRING", 20)),
        ("M10.3", "BOOL", None, S7Address("M", None, 10, 3, "BOOL")),
        ("MX10.3", "BOOL", None, S7Address("M", None, 10, 3, "BOOL")),
        ("MB10", "BYTE", None, S7Address("M", None, 10, None, "BYTE")),
        ("MW10", "INT", None, S7Address("M", None, 10, None, "INT")),
        ("MD10", "REAL", None, S7Address("M", None, 10, None, "REAL")),
        ("I0.1", "BOOL", None, S7Address("I", None, 0, 1, "BOOL")),
        ("E0.1", "BOOL", None, S7Address("I", None, 0, 1, "BOOL")),
        ("IB2", "BYTE", None, S7Address("I", None, 2, None, "BYTE")),
        ("EW4", "WORD", None, S7Address("I", None, 4, None, "WORD")),
        ("IW4", "INT", None, S7Address("I", None, 4, None, "INT")),
        ("Q0.0", "BOOL", None, S7Address("Q", None, 0, 0, "BOOL")),
        ("A0.0", "BOOL", None, S7Address("Q", None, 0, 0, "BOOL")),
        ("QB1", "BYTE", None, S7Address("Q", None, 1, None, "BYTE")),
        ("QW2", "WORD", None, S7Address("Q", None, 2, None, "WORD")),
        ("QD4", "DINT", None, S7Address("Q", None, 4, None, "DINT")),
        ("AD4", "DWORD", None, S7Address("Q", None, 4, None, "DWORD")),
        ("MB0", "STRING", 8, S7Address("M", None, 0, None, "STRING", 8)),
    ],
)
def test_valid_notations(text: str, data_type: str, length: int | None, expected: S7Address) -> None:
    assert parse_address(text, data_type, length) == expected


@pytest.mark.parametrize(
    ("text", "data_type", "length", "message"),
    [
        ("DB1.DBX0.9", "BOOL", None, "DB1.DBX0.9: bit must be 0..7, got 9"),
        ("DB1.DBX0", "BOOL", None, "DB1.DBX0: a bit address needs a bit number"),
        ("DB1.DBW0.1", "INT", None, "only X (bit) addresses take a bit number"),
        ("DB0.DBW0", "INT", None, "DB0.DBW0: DB number must be 1..65535, got 0"),
        ("DB1.DBW70000", "INT", None, "byte offset must be 0..65535, got 70000"),
        ("MW10", "REAL", None, "MW10: data_type 'REAL' needs a 4-byte address (D, e.g. MD10)"),
        ("MB10", "INT", None, "MB10: data_type 'INT' needs a 2-byte address (W, e.g. MW10)"),
        ("DB1.DBW2", "DINT", None, "DB1.DBW2: data_type 'DINT' needs a 4-byte address (D, e.g. DB1.DBD2)"),
        ("DB1.DBD0", "BOOL", None, "data_type 'BOOL' needs a bit address, e.g. DB1.DBX0.0"),
        ("M0.1", "INT", None, "M0.1: a bit address holds only 'BOOL', not 'INT'"),
        ("MW0", "LREAL", None, "data_type 'LREAL' needs a byte address for its start"),
        ("DB1.DBB0", "STRING", None, "DB1.DBB0: data_type 'STRING' needs `length`"),
        ("DB1.DBB0", "STRING", 300, "STRING length must be 1..254, got 300"),
        ("DB1.DBB0", "BYTE", 4, "`length` applies to STRING only"),
        ("DB1.DBD0", "FLOAT", None, "unknown data_type 'FLOAT'"),
        ("X1.0", "BOOL", None, "X1.0: not an S7 address"),
        ("M10", "BYTE", None, "M10: missing width letter"),
        ("DB1.DBD65534", "REAL", None, "REAL of 4 bytes ends beyond byte 65535"),
        ("", "BYTE", None, "not an S7 address"),
    ],
)
def test_invalid_notations_name_the_address_and_the_problem(
    text: str, data_type: str, length: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_address(text, data_type, length)


@pytest.mark.parametrize(
    ("address", "data_type", "length", "value", "hex_bytes"),
    [
        ("DB1.DBD0", "REAL", None, 1.5, "3f c0 00 00"),
        ("DB1.DBD0", "REAL", None, -273.125, "c3 88 90 00"),
        ("DB1.DBW0", "INT", None, -2, "ff fe"),
        ("DB1.DBW0", "WORD", None, 0xBEEF, "be ef"),
        ("DB1.DBD0", "DINT", None, -100000, "ff fe 79 60"),
        ("DB1.DBD0", "DWORD", None, 0x12345678, "12 34 56 78"),
        ("DB1.DBB0", "LREAL", None, 1.5, "3f f8 00 00 00 00 00 00"),
        ("DB1.DBB0", "BYTE", None, 200, "c8"),
        ("DB1.DBX0.3", "BOOL", None, True, "08"),
        ("DB1.DBX0.3", "BOOL", None, False, "00"),
        ("DB1.DBB0", "STRING", 6, "abc", "06 03 61 62 63 00 00 00"),
    ],
)
def test_golden_encodings(
    address: str, data_type: str, length: int | None, value: object, hex_bytes: str
) -> None:
    addr = parse_address(address, data_type, length)
    raw = encode_value(value, addr)
    assert raw.hex(" ") == hex_bytes
    decoded = decode_value(raw, addr)
    assert decoded == (value if isinstance(value, str) else float(value))  # type: ignore[arg-type]
    # the vectorized plan decodes the same bytes the same way
    plan = ReadPlan([(1, addr)])
    buf = plan.buffer()
    buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    values, quality, text = plan.decode(buf, np.zeros(len(plan.items), np.uint8))
    assert quality.tolist() == [Quality.GOOD]
    assert (text[0] if isinstance(value, str) else values[0]) == decoded


@pytest.mark.parametrize(
    ("address", "data_type", "length", "value", "reason"),
    [
        ("DB1.DBW0", "INT", None, 32768, "outside -32768..32767"),
        ("DB1.DBW0", "WORD", None, -1, "outside 0..65535"),
        ("DB1.DBB0", "BYTE", None, 256, "outside 0..255"),
        ("DB1.DBD0", "DINT", None, 1.5, "needs an integer"),
        ("DB1.DBD0", "REAL", None, 1e39, "outside"),
        ("DB1.DBD0", "REAL", None, math.nan, "must be finite"),
        ("DB1.DBX0.0", "BOOL", None, 2, "true/false or 0/1"),
        ("DB1.DBW0", "INT", None, "7", "needs a number"),
        ("DB1.DBW0", "INT", None, True, "got a boolean"),
        ("DB1.DBB0", "STRING", 3, "toolong", "max is 3"),
        ("DB1.DBB0", "STRING", 3, 5, "needs a text value"),
        ("DB1.DBB0", "STRING", 9, "日本", "Latin-1"),
    ],
)
def test_encode_rejects_values_that_do_not_fit(
    address: str, data_type: str, length: int | None, value: object, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        encode_value(value, parse_address(address, data_type, length))


def _int_strategy(data_type: str) -> st.SearchStrategy[int]:
    low, high = value_range(data_type)
    return st.integers(int(low), int(high))


_VALUES: dict[str, st.SearchStrategy[object]] = {
    "BOOL": st.booleans(),
    "BYTE": _int_strategy("BYTE"),
    "WORD": _int_strategy("WORD"),
    "INT": _int_strategy("INT"),
    "DWORD": _int_strategy("DWORD"),
    "DINT": _int_strategy("DINT"),
    "REAL": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "LREAL": st.floats(allow_nan=False, allow_infinity=False),
    "STRING": st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=30),
}
_ADDRESS = {
    "BOOL": "DB1.DBX3.{bit}",
    "BYTE": "DB1.DBB3",
    "WORD": "MW4",
    "INT": "DB1.DBW4",
    "DWORD": "QD4",
    "DINT": "DB1.DBD4",
    "REAL": "MD8",
    "LREAL": "DB1.DBB8",
    "STRING": "DB1.DBB8",
}


@pytest.mark.parametrize("data_type", list(_VALUES))
@given(data=st.data())
def test_round_trip_every_type(data_type: str, data: st.DataObject) -> None:
    value = data.draw(_VALUES[data_type])
    bit = data.draw(st.integers(0, 7))
    addr = parse_address(
        _ADDRESS[data_type].format(bit=bit), data_type, 30 if data_type == "STRING" else None
    )
    raw = encode_value(value, addr)
    assert len(raw) == addr.size
    back = decode_value(raw, addr)
    assert back == (value if isinstance(value, str) else float(value))  # type: ignore[arg-type]
    plan = ReadPlan([(1, addr)])
    buf = plan.buffer()
    buf[:] = np.frombuffer(raw, np.uint8)
    values, quality, text = plan.decode(buf, np.zeros(len(plan.items), np.uint8))
    assert quality[0] == Quality.GOOD
    assert (text[0] if data_type == "STRING" else values[0]) == back
