"""Configuration of Modbus devices: connection settings, tag addresses and the device plan.

Models are frozen pydantic models that refuse unknown fields; a bad value fails at construction
with the field's name:

>>> ModbusTagAddress(table="holding", address=10, data_type="float32").register_count
2
>>> ModbusTagAddress(table="holding", address=0, data_type="string", length=4).register_count
4
>>> try:
...     ModbusTagAddress(table="coil", address=3, data_type="float32")
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, data_type 'float32' is not allowed on table 'coil': coils and discrete inputs hold only 'bool'

Byte order
----------
``byte_order`` names where the value's bytes sit in the device's registers, ``A`` being the most
significant byte: ``ABCD`` (big-endian, the Modbus default), ``CDAB`` (word swap), ``BADC`` (byte
swap inside each register) and ``DCBA`` (both). The same name covers 64-bit values (``ABCD`` =
``ABCDEFGH``, ``CDAB`` = ``GHEFCDAB``, ``BADC`` = ``BADCFEHG``, ``DCBA`` = ``HGFEDCBA``; the 8-letter
names are accepted too) and 16-bit values (``BADC``/``DCBA`` swap the two bytes). The older
``word_order: big | little`` is accepted as an alias of ``ABCD`` / ``CDAB``:

>>> ModbusTagAddress(table="holding", address=0, data_type="int32", word_order="little").byte_order
'CDAB'
>>> ModbusTagAddress(table="input", address=0, data_type="uint64", byte_order="GHEFCDAB").byte_order
'CDAB'

Strings take ``length`` registers (two characters each, latin-1, padded with NULs);
``string_byte_order: big`` puts the first character in the high byte of each register.
``bit`` tags read one bit (0 = least significant) of a holding or input register.

Connections
-----------
``transport`` picks the model: ``tcp`` (Modbus TCP) and ``rtu_over_tcp`` (RTU frames through a
serial-to-Ethernet gateway) take ``host``/``port``; ``rtu`` takes a serial ``port`` (device path)
with baud rate, parity, stop bits and byte size. Without ``transport`` a connection is ``tcp``:

>>> from pydantic import TypeAdapter
>>> ta = TypeAdapter(ModbusConnectionConfig)
>>> type(ta.validate_python({"host": "10.0.0.5"})).__name__
'ModbusConnection'
>>> ta.validate_python({"transport": "rtu", "port": "/dev/ttyUSB0", "parity": "E"}).baudrate
19200
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from connectors.client_base import check_plan

RegisterTable = Literal["holding", "input", "coil", "discrete"]
"""Modbus table: holding registers (fc 3), input registers (fc 4), coils (fc 1), discrete inputs (fc 2)."""

DataType = Literal[
    "bool",
    "bit",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]

ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
"""Byte layout of multi-byte values in the registers (see the module documentation)."""

WordOrder = Literal["big", "little"]
"""Legacy alias: ``big`` is ``ABCD`` (high word first), ``little`` is ``CDAB`` (low word first)."""

StringByteOrder = Literal["big", "little"]

WORD_ORDER_ALIASES: dict[str, ByteOrder] = {"big": "ABCD", "little": "CDAB"}
BYTE_ORDER_64: dict[str, ByteOrder] = {
    "ABCDEFGH": "ABCD",
    "GHEFCDAB": "CDAB",
    "BADCFEHG": "BADC",
    "HGFEDCBA": "DCBA",
}

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
WRITABLE_TABLES: frozenset[str] = frozenset({"holding", "coil"})
MAX_ADDRESS = 65535
MAX_STRING_REGISTERS = 123
"""The longest string that fits one write request (fc 16 carries at most 123 registers)."""

_REGISTER_COUNT: dict[str, int] = {
    "bool": 1,  # one bit (coil / discrete input)
    "bit": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}


def register_count(data_type: DataType, length: int | None = None) -> int:
    """Number of 16-bit registers (or bits, for ``bool``) one value of ``data_type`` occupies.

    >>> register_count("uint16"), register_count("float32"), register_count("float64"), register_count("bool")
    (1, 2, 4, 1)
    >>> register_count("string", 10)
    10
    """
    if data_type == "string":
        if length is None:
            raise ValueError("data_type 'string' needs `length` (registers)")
        return length
    try:
        return _REGISTER_COUNT[data_type]
    except KeyError:
        raise ValueError(f"unknown Modbus data_type {data_type!r}") from None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModbusTagAddress(_Frozen):
    """Where one tag lives on the device and how its registers decode.

    ``address`` is the protocol address relative to the device's ``address_base``: with the default
    base 0, register 40001 of a manual is ``holding`` 0; with ``address_base: 1`` it is ``holding`` 1.
    """

    table: RegisterTable
    address: int = Field(ge=0, le=MAX_ADDRESS)
    data_type: DataType = "uint16"
    byte_order: ByteOrder = "ABCD"
    word_order: WordOrder | None = None
    """Legacy alias of ``byte_order`` (``big`` = ABCD, ``little`` = CDAB); kept as given."""
    bit: int | None = Field(default=None, ge=0, le=15)
    """For ``data_type: bit``: the bit of the register, 0 = least significant."""
    length: int | None = Field(default=None, ge=1, le=MAX_STRING_REGISTERS)
    """For ``data_type: string``: registers (two characters each)."""
    string_byte_order: StringByteOrder = "big"
    """For strings: ``big`` = first character in the high byte of each register."""

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        order = data.get("byte_order")
        if isinstance(order, str) and order in BYTE_ORDER_64:
            data = {**data, "byte_order": BYTE_ORDER_64[order]}
        word = data.get("word_order")
        if isinstance(word, str) and word in WORD_ORDER_ALIASES:
            mapped = WORD_ORDER_ALIASES[word]
            given = data.get("byte_order")
            if given is not None and given != mapped:
                raise ValueError(
                    f"word_order {word!r} means byte_order {mapped!r} but byte_order is {given!r}; "
                    "give only byte_order"
                )
            data = {**data, "byte_order": mapped}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModbusTagAddress:
        is_bit_table = self.table in BIT_TABLES
        if is_bit_table and self.data_type != "bool":
            raise ValueError(
                f"data_type {self.data_type!r} is not allowed on table {self.table!r}: "
                "coils and discrete inputs hold only 'bool'"
            )
        if not is_bit_table and self.data_type == "bool":
            raise ValueError(
                f"data_type 'bool' needs table 'coil' or 'discrete', got table {self.table!r} "
                "(use data_type 'bit' with `bit` for a bit of a register)"
            )
        if (self.data_type == "bit") != (self.bit is not None):
            raise ValueError(
                "data_type 'bit' needs `bit` (0..15)"
                if self.bit is None
                else f"`bit` is only for data_type 'bit', got data_type {self.data_type!r}"
            )
        if (self.data_type == "string") != (self.length is not None):
            raise ValueError(
                "data_type 'string' needs `length` (registers, two characters each)"
                if self.length is None
                else f"`length` is only for data_type 'string', got data_type {self.data_type!r}"
            )
        last = self.address + self.register_count - 1
        if last > MAX_ADDRESS:
            raise ValueError(
                f"address {self.address} with data_type {self.data_type!r} ends at register {last}, "
                f"beyond the last address {MAX_ADDRESS}"
            )
        return self

    @property
    def register_count(self) -> int:
        return register_count(self.data_type, self.length)

    @property
    def writable(self) -> bool:
        return self.table in WRITABLE_TABLES

    def at(self, address: int) -> ModbusTagAddress:
        """The same tag at another address (e.g. the wire address of a 1-based spec address)."""
        return self.model_copy(update={"address": address})


class _ConnectionBase(_Frozen):
    """Settings every Modbus transport shares: unit id, timeouts, batching, resilience."""

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
    address_base: Literal[0, 1] = 0
    """1: tag addresses are 1-based (the address minus 1 goes on the wire)."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failed polls (transport errors) that open the circuit breaker."""
    breaker_reset_s: float = Field(default=10.0, gt=0)
    """How long the breaker stays open before one probe poll is let through."""
    split_reprobe_s: float = Field(default=300.0, gt=0)
    """After a read was split (illegal address), how long before the whole read is tried again."""

    @model_validator(mode="after")
    def _backoff_ordered(self) -> _ConnectionBase:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= "
                f"reconnect_min_s ({self.reconnect_min_s})"
            )
        return self


class ModbusConnection(_ConnectionBase):
    """A device on the network: Modbus TCP, or RTU frames over TCP (a serial gateway)."""

    transport: Literal["tcp", "rtu_over_tcp"] = "tcp"
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class ModbusSerialConnection(_ConnectionBase):
    """A device on a serial line (RS-485/RS-232), Modbus RTU."""

    transport: Literal["rtu"] = "rtu"
    port: str = Field(min_length=1)
    """Serial device, e.g. ``/dev/ttyUSB0`` or ``COM3``."""
    baudrate: int = Field(default=19200, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def endpoint(self) -> str:
        return self.port


def _transport_of(value: Any) -> str:
    transport = (
        value.get("transport", "tcp") if isinstance(value, dict) else getattr(value, "transport", "tcp")
    )
    return "rtu" if transport == "rtu" else "tcp"


ModbusConnectionConfig = Annotated[
    Annotated[ModbusConnection, Tag("tcp")] | Annotated[ModbusSerialConnection, Tag("rtu")],
    Discriminator(_transport_of),
]
"""Any Modbus connection, told apart by ``transport`` (``tcp`` when absent)."""

AnyModbusConnection = ModbusConnection | ModbusSerialConnection


@dataclass(frozen=True, slots=True)
class ModbusDevicePlan:
    """Everything a source partition needs to poll one device.

    ``tags`` pairs each tag id (see :func:`core.batch.tag_id_for`) with its address as configured
    (relative to ``connection.address_base``); ``wire_tags`` holds the same tags with the addresses
    that go on the wire. The points of every poll come out in this order.
    """

    device_id: str
    connection: AnyModbusConnection
    poll_interval_s: float
    tags: tuple[tuple[int, ModbusTagAddress], ...]
    wire_tags: tuple[tuple[int, ModbusTagAddress], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_plan(self.device_id, self.poll_interval_s, (tag_id for tag_id, _ in self.tags))
        base = self.connection.address_base
        wire: list[tuple[int, ModbusTagAddress]] = []
        for tag_id, address in self.tags:
            if address.data_type != "bool" and address.register_count > self.connection.max_registers:
                raise ValueError(
                    f"device {self.device_id!r}: tag {tag_id} ({address.data_type}) needs "
                    f"{address.register_count} registers but `max_registers` is "
                    f"{self.connection.max_registers}"
                )
            if address.address < base:
                raise ValueError(
                    f"device {self.device_id!r}: tag {tag_id} has address {address.address} but the "
                    f"device's address_base is {base} (1-based addresses start at 1)"
                )
            wire.append((tag_id, address if base == 0 else address.at(address.address - base)))
        object.__setattr__(self, "wire_tags", tuple(wire))
