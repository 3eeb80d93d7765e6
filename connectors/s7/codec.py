"""S7 value codec (big-endian, vectorized with numpy) and read planning within the PDU size.

S7 stores multi-byte values big-endian; ``STRING`` is max-length byte, actual-length byte, chars:

>>> encode_value(1.5, parse_address("DB1.DBD0", "REAL")).hex(" ")
'3f c0 00 00'
>>> encode_value(-2, parse_address("MW0", "INT")).hex(" ")
'ff fe'
>>> encode_value("ab", parse_address("DB1.DBB0", "STRING", length=4)).hex(" ")
'04 02 61 62 00 00'
>>> decode_value(bytes.fromhex("3fc00000"), parse_address("DB1.DBD0", "REAL"))
1.5

A :class:`ReadPlan` coalesces a device's tags into contiguous byte ranges of one area/DB
(``items``), splits ranges larger than one PDU can carry, and packs the items into as few
multi-variable read requests as the negotiated PDU and the 20-items-per-request limit allow:

>>> tags = [(1, parse_address("DB1.DBD0", "REAL")), (2, parse_address("DB1.DBW4", "INT")),
...         (3, parse_address("M0.1", "BOOL"))]
>>> plan = ReadPlan(tags, pdu_size=240)
>>> [(i.area, i.db, i.start, i.size) for i in plan.items], len(plan.requests)
([('DB', 1, 0, 6), ('M', 0, 0, 1)], 1)
>>> buf = plan.buffer()
>>> buf[:] = [0x3F, 0xC0, 0, 0, 0xFF, 0xFE, 0b10]
>>> values, quality, text = plan.decode(buf, np.zeros(len(plan.items), np.uint8))
>>> values.tolist(), quality.tolist()
([1.5, -2.0, 1.0], [0, 0, 0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from connectors.s7.address import S7Address, parse_address
from core.quality import QUALITY_DTYPE, Quality

__all__ = [
    "MAX_ITEMS_PER_REQUEST",
    "ReadItem",
    "ReadPlan",
    "ReadRequest",
    "decode_value",
    "encode_value",
    "parse_address",
    "value_range",
]

MAX_ITEMS_PER_REQUEST = 20
"""Items in one multi-variable read (the S7 limit snap7 also enforces)."""
REQUEST_HEADER = 10 + 2
"""Job header (10 bytes) + function code and item count."""
REQUEST_ITEM = 12
"""One address specification in a read request."""
RESPONSE_HEADER = 12 + 2
"""Ack-data header (12 bytes, with error class/code) + function code and item count."""
RESPONSE_ITEM = 4
"""Return code, transport size and bit length before each item's data."""

_NUMERIC_DTYPE: dict[str, np.dtype] = {
    "BYTE": np.dtype(">u1"),
    "WORD": np.dtype(">u2"),
    "INT": np.dtype(">i2"),
    "DWORD": np.dtype(">u4"),
    "DINT": np.dtype(">i4"),
    "REAL": np.dtype(">f4"),
    "LREAL": np.dtype(">f8"),
}
_F32_MAX = float(np.finfo(np.float32).max)
_AREA_ORDER = {"DB": 0, "M": 1, "I": 2, "Q": 3}


def value_range(data_type: str) -> tuple[float, float]:
    """The smallest and largest value of ``data_type`` (``STRING``: its length bounds).

    >>> value_range("INT"), value_range("BOOL"), value_range("DWORD")
    ((-32768.0, 32767.0), (0.0, 1.0), (0.0, 4294967295.0))
    """
    if data_type == "BOOL":
        return 0.0, 1.0
    if data_type == "REAL":
        return -_F32_MAX, _F32_MAX
    if data_type == "LREAL":
        return -math.inf, math.inf
    if data_type == "STRING":
        return 0.0, 254.0
    info = np.iinfo(_NUMERIC_DTYPE[data_type])
    return float(info.min), float(info.max)


def encode_value(value: object, addr: S7Address) -> bytes:
    """The bytes of ``value`` at ``addr`` (``BOOL``: the bit's mask byte, 0 or ``1 << bit``).

    Raises :class:`ValueError` when ``value`` does not fit ``addr.data_type`` (type, range, length).
    """
    dt = addr.data_type
    name = addr.notation()
    if dt == "STRING":
        if not isinstance(value, str):
            raise ValueError(f"{name}: STRING needs a text value, got {type(value).__name__}")
        assert addr.length is not None
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"{name}: STRING value must be Latin-1 text, got {value!r}") from None
        if len(raw) > addr.length:
            raise ValueError(f"{name}: STRING value has {len(raw)} characters, max is {addr.length}")
        return bytes([addr.length, len(raw)]) + raw + bytes(addr.length - len(raw))
    if isinstance(value, str) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: {dt} needs a number, got {type(value).__name__} {value!r}")
    if dt == "BOOL":
        if value not in (0, 1):
            raise ValueError(f"{name}: BOOL value must be true/false or 0/1, got {value!r}")
        assert addr.bit is not None
        return bytes([(1 << addr.bit) if value else 0])
    if isinstance(value, bool):
        raise ValueError(f"{name}: {dt} needs a number, got a boolean")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name}: {dt} value must be finite, got {value!r}")
    low, high = value_range(dt)
    if dt in ("REAL", "LREAL"):
        if not low <= x <= high:
            raise ValueError(f"{name}: {dt} value {value!r} is outside {low:g}..{high:g}")
        return np.array([x], dtype=_NUMERIC_DTYPE[dt]).tobytes()
    if x != math.floor(x):
        raise ValueError(f"{name}: {dt} needs an integer, got {value!r}")
    if not low <= x <= high:
        raise ValueError(f"{name}: {dt} value {value!r} is outside {int(low)}..{int(high)}")
    return np.array([int(value)], dtype=_NUMERIC_DTYPE[dt]).tobytes()


def decode_value(data: bytes, addr: S7Address) -> float | str:
    """Reference scalar decoder of ``addr.size`` bytes (the plan's vectorized decode must agree)."""
    dt = addr.data_type
    if len(data) < addr.size:
        raise ValueError(f"{addr.notation()}: need {addr.size} bytes, got {len(data)}")
    if dt == "STRING":
        assert addr.length is not None
        n = min(data[1], addr.length)
        return bytes(data[2 : 2 + n]).decode("latin-1")
    if dt == "BOOL":
        assert addr.bit is not None
        return float((data[0] >> addr.bit) & 1)
    return float(np.frombuffer(bytes(data[: addr.size]), dtype=_NUMERIC_DTYPE[dt])[0])


@dataclass(frozen=True, slots=True)
class ReadItem:
    """Contiguous bytes of one area/DB read as one item; they land at ``offset`` in the poll buffer."""

    area: str
    db: int
    start: int
    size: int
    offset: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One multi-variable read: indices into :attr:`ReadPlan.items` and its exact PDU sizes."""

    items: tuple[int, ...]
    request_bytes: int
    response_bytes: int


def _response_bytes(sizes: Sequence[int]) -> int:
    # Each item but the last is padded to an even length.
    pads = sum(s % 2 for s in sizes[:-1])
    return RESPONSE_HEADER + sum(RESPONSE_ITEM + s for s in sizes) + pads


class ReadPlan:
    """Read requests for a device's tags and the gather indices to decode a poll's bytes.

    ``max_gap`` unused bytes may lie between two tags read as one item (cheaper than another item's
    16 bytes of overhead). Tags come out of :meth:`decode` in the order given.
    """

    def __init__(
        self,
        tags: Sequence[tuple[int, S7Address]],
        *,
        pdu_size: int = 480,
        max_gap: int = 16,
        max_items: int = MAX_ITEMS_PER_REQUEST,
    ) -> None:
        if pdu_size < RESPONSE_HEADER + RESPONSE_ITEM + 1:
            raise ValueError(f"`pdu_size` must be >= {RESPONSE_HEADER + RESPONSE_ITEM + 1}, got {pdu_size}")
        self.pdu_size = pdu_size
        self.max_gap = max_gap
        self.addresses = tuple(a for _, a in tags)
        self.tag_ids = np.array([t for t, _ in tags], dtype=np.int64)
        max_chunk = pdu_size - RESPONSE_HEADER - RESPONSE_ITEM
        items: list[ReadItem] = []
        pos = np.zeros(len(tags), dtype=np.int64)
        order = sorted(
            range(len(tags)),
            key=lambda i: (
                _AREA_ORDER[self.addresses[i].area],
                self.addresses[i].db or 0,
                self.addresses[i].byte,
            ),
        )
        offset = 0
        block: list[int] = []  # tag indices of the block being built
        block_key: tuple[str, int] | None = None
        block_start = block_end = 0

        def close_block() -> None:
            nonlocal offset
            if not block:
                return
            assert block_key is not None
            for i in block:
                pos[i] = offset + self.addresses[i].byte - block_start
            size = block_end - block_start
            for c in range(0, size, max_chunk):
                n = min(max_chunk, size - c)
                items.append(ReadItem(block_key[0], block_key[1], block_start + c, n, offset + c))
            offset += size

        for i in order:
            a = self.addresses[i]
            key = (a.area, a.db or 0)
            end = a.byte + a.size
            if (
                block
                and key == block_key
                and a.byte <= block_end + max_gap
                and max(block_end, end) - block_start <= max_chunk
            ):
                block.append(i)
                block_end = max(block_end, end)
                continue
            close_block()
            block, block_key, block_start, block_end = [i], key, a.byte, end
        close_block()
        self.items: tuple[ReadItem, ...] = tuple(items)
        self.buffer_size = offset
        self.requests = self._pack(max_items)
        self._pos = pos
        self._first_item, self._last_item = self._item_span(pos)
        self._groups = self._decode_groups(pos)
        self._numeric = np.array([a.data_type != "STRING" for a in self.addresses], dtype=bool)

    def __len__(self) -> int:
        return len(self.addresses)

    def buffer(self) -> npt.NDArray[np.uint8]:
        """A zeroed buffer for one poll's bytes (items are copied to their ``offset``)."""
        return np.zeros(self.buffer_size, dtype=np.uint8)

    def _pack(self, max_items: int) -> tuple[ReadRequest, ...]:
        """First-fit decreasing: biggest items first into the first request with room."""
        bins: list[list[int]] = []
        for idx in sorted(range(len(self.items)), key=lambda k: -self.items[k].size):
            size = self.items[idx].size
            for b in bins:
                sizes = [self.items[k].size for k in b]
                if (
                    len(b) < max_items
                    and REQUEST_HEADER + REQUEST_ITEM * (len(b) + 1) <= self.pdu_size
                    and _response_bytes([*sizes, size]) + 1 <= self.pdu_size  # +1: pad whatever the order
                ):
                    b.append(idx)
                    break
            else:
                bins.append([idx])
        out = []
        for b in bins:
            b.sort()
            sizes = [self.items[k].size for k in b]
            out.append(ReadRequest(tuple(b), REQUEST_HEADER + REQUEST_ITEM * len(b), _response_bytes(sizes)))
        return tuple(sorted(out, key=lambda r: r.items[0]))

    def _item_span(self, pos: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        starts = np.array([it.offset for it in self.items], dtype=np.int64)
        sizes = np.array([a.size for a in self.addresses], dtype=np.int64)
        first = np.searchsorted(starts, pos, side="right") - 1
        last = np.searchsorted(starts, pos + sizes - 1, side="right") - 1
        return first.astype(np.int64), last.astype(np.int64)

    def _decode_groups(
        self, pos: npt.NDArray[np.int64]
    ) -> list[tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
        """Per data type: tag indices and their gather index matrix (or bit numbers for BOOL)."""
        groups: list[tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        types = sorted({a.data_type for a in self.addresses})
        for dt in types:
            idx = np.array([i for i, a in enumerate(self.addresses) if a.data_type == dt], dtype=np.int64)
            if dt == "BOOL":
                extra = np.array([self.addresses[i].bit for i in idx], dtype=np.int64)
            elif dt == "STRING":
                extra = np.empty(0, dtype=np.int64)
            else:
                width = _NUMERIC_DTYPE[dt].itemsize
                extra = pos[idx][:, None] + np.arange(width, dtype=np.int64)
            groups.append((dt, idx, extra))
        return groups

    def tag_quality(self, item_quality: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Each tag's quality: the worst of the items its bytes span (COMM_ERROR before DEVICE_EXCEPTION)."""
        n = len(self.addresses)
        if n == 0:
            return np.zeros(0, dtype=QUALITY_DTYPE)
        q = np.maximum(item_quality[self._first_item], item_quality[self._last_item])
        spans = self._last_item - self._first_item > 1
        if spans.any():  # tags longer than two items (a long STRING in a small PDU): rare
            for i in np.flatnonzero(spans):
                q[i] = item_quality[self._first_item[i] : self._last_item[i] + 1].max()
        return q.astype(QUALITY_DTYPE)

    def decode(
        self, buf: npt.NDArray[np.uint8], item_quality: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8], dict[int, str]]:
        """Values (float64, NaN where not read), qualities and the text of STRING tags by tag index."""
        quality = self.tag_quality(item_quality)
        values = np.full(len(self.addresses), np.nan)
        text: dict[int, str] = {}
        for dt, idx, extra in self._groups:
            p = self._pos[idx]
            if dt == "BOOL":
                values[idx] = (buf[p] >> extra) & 1
            elif dt == "STRING":
                for i in idx.tolist():
                    if quality[i] >= Quality.BAD:
                        continue
                    a = self.addresses[i]
                    assert a.length is not None
                    start = int(self._pos[i])
                    n = int(buf[start + 1])
                    if n > a.length:
                        quality[i] = Quality.CONFIG_ERROR
                        n = a.length
                    text[i] = buf[start + 2 : start + 2 + n].tobytes().decode("latin-1")
            else:
                raw = np.ascontiguousarray(buf[extra])
                with np.errstate(invalid="ignore"):
                    values[idx] = raw.view(_NUMERIC_DTYPE[dt]).ravel()
        bad = quality >= Quality.BAD
        values[bad] = np.nan
        quality[~bad & self._numeric & ~np.isfinite(values)] = Quality.OUT_OF_RANGE
        return values, quality, {i: s for i, s in text.items() if quality[i] < Quality.BAD}
