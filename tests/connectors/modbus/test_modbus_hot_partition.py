"""A polling partition applies a hot config change at its next poll boundary: the config item
comes out ahead of the first batch read with the new plan, the schedule takes the new interval,
and the device keeps its connection (a real Modbus client and server; a fake clock)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import ModbusDevicePlan
from connectors.modbus.simulator import ModbusSimulator
from connectors.polling import DeviceChange, PolledDevice, PollingPartition
from core.batch import PointBatch
from tests.connectors.modbus.modbus_testlib import MIXED_TAGS, plan_for

pytestmark = pytest.mark.integration


def next_items(part: PollingPartition, clock: list[float]) -> list[Any]:
    """Move the fake clock to the next slot, then call next_batch until something comes out."""
    clock[0] = part._schedule.next_deadline
    deadline = time.monotonic() + 10
    while True:
        out = part.next_batch()
        if out:
            return out
        assert time.monotonic() < deadline, "the poll did not complete"
        time.sleep(0.005)


def test_a_change_is_applied_at_the_next_poll_boundary(mixed_sim: ModbusSimulator) -> None:
    clock = [1000.0]
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS[:1], poll_interval_s=1.0)
    part = PollingPartition(
        PolledDevice("plc", 1.0, "modbus"),
        ModbusDeviceClient(plan, metrics=False),
        protocol="modbus",
        stop_event=None,
        wake_slack_s=0.002,
        close_timeout_s=2.0,
        clock=lambda: clock[0],
    )
    applied: list[int] = []
    try:
        (first,) = next_items(part, clock)
        assert isinstance(first, PointBatch) and first.tag_ids.tolist() == [100]
        accepted = mixed_sim.connections_accepted
        tags = ((100, MIXED_TAGS[0]), (101, MIXED_TAGS[1]))
        new_plan = ModbusDevicePlan("plc", plan.connection, 0.25, tags)

        def change(version: int, item: str) -> DeviceChange:
            return DeviceChange(
                "plc",
                version,
                new_plan,
                item,
                device=PolledDevice("plc", 0.25, "modbus"),
                on_applied=applied.append,
            )

        part.request_change(change(3, "config v3"))
        part.request_change(change(2, "config v2"))  # older than the one waiting: dropped
        assert applied == []  # nothing happens before the next poll boundary
        out = next_items(part, clock)
        assert out[0] == "config v3"  # ahead of the first batch of the new plan
        batch = out[1] if len(out) > 1 else next_items(part, clock)[0]
        assert isinstance(batch, PointBatch) and batch.tag_ids.tolist() == [100, 101]
        assert applied == [3]
        assert part._schedule.interval == 0.25 and part.stats.interval_s == 0.25
        assert mixed_sim.connections_accepted == accepted
        with pytest.raises(ValueError, match="sent to"):
            part.request_change(DeviceChange("other", 4, new_plan, "x", device=PolledDevice("other", 1.0)))
    finally:
        part.close()
