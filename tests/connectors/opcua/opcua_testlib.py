"""Helpers of the OPC UA connector tests (a module of its own: test files import it by name)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from connectors.opcua.config import OpcUaConnection, OpcUaDevicePlan, OpcUaTagAddress
from connectors.opcua.simulator import SimVariable
from core.timestamps import TimestampWindow

T = TypeVar("T")

VARIABLES: tuple[SimVariable, ...] = (
    SimVariable("Line1.Temp", "Double", 21.5),
    SimVariable("Line1.Speed", "Float", 1.25, writable=True),
    SimVariable("Line1.Count", "Int32", 7, writable=True),
    SimVariable("Line1.Small", "Int16", 3, writable=True),
    SimVariable("Line1.Running", "Boolean", True, writable=True),
    SimVariable("Line1.Recipe", "String", "PX-7", writable=True),
    SimVariable("Line1.Serial", "UInt32", 123456),
    SimVariable("Line1.Pressure", "Double", 1.0),
    SimVariable("Line1.Level", "Double", 50.0),
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


HISTORIC = TimestampWindow(max_past_s=100 * 365 * 86_400.0)
"""The tests set fixed source timestamps in 2023/2024: accept them (the default keeps a week)."""


def plan(
    device_id: str,
    endpoint: str,
    node_ids: Sequence[str | OpcUaTagAddress],
    *,
    poll_interval_s: float = 0.1,
    writable: Sequence[int] = (),
    timestamps: TimestampWindow = HISTORIC,
    **conn: Any,
) -> OpcUaDevicePlan:
    """A plan whose tag ids are 1, 2, 3, ... in the order of ``node_ids``."""
    conn.setdefault("timeout_s", 2.0)
    tags = tuple(
        (i + 1, a if isinstance(a, OpcUaTagAddress) else OpcUaTagAddress(node_id=a))
        for i, a in enumerate(node_ids)
    )
    return OpcUaDevicePlan(
        device_id,
        OpcUaConnection(endpoint=endpoint, **conn),
        poll_interval_s,
        tags,
        frozenset(writable),
        timestamps,
    )
