"""Helpers of the S7 connector tests (a module of its own: test files import it by name)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.s7.config import S7Connection, S7DevicePlan, S7TagAddress
from nexus.embedded import free_port  # noqa: F401 - re-exported for the tests


def T(address: str, data_type: str, length: int | None = None) -> S7TagAddress:  # noqa: N802
    return S7TagAddress(address=address, data_type=data_type, length=length)  # type: ignore[arg-type]


MIXED_TAGS: tuple[S7TagAddress, ...] = (
    T("DB1.DBD20", "REAL"),
    T("DB1.DBW6", "INT"),
    T("DB1.DBD8", "DINT"),
    T("DB1.DBX0.3", "BOOL"),
    T("DB1.DBX0.4", "BOOL"),
    T("DB1.DBB4", "BYTE"),
    T("DB1.DBW2", "WORD"),
    T("DB1.DBD12", "DWORD"),
    T("DB1.DBB24", "LREAL"),
    T("DB1.DBB40", "STRING", 16),
    T("MD10", "REAL"),
    T("M2.7", "BOOL"),
    T("MW4", "INT"),
    T("IB2", "BYTE"),
    T("I0.1", "BOOL"),
    T("QW2", "WORD"),
    T("Q0.0", "BOOL"),
)
MIXED_VALUES: tuple[float | str, ...] = (
    1.5,
    -2,
    -100000,
    1,
    0,
    200,
    65000,
    4_000_000_000,
    -273.125,
    "hello S7",
    3.25,
    1,
    -300,
    17,
    1,
    4242,
    1,
)


def plan_for(
    device_id: str,
    port: int,
    tags: Sequence[S7TagAddress],
    *,
    poll_interval_s: float = 0.1,
    first_id: int = 100,
    **conn: Any,
) -> S7DevicePlan:
    settings: dict[str, Any] = {
        "timeout_s": 0.5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "breaker_failures": 2,
        "breaker_reset_s": 0.3,
        **conn,
    }
    connection = S7Connection(host="127.0.0.1", port=port, **settings)
    return S7DevicePlan(
        device_id, connection, poll_interval_s, tuple((first_id + i, t) for i, t in enumerate(tags))
    )
