"""Configuration of Siemens S7 devices: connection, tag addresses and the device plan.

Frozen pydantic models that refuse unknown fields; a bad value fails at construction and the
message names the field and the value:

>>> hex(S7Connection(host="10.0.0.5").remote_tsap_value)  # rack 0, slot 1 by default
'0x101'
>>> S7Connection(host="10.0.0.5", local_tsap="0x0100", remote_tsap="0x0200").rack is None
True
>>> try:
...     S7Connection(host="10.0.0.5", rack=0, remote_tsap="0x0200")
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, give either rack/slot or local_tsap/remote_tsap, not both (got rack=0, remote_tsap='0x0200')
>>> S7TagAddress(address="DB1.DBD20", data_type="REAL").parsed.byte
20
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from connectors.client_base import check_plan
from connectors.s7.address import DataType, S7Address, parse_address

_TSAP_RE = re.compile(r"^(?:0x)?([0-9a-f]{1,4})$|^([0-9a-f]{1,2})\.([0-9a-f]{1,2})$", re.IGNORECASE)


def parse_tsap(text: str) -> int:
    """A TSAP given as hex (``"0x0100"``, ``"0200"``) or in Siemens' ``"01.00"`` notation.

    >>> parse_tsap("0x0100"), parse_tsap("10.02"), parse_tsap("4D57")
    (256, 4098, 19799)
    """
    m = _TSAP_RE.match(text.strip())
    if not m:
        raise ValueError(f"TSAP must be hex like '0x0100' or '01.00', got {text!r}")
    if m.group(1) is not None:
        return int(m.group(1), 16)
    return int(m.group(2), 16) << 8 | int(m.group(3), 16)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class S7Connection(_Frozen):
    """How to reach one S7 CPU. Address it by ``rack``/``slot`` (default 0/1, an S7-300 or
    S7-1200/1500 CPU) or by ``local_tsap``/``remote_tsap`` (LOGO!, CPs, S7-200) — exactly one."""

    host: str = Field(min_length=1)
    port: int = Field(default=102, ge=1, le=65535)
    rack: int | None = Field(default=None, ge=0, le=7)
    slot: int | None = Field(default=None, ge=0, le=31)
    local_tsap: str | None = None
    remote_tsap: str | None = None
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    """Timeout of one connect attempt and of one request."""
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    pdu_size: int = Field(default=480, ge=240, le=960)
    """PDU size requested at connect; the CPU answers with the size used (often 240 or 480)."""
    max_gap: int = Field(default=16, ge=0, le=256)
    """Unused bytes allowed between two tags read as one item (an item costs 16 bytes of overhead)."""
    breaker_failures: int = Field(default=3, ge=1)
    """Consecutive failed polls or connects that open the circuit breaker."""
    breaker_reset_s: float = Field(default=10.0, gt=0)
    """How long the breaker stays open before one probe is let through."""

    @model_validator(mode="before")
    @classmethod
    def _default_rack_slot(cls, data: Any) -> Any:
        if isinstance(data, dict):
            keys = ("rack", "slot", "local_tsap", "remote_tsap")
            if all(data.get(k) is None for k in keys):
                data = {**data, "rack": 0, "slot": 1}
        return data

    @field_validator("local_tsap", "remote_tsap")
    @classmethod
    def _tsap(cls, v: str | None) -> str | None:
        return None if v is None else f"0x{parse_tsap(v):04X}"

    @model_validator(mode="after")
    def _consistent(self) -> S7Connection:
        rack_slot = self.rack is not None or self.slot is not None
        tsap = self.local_tsap is not None or self.remote_tsap is not None
        if rack_slot and tsap:
            given = ", ".join(
                f"{k}={getattr(self, k)!r}"
                for k in ("rack", "slot", "local_tsap", "remote_tsap")
                if getattr(self, k) is not None
            )
            raise ValueError(f"give either rack/slot or local_tsap/remote_tsap, not both (got {given})")
        if rack_slot and (self.rack is None or self.slot is None):
            raise ValueError(f"rack and slot go together (got rack={self.rack!r}, slot={self.slot!r})")
        if tsap and (self.local_tsap is None or self.remote_tsap is None):
            raise ValueError(
                f"local_tsap and remote_tsap go together "
                f"(got local_tsap={self.local_tsap!r}, remote_tsap={self.remote_tsap!r})"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s ({self.reconnect_min_s})"
            )
        return self

    @property
    def local_tsap_value(self) -> int:
        """The local TSAP as an integer (0x0100, a PG connection, for rack/slot addressing)."""
        return 0x0100 if self.local_tsap is None else parse_tsap(self.local_tsap)

    @property
    def remote_tsap_value(self) -> int:
        """The remote TSAP as an integer: ``0x0100 | rack << 5 | slot`` for rack/slot addressing."""
        if self.remote_tsap is not None:
            return parse_tsap(self.remote_tsap)
        assert self.rack is not None and self.slot is not None
        return 0x0100 | self.rack << 5 | self.slot


class S7TagAddress(_Frozen):
    """Where one tag lives and what it holds: ``address`` in S7 notation (``DB1.DBD20``, ``M10.3``,
    ``IW4``, ...), ``data_type``, and ``length`` (declared max length) for ``STRING``."""

    address: str = Field(min_length=1)
    data_type: DataType
    length: int | None = None
    _parsed: S7Address = PrivateAttr()

    @model_validator(mode="after")
    def _parse(self) -> S7TagAddress:
        self._parsed = parse_address(self.address, self.data_type, self.length)
        return self

    @property
    def parsed(self) -> S7Address:
        return self._parsed


@dataclass(frozen=True, slots=True)
class S7DevicePlan:
    """Everything a source partition needs to poll one S7 device.

    ``tags`` pairs each tag id (see :func:`core.batch.tag_id_for`) with its address; the points of
    every poll come out in this order.
    """

    device_id: str
    connection: S7Connection
    poll_interval_s: float
    tags: tuple[tuple[int, S7TagAddress], ...]

    def __post_init__(self) -> None:
        check_plan(self.device_id, self.poll_interval_s, (tag_id for tag_id, _ in self.tags))
