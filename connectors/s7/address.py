"""S7 addresses in the usual Siemens notation, parsed into a frozen :class:`S7Address`.

English and German mnemonics are both accepted (``I``/``E`` inputs, ``Q``/``A`` outputs,
``M`` flags); the width letter says how many bytes the address spans (``X`` a bit, ``B`` 1,
``W`` 2, ``D`` 4) and the data type must fit it:

>>> parse_address("DB1.DBD20", "REAL")
S7Address(area='DB', db=1, byte=20, bit=None, data_type='REAL', length=None)
>>> parse_address("E0.1", "BOOL")
S7Address(area='I', db=None, byte=0, bit=1, data_type='BOOL', length=None)
>>> parse_address("DB1.DBB10", "STRING", length=20).size
22
>>> try:
...     parse_address("DB1.DBX0.9", "BOOL")
... except ValueError as e:
...     print(e)
DB1.DBX0.9: bit must be 0..7, got 9
>>> try:
...     parse_address("MW10", "REAL")
... except ValueError as e:
...     print(e)
MW10: data_type 'REAL' needs a 4-byte address (D, e.g. MD10), got a W (2-byte) address
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

AreaName = Literal["DB", "M", "I", "Q"]
DataType = Literal["BOOL", "BYTE", "WORD", "INT", "DWORD", "DINT", "REAL", "LREAL", "STRING"]

DATA_TYPES: tuple[str, ...] = get_args(DataType)
MAX_BYTE = 65535
MAX_DB = 65535
MAX_STRING = 254

TYPE_SIZE: dict[str, int] = {
    "BOOL": 1,
    "BYTE": 1,
    "WORD": 2,
    "INT": 2,
    "DWORD": 4,
    "DINT": 4,
    "REAL": 4,
    "LREAL": 8,
}
"""Bytes one value occupies (``BOOL``: the byte holding the bit; ``STRING``: ``length + 2``)."""

_WIDTH_BYTES = {"X": 0, "B": 1, "W": 2, "D": 4}
_WIDTH_NAME = {"X": "bit", "B": "1-byte", "W": "2-byte", "D": "4-byte"}
_AREA_ALIAS = {"M": "M", "I": "I", "E": "I", "Q": "Q", "A": "Q"}

_DB_RE = re.compile(r"^DB(\d+)\.DB([XBWD])(\d+)(?:\.(\d+))?$")
_AREA_RE = re.compile(r"^([MIEQA])([XBWD]?)(\d+)(?:\.(\d+))?$")


@dataclass(frozen=True, slots=True)
class S7Address:
    """One tag's location: ``area`` (``DB``, ``M``, ``I``, ``Q``), ``db`` number (DB area only),
    ``byte`` offset, ``bit`` (``BOOL`` only), ``data_type`` and, for ``STRING``, its declared
    ``length`` (the S7 string occupies ``length + 2`` bytes: max length, actual length, chars)."""

    area: AreaName
    db: int | None
    byte: int
    bit: int | None
    data_type: DataType
    length: int | None = None

    @property
    def size(self) -> int:
        """Bytes to read for one value."""
        if self.data_type == "STRING":
            assert self.length is not None
            return self.length + 2
        return TYPE_SIZE[self.data_type]

    def notation(self) -> str:
        """The canonical English notation of the address.

        >>> parse_address("A0.0", "BOOL").notation(), parse_address("DB2.DBW6", "INT").notation()
        ('Q0.0', 'DB2.DBW6')
        """
        if self.area == "DB":
            if self.bit is not None:
                return f"DB{self.db}.DBX{self.byte}.{self.bit}"
            return f"DB{self.db}.DB{_letter(self.data_type)}{self.byte}"
        if self.bit is not None:
            return f"{self.area}{self.byte}.{self.bit}"
        return f"{self.area}{_letter(self.data_type)}{self.byte}"


def _letter(data_type: str) -> str:
    return {1: "B", 2: "W", 4: "D"}.get(TYPE_SIZE.get(data_type, 1), "B")


def parse_address(text: str, data_type: str, length: int | None = None) -> S7Address:
    """Parse ``text`` (e.g. ``DB1.DBX0.3``, ``MW10``, ``I0.1``) holding a value of ``data_type``.

    Raises :class:`ValueError` naming the address and what is wrong with it.
    """
    raw = text
    text = text.strip().upper()
    if data_type not in DATA_TYPES:
        raise ValueError(f"{raw}: unknown data_type {data_type!r}, expected one of {', '.join(DATA_TYPES)}")
    area: AreaName
    db: int | None
    m = _DB_RE.match(text)
    if m:
        area, db = "DB", int(m.group(1))
        width, byte_s, bit_s = m.group(2), m.group(3), m.group(4)
        if not 1 <= db <= MAX_DB:
            raise ValueError(f"{raw}: DB number must be 1..{MAX_DB}, got {db}")
    else:
        m = _AREA_RE.match(text)
        if not m:
            raise ValueError(
                f"{raw}: not an S7 address; expected e.g. DB1.DBX0.3, DB1.DBW6, DB1.DBD20, "
                "M10.3, MW10, I0.1 (E0.1), IB2, Q0.0 (A0.0), QD4"
            )
        area, db = _AREA_ALIAS[m.group(1)], None  # type: ignore[assignment]
        width, byte_s, bit_s = m.group(2) or ("X" if m.group(4) is not None else ""), m.group(3), m.group(4)
        if not width:
            raise ValueError(
                f"{raw}: missing width letter: use X (with .bit), B, W or D, e.g. {area}W{byte_s}"
            )
    byte = int(byte_s)
    if byte > MAX_BYTE:
        raise ValueError(f"{raw}: byte offset must be 0..{MAX_BYTE}, got {byte}")
    bit: int | None = None
    if width == "X":
        if bit_s is None:
            raise ValueError(f"{raw}: a bit address needs a bit number, e.g. {text}.0")
        bit = int(bit_s)
        if not 0 <= bit <= 7:
            raise ValueError(f"{raw}: bit must be 0..7, got {bit}")
    elif bit_s is not None:
        raise ValueError(f"{raw}: only X (bit) addresses take a bit number")

    _check_width(raw, area, width, byte, data_type)
    if data_type == "STRING":
        if length is None:
            raise ValueError(f"{raw}: data_type 'STRING' needs `length` (the declared max length, 1..254)")
        if not 1 <= length <= MAX_STRING:
            raise ValueError(f"{raw}: STRING length must be 1..{MAX_STRING}, got {length}")
    elif length is not None:
        raise ValueError(f"{raw}: `length` applies to STRING only, not {data_type!r}")
    addr = S7Address(area, db, byte, bit, data_type, length)  # type: ignore[arg-type]
    if byte + addr.size - 1 > MAX_BYTE:
        raise ValueError(f"{raw}: {data_type} of {addr.size} bytes ends beyond byte {MAX_BYTE}")
    return addr


def _check_width(raw: str, area: str, width: str, byte: int, data_type: str) -> None:
    example = f"DB1.DB{{}}{byte}" if area == "DB" else f"{area}{{}}{byte}"
    if data_type == "BOOL":
        if width != "X":
            raise ValueError(f"{raw}: data_type 'BOOL' needs a bit address, e.g. {example.format('X')}.0")
        return
    if width == "X":
        raise ValueError(f"{raw}: a bit address holds only 'BOOL', not {data_type!r}")
    if data_type in ("LREAL", "STRING"):
        # No 8-byte or string width letter exists: the address gives the start byte.
        if width not in ("B", "D"):
            raise ValueError(
                f"{raw}: data_type {data_type!r} needs a byte address for its start "
                f"(B, e.g. {example.format('B')}), got a {width} address"
            )
        return
    need = TYPE_SIZE[data_type]
    have = _WIDTH_BYTES[width]
    if need == have or (area == "DB" and width == "B"):
        return  # exact width, or a DB byte offset as the start of a wider value
    letter = {1: "B", 2: "W", 4: "D"}[need]
    raise ValueError(
        f"{raw}: data_type {data_type!r} needs a {need}-byte address ({letter}, e.g. "
        f"{example.format(letter)}), got a {width} ({_WIDTH_NAME[width]}) address"
    )
