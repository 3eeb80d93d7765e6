"""Configuration of Modbus TCP devices: connection settings, tag addresses and the device plan.

Models are frozen pydantic models that refuse unknown fields; a bad value fails at construction
with the field's name:

>>> ModbusTagAddress(table="holding", address=10, data_type="float32").register_count
2
>>> try:
...     ModbusTagAddress(table="coil", address=3, data_type="float32")
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, data_type 'float32' is not allowed on table 'coil': coils and discrete inputs hold only 'bool'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RegisterTable = Literal["holding", "input", "coil", "discrete"]
"""Modbus table: holding registers (fc 3), input registers (fc 4), coils (fc 1), discrete inputs (fc 2)."""

DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32"]

WordOrder = Literal["big", "little"]
"""``big``: high word first (ABCD); ``little``: low word first (CDAB). Bytes within a word are big-endian."""

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
MAX_ADDRESS = 65535

_REGISTER_COUNT: dict[str, int] = {
    "bool": 1,  # one bit (coil / discrete input)
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
}


def register_count(data_type: DataType) -> int:
    """Number of 16-bit registers (or bits, for ``bool``) one value of ``data_type`` occupies.

    >>> register_count("uint16"), register_count("float32"), register_count("bool")
    (1, 2, 1)
    """
    try:
        return _REGISTER_COUNT[data_type]
    except KeyError:
        raise ValueError(f"unknown Modbus data_type {data_type!r}") from None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModbusTagAddress(_Frozen):
    """Where one tag lives on the device and how its registers decode.

    ``address`` is the 0-based protocol address (register 40001 in a manual is ``holding`` 0).
    """

    table: RegisterTable
    address: int = Field(ge=0, le=MAX_ADDRESS)
    data_type: DataType = "uint16"
    word_order: WordOrder = "big"

    @model_validator(mode="after")
    def _consistent(self) -> ModbusTagAddress:
        is_bit_table = self.table in BIT_TABLES
        if is_bit_table and self.data_type != "bool":
            raise ValueError(
                f"data_type {self.data_type!r} is not allowed on table {self.table!r}: "
                "coils and discrete inputs hold only 'bool'"
            )
        if not is_bit_table and self.data_type == "bool":
            raise ValueError(f"data_type 'bool' needs table 'coil' or 'discrete', got table {self.table!r}")
        last = self.address + register_count(self.data_type) - 1
        if last > MAX_ADDRESS:
            raise ValueError(
                f"address {self.address} with data_type {self.data_type!r} ends at register {last}, "
                f"beyond the last address {MAX_ADDRESS}"
            )
        return self

    @property
    def register_count(self) -> int:
        return register_count(self.data_type)


class ModbusConnection(_Frozen):
    """How to reach one Modbus TCP device and how to batch its reads."""

    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=247)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    """Timeout of one connect attempt and of one request."""
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    max_gap: int = Field(default=8, ge=0, le=125)
    """Unused registers allowed between two tags read in one request (bit tables: 16 bits per register)."""
    max_registers: int = Field(default=125, ge=1, le=125)
    """Registers per read request (the protocol's limit is 125)."""
    max_bits: int = Field(default=2000, ge=1, le=2000)
    """Coils / discrete inputs per read request (the protocol's limit is 2000)."""

    @model_validator(mode="after")
    def _backoff_ordered(self) -> ModbusConnection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= "
                f"reconnect_min_s ({self.reconnect_min_s})"
            )
        return self


@dataclass(frozen=True, slots=True)
class ModbusDevicePlan:
    """Everything a source partition needs to poll one device.

    ``tags`` pairs each tag id (see :func:`core.batch.tag_id_for`) with its address; the points of
    every poll come out in this order.
    """

    device_id: str
    connection: ModbusConnection
    poll_interval_s: float
    tags: tuple[tuple[int, ModbusTagAddress], ...]

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        if not self.poll_interval_s > 0:
            raise ValueError(f"`poll_interval_s` must be > 0, got {self.poll_interval_s!r}")
        seen: set[int] = set()
        for tag_id, address in self.tags:
            if tag_id in seen:
                raise ValueError(f"device {self.device_id!r}: tag id {tag_id} appears twice in `tags`")
            seen.add(tag_id)
            if address.data_type != "bool" and address.register_count > self.connection.max_registers:
                raise ValueError(
                    f"device {self.device_id!r}: tag {tag_id} ({address.data_type}) needs "
                    f"{address.register_count} registers but `max_registers` is "
                    f"{self.connection.max_registers}"
                )
