"""Helpers of the Modbus connector tests (a module of its own: test files import it by name)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
from nexus.embedded import free_port  # noqa: F401 - re-exported for the tests

A = ModbusTagAddress

MIXED_TAGS: tuple[ModbusTagAddress, ...] = (
    A(table="holding", address=0, data_type="int16"),
    A(table="holding", address=1, data_type="uint16"),
    A(table="holding", address=2, data_type="int32", word_order="big"),
    A(table="holding", address=4, data_type="int32", word_order="little"),
    A(table="holding", address=6, data_type="uint32", word_order="big"),
    A(table="holding", address=8, data_type="uint32", word_order="little"),
    A(table="holding", address=10, data_type="float32", word_order="big"),
    A(table="holding", address=12, data_type="float32", word_order="little"),
    A(table="input", address=0, data_type="float32"),
    A(table="input", address=5, data_type="int16"),
    A(table="coil", address=3, data_type="bool"),
    A(table="coil", address=17, data_type="bool"),
    A(table="discrete", address=0, data_type="bool"),
)
MIXED_VALUES: tuple[float, ...] = (
    -123,
    65000,
    -2,
    0x12345678,
    4_000_000_000,
    7,
    1.5,
    -273.25,
    9.75,
    42,
    1,
    1,
    1,
)


def plan_for(
    device_id: str,
    port: int,
    tags: Sequence[ModbusTagAddress],
    *,
    unit_id: int = 1,
    poll_interval_s: float = 0.1,
    **conn: Any,
) -> ModbusDevicePlan:
    connection = ModbusConnection(
        host="127.0.0.1",
        port=port,
        unit_id=unit_id,
        **{"timeout_s": 0.3, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, **conn},  # type: ignore[arg-type]
    )
    return ModbusDevicePlan(
        device_id, connection, poll_interval_s, tuple((100 + i, t) for i, t in enumerate(tags))
    )


# Golden vectors: (data_type, value, registers on the device for each byte order), written out by hand.
# A..H are the value's bytes, most significant first; ABCD/CDAB/BADC/DCBA also name the 64-bit orders
# ABCDEFGH/GHEFCDAB/BADCFEHG/HGFEDCBA; 16-bit values only see the byte swap.
def _orders(abcd: list[int], cdab: list[int], badc: list[int], dcba: list[int]) -> dict[str, list[int]]:
    return {"ABCD": abcd, "CDAB": cdab, "BADC": badc, "DCBA": dcba}


GOLDEN: list[tuple[str, float, dict[str, list[int]]]] = [
    ("int16", -2, _orders([0xFFFE], [0xFFFE], [0xFEFF], [0xFEFF])),
    ("int16", 0x1234, _orders([0x1234], [0x1234], [0x3412], [0x3412])),
    ("uint16", 0xABCD, _orders([0xABCD], [0xABCD], [0xCDAB], [0xCDAB])),
    ("int32", 0x11223344, _orders([0x1122, 0x3344], [0x3344, 0x1122], [0x2211, 0x4433], [0x4433, 0x2211])),
    ("int32", -2, _orders([0xFFFF, 0xFFFE], [0xFFFE, 0xFFFF], [0xFFFF, 0xFEFF], [0xFEFF, 0xFFFF])),
    (
        "uint32",
        4_000_000_000,
        _orders([0xEE6B, 0x2800], [0x2800, 0xEE6B], [0x6BEE, 0x0028], [0x0028, 0x6BEE]),
    ),
    ("float32", 123.456, _orders([0x42F6, 0xE979], [0xE979, 0x42F6], [0xF642, 0x79E9], [0x79E9, 0xF642])),
    ("float32", -2.0, _orders([0xC000, 0x0000], [0x0000, 0xC000], [0x00C0, 0x0000], [0x0000, 0x00C0])),
    (
        "int64",
        0x0102030405060708,
        _orders(
            [0x0102, 0x0304, 0x0506, 0x0708],
            [0x0708, 0x0506, 0x0304, 0x0102],
            [0x0201, 0x0403, 0x0605, 0x0807],
            [0x0807, 0x0605, 0x0403, 0x0201],
        ),
    ),
    (
        "int64",
        -2,
        _orders(
            [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
            [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
            [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF],
            [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        ),
    ),
    (
        "uint64",
        0x8000000000000001,
        _orders(
            [0x8000, 0x0000, 0x0000, 0x0001],
            [0x0001, 0x0000, 0x0000, 0x8000],
            [0x0080, 0x0000, 0x0000, 0x0100],
            [0x0100, 0x0000, 0x0000, 0x0080],
        ),
    ),
    (
        "float64",
        -2.5,  # 0xC004000000000000
        _orders(
            [0xC004, 0x0000, 0x0000, 0x0000],
            [0x0000, 0x0000, 0x0000, 0xC004],
            [0x04C0, 0x0000, 0x0000, 0x0000],
            [0x0000, 0x0000, 0x0000, 0x04C0],
        ),
    ),
    (
        "float64",
        1.0000000000000002,  # 0x3FF0000000000001
        _orders(
            [0x3FF0, 0x0000, 0x0000, 0x0001],
            [0x0001, 0x0000, 0x0000, 0x3FF0],
            [0xF03F, 0x0000, 0x0000, 0x0100],
            [0x0100, 0x0000, 0x0000, 0xF03F],
        ),
    ),
]
