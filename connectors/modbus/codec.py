"""Register codec and read planning for Modbus devices, vectorized with numpy.

A value of a multi-register type is stored as 16-bit words; bytes within a word are big-endian
(the Modbus convention) and ``word_order`` says which word comes first:

>>> encode_value(1.5, "float32", "big"), encode_value(1.5, "float32", "little")
([16320, 0], [0, 16320])
>>> decode_registers(np.array([0xFFFF, 0xFFFE], dtype=np.uint16), "int32", "big").tolist()
[-2.0]

A :class:`ReadPlan` turns a device's tags into as few read requests as the limits allow and
precomputes gather indices, so decoding a whole poll is a few numpy operations per data type:

>>> from connectors.modbus.config import ModbusTagAddress as A
>>> plan = ReadPlan([(1, A(table="holding", address=0, data_type="int16")),
...                  (2, A(table="holding", address=2, data_type="float32", word_order="little"))])
>>> [(r.table, r.address, r.count) for r in plan.requests]
[('holding', 0, 4)]
>>> words, bits = plan.buffers()
>>> words[:] = [0xFFFF, 0, 0x0000, 0x3FC0]
>>> plan.decode(words, bits).tolist()
[-1.0, 1.5]

Extending the codec (64-bit types, byte swaps) means adding a layout to ``_LAYOUTS`` and, for
byte swaps, a per-group swap of each gathered word; the plan's grouping and gathering stay as they are.
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
    DataType,
    ModbusTagAddress,
    RegisterTable,
    WordOrder,
    register_count,
)

if TYPE_CHECKING:
    from connectors.modbus.config import ModbusDevicePlan

__all__ = [
    "ReadPlan",
    "ReadRequest",
    "decode_registers",
    "encode_value",
    "register_count",
    "value_range",
]


@dataclass(frozen=True, slots=True)
class _Layout:
    words: int
    dtype: np.dtype  # big-endian dtype of the value once its words are in high-word-first order
    integer: bool
    low: float
    high: float


def _int_layout(code: str) -> _Layout:
    info = np.iinfo(np.dtype(code))
    return _Layout(np.dtype(code).itemsize // 2, np.dtype(code), True, float(info.min), float(info.max))


_F32_MAX = float(np.finfo(np.float32).max)

_LAYOUTS: dict[str, _Layout] = {
    "int16": _int_layout(">i2"),
    "uint16": _int_layout(">u2"),
    "int32": _int_layout(">i4"),
    "uint32": _int_layout(">u4"),
    "float32": _Layout(2, np.dtype(">f4"), False, -_F32_MAX, _F32_MAX),
}

_TABLE_ORDER: dict[str, int] = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}

_WORD = np.dtype(">u2")


def value_range(data_type: DataType) -> tuple[float, float]:
    """The smallest and largest value ``data_type`` can hold.

    >>> value_range("int16"), value_range("bool")
    ((-32768.0, 32767.0), (0.0, 1.0))
    """
    if data_type == "bool":
        return 0.0, 1.0
    layout = _layout(data_type)
    return layout.low, layout.high


def _layout(data_type: str) -> _Layout:
    try:
        return _LAYOUTS[data_type]
    except KeyError:
        raise ValueError(f"unknown register data_type {data_type!r}") from None


def _word_permutation(words: int, word_order: WordOrder) -> list[int]:
    """Position in the device's register sequence of each word, high word first."""
    if word_order == "big":
        return list(range(words))
    if word_order == "little":
        return list(range(words - 1, -1, -1))
    raise ValueError(f"unknown word_order {word_order!r}")


def _decode_words(high_first: npt.NDArray[np.uint16], layout: _Layout) -> npt.NDArray[np.float64]:
    """Rows of ``layout.words`` words, high word first, to float64 values."""
    be = np.ascontiguousarray(high_first, dtype=_WORD)
    with np.errstate(invalid="ignore"):  # a signalling NaN from the device stays a (quiet) NaN
        return be.view(layout.dtype).reshape(-1).astype(np.float64)


def decode_registers(
    registers: npt.ArrayLike, data_type: DataType, word_order: WordOrder = "big"
) -> npt.NDArray[np.float64]:
    """Decode consecutive values of one type from the registers (or bits, for ``bool``) that hold them.

    >>> decode_registers([0x1234, 0x5678], "uint32").tolist(), decode_registers([0xFFFF], "int16").tolist()
    ([305419896.0], [-1.0])
    """
    if data_type == "bool":
        return (np.asarray(registers) != 0).astype(np.float64)
    layout = _layout(data_type)
    regs = np.asarray(registers, dtype=np.uint16).reshape(-1)
    if len(regs) % layout.words:
        raise ValueError(f"{data_type} takes {layout.words} registers per value, got {len(regs)} registers")
    rows = regs.reshape(-1, layout.words)[:, _word_permutation(layout.words, word_order)]
    return _decode_words(rows, layout)


def encode_value(value: float | bool, data_type: DataType, word_order: WordOrder = "big") -> list[int]:
    """The registers (or the single bit, for ``bool``) that hold ``value`` on the device.

    Integer types take integral values within their range; ``float32`` takes any value a float32
    can hold (NaN and infinities included). Anything else raises :class:`ValueError`:

    >>> encode_value(-2, "int32")
    [65535, 65534]
    >>> encode_value(70000, "uint16")
    Traceback (most recent call last):
    ...
    ValueError: value 70000 is out of range for uint16 (0..65535)
    """
    if data_type == "bool":
        if value not in (0, 1):
            raise ValueError(f"value {value!r} is not a bool (0/1, False/True)")
        return [int(bool(value))]
    layout = _layout(data_type)
    v = float(value)
    if layout.integer:
        if not math.isfinite(v) or v != math.floor(v):
            raise ValueError(f"value {value!r} is not an integer, as {data_type} requires")
        if not layout.low <= v <= layout.high:
            raise ValueError(
                f"value {value!r} is out of range for {data_type} ({int(layout.low)}..{int(layout.high)})"
            )
        raw = np.array([int(v)], dtype=layout.dtype)
    else:
        if math.isfinite(v) and abs(v) > layout.high:
            raise ValueError(f"value {value!r} is out of range for {data_type} (|v| <= {layout.high:.6g})")
        raw = np.array([v], dtype=layout.dtype)
    high_first = raw.view(_WORD).astype(np.uint16)
    perm = _word_permutation(layout.words, word_order)
    regs = [0] * layout.words
    for high_first_index, device_index in enumerate(perm):
        regs[device_index] = int(high_first[high_first_index])
    return regs


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
    discrete inputs); ``points`` are the output positions of the tags it serves.
    """

    table: RegisterTable
    address: int
    count: int
    offset: int
    points: npt.NDArray[np.intp]

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


@dataclass(frozen=True, slots=True, eq=False)
class _Group:
    """All tags of one register data type: a gather matrix (n, words) into the word buffer."""

    layout: _Layout
    gather: npt.NDArray[np.intp]
    points: npt.NDArray[np.intp]


class ReadPlan:
    """The read requests for a device's tags and the indices that decode their responses.

    Tags of a table are sorted by address and packed greedily into one request while the next tag
    starts at most ``max_gap`` registers after the previous one ends (``max_gap * 16`` bits for coils
    and discrete inputs) and the request stays within ``max_registers`` / ``max_bits``.
    Output order is the order of ``tags``.
    """

    __slots__ = ("_bit_gather", "_bit_points", "_groups", "n_bits", "n_words", "requests", "tag_ids")

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
        # (request offset, address, position) per tag, to build the gather indices below
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
                requests.append(ReadRequest(table, start, end - start, offset, points))  # type: ignore[arg-type]
                placed.extend((offset, start, position, address) for position, address in members)
                if bits:
                    bit_offset += end - start
                else:
                    word_offset += end - start

        self.requests: tuple[ReadRequest, ...] = tuple(requests)
        self.n_words = word_offset
        self.n_bits = bit_offset

        groups: dict[DataType, tuple[list[list[int]], list[int]]] = {}
        bit_gather: list[int] = []
        bit_points: list[int] = []
        for offset, start, position, address in placed:
            base = offset + address.address - start
            if address.data_type == "bool":
                bit_gather.append(base)
                bit_points.append(position)
                continue
            layout = _layout(address.data_type)
            group_rows, group_points = groups.setdefault(address.data_type, ([], []))
            group_rows.append([base + i for i in _word_permutation(layout.words, address.word_order)])
            group_points.append(position)
        self._groups: tuple[_Group, ...] = tuple(
            _Group(_layout(dt), np.array(rows, dtype=np.intp), np.array(pos, dtype=np.intp))
            for dt, (rows, pos) in groups.items()
        )
        self._bit_gather = np.array(bit_gather, dtype=np.intp)
        self._bit_points = np.array(bit_points, dtype=np.intp)

    @classmethod
    def for_device(cls, plan: ModbusDevicePlan) -> ReadPlan:
        c = plan.connection
        return cls(plan.tags, max_gap=c.max_gap, max_registers=c.max_registers, max_bits=c.max_bits)

    def __len__(self) -> int:
        return len(self.tag_ids)

    def buffers(self) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
        """Fresh, zeroed buffers for one poll: all register responses, all bit responses."""
        return np.zeros(self.n_words, dtype=np.uint16), np.zeros(self.n_bits, dtype=np.bool_)

    def decode(self, words: npt.NDArray[np.uint16], bits: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        """Every tag's value, in tag order, from the filled buffers."""
        values = np.empty(len(self.tag_ids), dtype=np.float64)
        for group in self._groups:
            values[group.points] = _decode_words(words[group.gather], group.layout)
        if len(self._bit_points):
            values[self._bit_points] = bits[self._bit_gather]
        return values
