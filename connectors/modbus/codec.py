"""Register codec and read planning for Modbus devices, vectorized with numpy.

A value of a multi-register type is stored as 16-bit words; ``byte_order`` says where its bytes
sit (``A`` = most significant byte, see :mod:`connectors.modbus.config`). ``big`` / ``little`` are
accepted as the legacy names of ``ABCD`` / ``CDAB``:

>>> encode_value(1.5, "float32", "ABCD"), encode_value(1.5, "float32", "CDAB")
([16320, 0], [0, 16320])
>>> [hex(r) for r in encode_value(0x11223344, "uint32", "BADC")]
['0x2211', '0x4433']
>>> decode_registers(np.array([0xFFFF, 0xFFFE], dtype=np.uint16), "int32", "big").tolist()
[-2.0]
>>> encode_string("AB1", 2), decode_string([0x4241, 0x0031], "little")
([16706, 12544], 'AB1')

A :class:`ReadPlan` turns a device's tags into as few read requests as the limits allow and
precomputes gather indices, so decoding a whole poll is a few numpy operations per data type and
byte order:

>>> from connectors.modbus.config import ModbusTagAddress as A
>>> plan = ReadPlan([(1, A(table="holding", address=0, data_type="int16")),
...                  (2, A(table="holding", address=2, data_type="float32", byte_order="CDAB")),
...                  (3, A(table="holding", address=1, data_type="bit", bit=3))])
>>> [(r.table, r.address, r.count) for r in plan.requests]
[('holding', 0, 4)]
>>> words, bits = plan.buffers()
>>> words[:] = [0xFFFF, 0b1000, 0x0000, 0x3FC0]
>>> plan.decode(words, bits).tolist()
[-1.0, 1.5, 1.0]

Strings decode to text (:meth:`ReadPlan.decode_text`); their ``values`` entry is NaN.
A request the device rejects can be split in two (:func:`split_request`), down to single tags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from connectors.modbus.config import (
    BIT_TABLES,
    BYTE_ORDER_64,
    WORD_ORDER_ALIASES,
    ByteOrder,
    DataType,
    ModbusTagAddress,
    RegisterTable,
    StringByteOrder,
    register_count,
)

if TYPE_CHECKING:
    from connectors.modbus.config import ModbusDevicePlan

__all__ = [
    "ReadPlan",
    "ReadRequest",
    "decode_registers",
    "decode_string",
    "encode_string",
    "encode_tag",
    "encode_value",
    "int_range",
    "register_count",
    "split_request",
    "value_range",
]

STRING_ENCODING = "latin-1"
"""Characters of string tags: one byte each, every byte value decodes."""


@dataclass(frozen=True, slots=True)
class _Layout:
    words: int
    dtype: np.dtype  # big-endian dtype of the value once its words are in ABCD order
    integer: bool
    low: int | float
    high: int | float


def _int_layout(code: str) -> _Layout:
    info = np.iinfo(np.dtype(code))
    return _Layout(np.dtype(code).itemsize // 2, np.dtype(code), True, int(info.min), int(info.max))


_F32_MAX = float(np.finfo(np.float32).max)
_F64_MAX = float(np.finfo(np.float64).max)

_LAYOUTS: dict[str, _Layout] = {
    "int16": _int_layout(">i2"),
    "uint16": _int_layout(">u2"),
    "int32": _int_layout(">i4"),
    "uint32": _int_layout(">u4"),
    "int64": _int_layout(">i8"),
    "uint64": _int_layout(">u8"),
    "float32": _Layout(2, np.dtype(">f4"), False, -_F32_MAX, _F32_MAX),
    "float64": _Layout(4, np.dtype(">f8"), False, -_F64_MAX, _F64_MAX),
}

_TABLE_ORDER: dict[str, int] = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}

_WORD = np.dtype(">u2")


def value_range(data_type: DataType) -> tuple[float, float]:
    """The smallest and largest value ``data_type`` can hold (as floats; strings have none).

    >>> value_range("int16"), value_range("bool"), value_range("bit")
    ((-32768.0, 32767.0), (0.0, 1.0), (0.0, 1.0))
    """
    if data_type in ("bool", "bit"):
        return 0.0, 1.0
    if data_type == "string":
        return math.nan, math.nan
    layout = _layout(data_type)
    return float(layout.low), float(layout.high)


def int_range(data_type: DataType) -> tuple[int, int]:
    """The exact range of an integer data type (bool and bit: 0..1).

    >>> int_range("int64")
    (-9223372036854775808, 9223372036854775807)
    """
    if data_type in ("bool", "bit"):
        return 0, 1
    layout = _layout(data_type)
    if not layout.integer:
        raise ValueError(f"{data_type} is not an integer type")
    return int(layout.low), int(layout.high)


def _layout(data_type: str) -> _Layout:
    try:
        return _LAYOUTS[data_type]
    except KeyError:
        raise ValueError(f"unknown register data_type {data_type!r}") from None


def normalize_order(order: str) -> ByteOrder:
    """``ABCD``/``CDAB``/``BADC``/``DCBA``, their 64-bit names, or legacy ``big``/``little``.

    >>> normalize_order("little"), normalize_order("HGFEDCBA"), normalize_order("BADC")
    ('CDAB', 'DCBA', 'BADC')
    """
    if order in ("ABCD", "CDAB", "BADC", "DCBA"):
        return order  # type: ignore[return-value]
    mapped = WORD_ORDER_ALIASES.get(order) or BYTE_ORDER_64.get(order)
    if mapped is None:
        raise ValueError(
            f"unknown byte_order {order!r} (expected ABCD, CDAB, BADC, DCBA, their 64-bit names, "
            "or word_order big/little)"
        )
    return mapped


def _word_permutation(words: int, order: str) -> list[int]:
    """Position in the device's register sequence of each word, most significant word first."""
    if normalize_order(order) in ("CDAB", "DCBA"):
        return list(range(words - 1, -1, -1))
    return list(range(words))


def _byte_swapped(order: str) -> bool:
    return normalize_order(order) in ("BADC", "DCBA")


def _swap_bytes(words: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
    w = np.asarray(words, dtype=np.uint16)
    return ((w >> 8) | (w << 8)).astype(np.uint16)


def _decode_words(
    high_first: npt.NDArray[np.uint16], layout: _Layout, swap: bool = False
) -> npt.NDArray[np.float64]:
    """Rows of ``layout.words`` words, most significant word first, to float64 values."""
    rows = _swap_bytes(high_first) if swap else high_first
    be = np.ascontiguousarray(rows, dtype=_WORD)
    with np.errstate(invalid="ignore"):  # a signalling NaN from the device stays a (quiet) NaN
        return be.view(layout.dtype).reshape(-1).astype(np.float64)


def decode_registers(
    registers: npt.ArrayLike, data_type: DataType, byte_order: str = "ABCD", *, bit: int = 0
) -> npt.NDArray[np.float64]:
    """Decode consecutive values of one type from the registers (or bits, for ``bool``) that hold them.

    Integers above 2**53 lose precision in the float64 result.

    >>> decode_registers([0x1234, 0x5678], "uint32").tolist(), decode_registers([0xFFFF], "int16").tolist()
    ([305419896.0], [-1.0])
    >>> decode_registers([0b100, 0b011], "bit", bit=2).tolist()
    [1.0, 0.0]
    """
    if data_type == "bool":
        return (np.asarray(registers) != 0).astype(np.float64)
    if data_type == "bit":
        regs16 = np.asarray(registers, dtype=np.uint16).reshape(-1)
        return ((regs16 >> np.uint16(bit)) & 1).astype(np.float64)
    if data_type == "string":
        raise ValueError("strings decode to text: use decode_string")
    layout = _layout(data_type)
    regs = np.asarray(registers, dtype=np.uint16).reshape(-1)
    if len(regs) % layout.words:
        raise ValueError(f"{data_type} takes {layout.words} registers per value, got {len(regs)} registers")
    rows = regs.reshape(-1, layout.words)[:, _word_permutation(layout.words, byte_order)]
    return _decode_words(rows, layout, _byte_swapped(byte_order))


def decode_string(registers: npt.ArrayLike, string_byte_order: StringByteOrder = "big") -> str:
    """The text in ``registers``, up to the first NUL.

    >>> decode_string([0x4142, 0x4300, 0x5858])
    'ABC'
    """
    regs = np.asarray(registers, dtype=np.uint16).reshape(-1)
    raw = regs.astype(">u2" if string_byte_order == "big" else "<u2").tobytes()
    return raw.split(b"\0", 1)[0].decode(STRING_ENCODING)


def encode_string(text: str, length: int, string_byte_order: StringByteOrder = "big") -> list[int]:
    """``length`` registers holding ``text`` (latin-1, two characters per register, NUL-padded).

    >>> encode_string("ABC", 3)
    [16706, 17152, 0]
    >>> encode_string("too long", 2)
    Traceback (most recent call last):
    ...
    ValueError: string of 8 characters does not fit 2 registers (4 characters)
    """
    if not isinstance(text, str):
        raise ValueError(f"value {text!r} is not a string, as data_type 'string' requires")
    try:
        raw = text.encode(STRING_ENCODING)
    except UnicodeEncodeError:
        raise ValueError(f"string {text!r} has characters outside {STRING_ENCODING}") from None
    if len(raw) > 2 * length:
        raise ValueError(
            f"string of {len(raw)} characters does not fit {length} registers ({2 * length} characters)"
        )
    padded = raw.ljust(2 * length, b"\0")
    dtype = ">u2" if string_byte_order == "big" else "<u2"
    return [int(w) for w in np.frombuffer(padded, dtype=dtype)]


def _integral(value: float | int | bool | str, data_type: str) -> int:
    if isinstance(value, bool | int | np.integer):
        return int(value)
    if isinstance(value, str):
        raise ValueError(f"value {value!r} is not a number, as {data_type} requires")
    v = float(value)
    if not math.isfinite(v) or v != math.floor(v):
        raise ValueError(f"value {value!r} is not an integer, as {data_type} requires")
    return int(v)


def encode_value(
    value: float | int | bool | str,
    data_type: DataType,
    byte_order: str = "ABCD",
    *,
    length: int | None = None,
    string_byte_order: StringByteOrder = "big",
) -> list[int]:
    """The registers (or the single bit, for ``bool`` and ``bit``) that hold ``value`` on the device.

    Integer types take integral values within their range (Python ints are exact, also for 64-bit);
    float types take any value they can hold (NaN and infinities included); strings need ``length``.
    Anything else raises :class:`ValueError`:

    >>> encode_value(-2, "int32")
    [65535, 65534]
    >>> encode_value(2**64 - 2, "uint64", "CDAB")
    [65534, 65535, 65535, 65535]
    >>> encode_value(70000, "uint16")
    Traceback (most recent call last):
    ...
    ValueError: value 70000 is out of range for uint16 (0..65535)
    """
    if data_type in ("bool", "bit"):
        if isinstance(value, str) or value not in (0, 1):
            raise ValueError(f"value {value!r} is not a bool (0/1, False/True)")
        return [int(bool(value))]
    if data_type == "string":
        if length is None:
            raise ValueError("data_type 'string' needs `length`")
        return encode_string(value, length, string_byte_order)  # type: ignore[arg-type]
    layout = _layout(data_type)
    raw: npt.NDArray[np.generic]
    if layout.integer:
        iv = _integral(value, data_type)
        if not layout.low <= iv <= layout.high:
            raise ValueError(f"value {value!r} is out of range for {data_type} ({layout.low}..{layout.high})")
        raw = np.array([iv], dtype=layout.dtype)
    else:
        if isinstance(value, str):
            raise ValueError(f"value {value!r} is not a number, as {data_type} requires")
        v = float(value)
        if math.isfinite(v) and abs(v) > layout.high:
            raise ValueError(f"value {value!r} is out of range for {data_type} (|v| <= {layout.high:.6g})")
        raw = np.array([v], dtype=layout.dtype)
    high_first = raw.view(_WORD).astype(np.uint16)
    if _byte_swapped(byte_order):
        high_first = _swap_bytes(high_first)
    perm = _word_permutation(layout.words, byte_order)
    regs = [0] * layout.words
    for high_first_index, device_index in enumerate(perm):
        regs[device_index] = int(high_first[high_first_index])
    return regs


def encode_tag(value: float | int | bool | str, address: ModbusTagAddress) -> list[int]:
    """:func:`encode_value` with the tag's type, byte order and string settings."""
    return encode_value(
        value,
        address.data_type,
        address.byte_order,
        length=address.length,
        string_byte_order=address.string_byte_order,
    )


_Member = tuple[int, ModbusTagAddress]  # (output position, address)


def _coalesce(members: list[_Member], *, gap: int, limit: int) -> list[tuple[int, int, list[_Member]]]:
    """Pack one table's tags into spans ``(start, end, members)``; ``end`` is exclusive."""
    spans: list[tuple[int, int, list[_Member]]] = []
    current: list[_Member] = []
    start = end = 0
    for member in sorted(members, key=lambda m: (m[1].address, -m[1].register_count)):
        a = member[1].address
        e = a + member[1].register_count
        if current and a - end <= gap and max(end, e) - start <= limit:
            end = max(end, e)
        else:
            if current:
                spans.append((start, end, current))
            current, start, end = [], a, e
        current.append(member)
    if current:
        spans.append((start, end, current))
    return spans


@dataclass(frozen=True, slots=True, eq=False)
class ReadRequest:
    """One read of ``count`` registers (or bits) from ``address`` of ``table``.

    The response goes to ``offset`` in the plan's word buffer (register tables) or bit buffer (coils,
    discrete inputs); ``points`` are the output positions of the tags it serves and ``members`` their
    ``(start, end, position)`` spans in address order (what :func:`split_request` divides).
    """

    table: RegisterTable
    address: int
    count: int
    offset: int
    points: npt.NDArray[np.intp]
    members: tuple[tuple[int, int, int], ...] = ()

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


def split_request(req: ReadRequest) -> tuple[ReadRequest, ReadRequest] | None:
    """Two requests serving the first and second half of ``req``'s tags (None: a single tag).

    Each half reads only the span its tags cover and fills the same place of the plan's buffer.

    >>> r = ReadRequest("holding", 10, 6, 0, np.array([0, 1, 2]), ((10, 11, 0), (12, 14, 2), (15, 16, 1)))
    >>> [(s.address, s.count, s.offset, s.points.tolist()) for s in split_request(r)]
    [(10, 1, 0, [0]), (12, 4, 2, [1, 2])]
    """
    if len(req.members) < 2:
        return None
    mid = len(req.members) // 2
    return _sub_request(req, req.members[:mid]), _sub_request(req, req.members[mid:])


def _sub_request(req: ReadRequest, members: tuple[tuple[int, int, int], ...]) -> ReadRequest:
    start = min(m[0] for m in members)
    end = max(m[1] for m in members)
    points = np.array(sorted(m[2] for m in members), dtype=np.intp)
    return ReadRequest(req.table, start, end - start, req.offset + start - req.address, points, members)


@dataclass(frozen=True, slots=True, eq=False)
class _Group:
    """All tags of one register data type and byte swap: a gather matrix (n, words) into the words."""

    layout: _Layout
    swap: bool
    gather: npt.NDArray[np.intp]
    points: npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True, eq=False)
class _StringTag:
    position: int
    start: int
    length: int
    byte_order: StringByteOrder


class ReadPlan:
    """The read requests for a device's tags and the indices that decode their responses.

    Tags of a table are sorted by address and packed greedily into one request while the next tag
    starts at most ``max_gap`` registers after the previous one ends (``max_gap * 16`` bits for coils
    and discrete inputs) and the request stays within ``max_registers`` / ``max_bits``.
    Output order is the order of ``tags``; addresses are wire addresses (0-based).
    """

    __slots__ = (
        "_bit_gather",
        "_bit_points",
        "_groups",
        "_regbit_gather",
        "_regbit_points",
        "_regbit_shift",
        "_strings",
        "floats",
        "n_bits",
        "n_words",
        "requests",
        "tag_ids",
        "text_points",
    )

    def __init__(
        self,
        tags: Sequence[tuple[int, ModbusTagAddress]],
        *,
        max_gap: int = 8,
        max_registers: int = 125,
        max_bits: int = 2000,
    ) -> None:
        if max_gap < 0 or not 1 <= max_registers <= 125 or not 1 <= max_bits <= 2000:
            raise ValueError(
                f"need max_gap >= 0, 1 <= max_registers <= 125, 1 <= max_bits <= 2000; "
                f"got {max_gap}, {max_registers}, {max_bits}"
            )
        self.tag_ids: npt.NDArray[np.int64] = np.array([t for t, _ in tags], dtype=np.int64)
        by_table: dict[str, list[tuple[int, ModbusTagAddress]]] = {}
        for position, (tag_id, address) in enumerate(tags):
            if address.data_type != "bool" and address.register_count > max_registers:
                raise ValueError(
                    f"tag {tag_id}: {address.data_type} needs {address.register_count} registers, "
                    f"more than max_registers={max_registers}"
                )
            by_table.setdefault(address.table, []).append((position, address))

        requests: list[ReadRequest] = []
        word_offset = bit_offset = 0
        # (request offset, request start, position, address) per tag, to build the gather indices below
        placed: list[tuple[int, int, int, ModbusTagAddress]] = []
        for table in sorted(by_table, key=_TABLE_ORDER.__getitem__):
            bits = table in BIT_TABLES
            spans = _coalesce(
                by_table[table],
                gap=max_gap * 16 if bits else max_gap,
                limit=max_bits if bits else max_registers,
            )
            for start, end, members in spans:
                offset = bit_offset if bits else word_offset
                points = np.array(sorted(p for p, _ in members), dtype=np.intp)
                spans_of = tuple((a.address, a.address + a.register_count, p) for p, a in members)
                requests.append(ReadRequest(table, start, end - start, offset, points, spans_of))  # type: ignore[arg-type]
                placed.extend((offset, start, position, address) for position, address in members)
                if bits:
                    bit_offset += end - start
                else:
                    word_offset += end - start

        self.requests: tuple[ReadRequest, ...] = tuple(requests)
        self.n_words = word_offset
        self.n_bits = bit_offset

        groups: dict[tuple[str, bool], tuple[list[list[int]], list[int]]] = {}
        bit_gather: list[int] = []
        bit_points: list[int] = []
        regbit: tuple[list[int], list[int], list[int]] = ([], [], [])
        strings: list[_StringTag] = []
        for offset, start, position, address in placed:
            base = offset + address.address - start
            if address.data_type == "bool":
                bit_gather.append(base)
                bit_points.append(position)
            elif address.data_type == "bit":
                regbit[0].append(base)
                regbit[1].append(address.bit or 0)
                regbit[2].append(position)
            elif address.data_type == "string":
                strings.append(_StringTag(position, base, address.register_count, address.string_byte_order))
            else:
                layout = _layout(address.data_type)
                key = (address.data_type, _byte_swapped(address.byte_order))
                group_rows, group_points = groups.setdefault(key, ([], []))
                group_rows.append([base + i for i in _word_permutation(layout.words, address.byte_order)])
                group_points.append(position)
        self._groups: tuple[_Group, ...] = tuple(
            _Group(_layout(dt), swap, np.array(rows, dtype=np.intp), np.array(pos, dtype=np.intp))
            for (dt, swap), (rows, pos) in groups.items()
        )
        self.floats = any(not g.layout.integer for g in self._groups)
        """Whether a decoded value can be NaN or infinite (a float tag): integers and bits never are."""
        self._bit_gather = np.array(bit_gather, dtype=np.intp)
        self._bit_points = np.array(bit_points, dtype=np.intp)
        self._regbit_gather = np.array(regbit[0], dtype=np.intp)
        self._regbit_shift = np.array(regbit[1], dtype=np.uint16)
        self._regbit_points = np.array(regbit[2], dtype=np.intp)
        self._strings = tuple(strings)
        self.text_points: npt.NDArray[np.intp] = np.array(sorted(s.position for s in strings), dtype=np.intp)
        """Output positions of string tags (their values are NaN; the text is in decode_text)."""

    @classmethod
    def for_device(cls, plan: ModbusDevicePlan) -> ReadPlan:
        c = plan.connection
        return cls(plan.wire_tags, max_gap=c.max_gap, max_registers=c.max_registers, max_bits=c.max_bits)

    def __len__(self) -> int:
        return len(self.tag_ids)

    def buffers(self) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
        """Fresh, zeroed buffers for one poll: all register responses, all bit responses."""
        return np.zeros(self.n_words, dtype=np.uint16), np.zeros(self.n_bits, dtype=np.bool_)

    def decode(self, words: npt.NDArray[np.uint16], bits: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        """Every tag's value, in tag order, from the filled buffers (strings: NaN)."""
        values = np.empty(len(self.tag_ids), dtype=np.float64)
        for group in self._groups:
            values[group.points] = _decode_words(words[group.gather], group.layout, group.swap)
        if len(self._bit_points):
            values[self._bit_points] = bits[self._bit_gather]
        if len(self._regbit_points):
            values[self._regbit_points] = (words[self._regbit_gather] >> self._regbit_shift) & 1
        if len(self.text_points):
            values[self.text_points] = np.nan
        return values

    def decode_text(self, words: npt.NDArray[np.uint16]) -> dict[int, str]:
        """The string tags' text by output position."""
        return {
            s.position: decode_string(words[s.start : s.start + s.length], s.byte_order)
            for s in self._strings
        }
