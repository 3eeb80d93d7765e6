"""Helpers of the Modbus connector tests (a module of its own: test files import it by name)."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan_for(
    device_id: str,
    port: int,
    tags: Sequence[ModbusTagAddress],
    *,
    unit_id: int = 1,
    poll_interval_s: float = 0.1,
    **conn: float,
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
