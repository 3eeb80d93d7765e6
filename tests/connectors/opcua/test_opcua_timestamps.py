"""Issue 12.1: OPC UA source timestamps go through the one timestamp rule (core.timestamps)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from prometheus_client import REGISTRY

from connectors.opcua.client import OpcUaDeviceClient
from connectors.opcua.simulator import OpcUaSimulator
from core.quality import Quality
from core.timestamps import TimestampWindow
from tests.connectors.opcua.opcua_testlib import plan, run

pytestmark = pytest.mark.integration


def replaced(device: str, reason: str) -> float:
    labels = {"source": f"opcua:{device}", "reason": reason}
    return REGISTRY.get_sample_value("nexus_timestamps_replaced_total", labels) or 0.0


@pytest.mark.parametrize(
    ("source_ts", "reason"),
    [
        (dt.datetime(1950, 3, 1, tzinfo=dt.UTC), "too_old"),
        (dt.datetime(9999, 12, 31, tzinfo=dt.UTC), "future"),  # beyond int64 ns: crashed the poll
    ],
)
def test_source_timestamp_outside_the_window_becomes_the_receive_time(
    sim: OpcUaSimulator, source_ts: dt.datetime, reason: str
) -> None:
    device = f"press-{reason}"
    sim.set_value("Line1.Temp", 72.25, source_ts=source_ts)
    sim.set_value("Line1.Level", 10.5, source_ts=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    p = plan(
        device,
        sim.endpoint,
        [sim.node_id("Line1.Temp"), sim.node_id("Line1.Level")],
        timestamps=TimestampWindow(max_past_s=86_400, max_future_s=60),
    )
    before_count = replaced(device, reason)

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        before = time.time_ns()
        try:
            b = await client.poll()
        finally:
            await client.close()
        assert b.values.tolist() == [72.25, 10.5]
        assert before <= b.ts_ns[0] <= time.time_ns(), "receive time instead of the source timestamp"
        assert b.ts_ns[1] < before, "a recent source timestamp is kept"
        assert b.quality.tolist() == [Quality.UNCERTAIN, Quality.GOOD]

    run(go())
    assert replaced(device, reason) - before_count == 1
