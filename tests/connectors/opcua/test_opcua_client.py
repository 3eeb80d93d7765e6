"""The device client against asyncua's real server on loopback: values, timestamps, qualities, writes, browse."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time

import pytest

from connectors.opcua.client import OpcUaDeviceClient, browse_server
from connectors.opcua.config import OpcUaConnection, OpcUaTagAddress
from connectors.opcua.simulator import OpcUaSimulator
from connectors.polling import WriteFailed, WriteRejected
from core.quality import Quality
from tests.connectors.opcua.opcua_testlib import plan, run

pytestmark = pytest.mark.integration


def test_poll_reads_values_source_timestamps_and_qualities(sim: OpcUaSimulator) -> None:
    src = dt.datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    sim.set_value("Line1.Temp", 72.25, source_ts=src)
    sim.set_value("Line1.Running", True)
    sim.set_value("Line1.Recipe", "PX-9")
    sim.set_value("Line1.Serial", 4_000_000_000)
    names = ["Line1.Temp", "Line1.Running", "Line1.Recipe", "Line1.Serial"]
    p = plan("press", sim.endpoint, [sim.node_id(n) for n in names] + ["ns=1;s=No.Such.Node"])

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        before = time.time_ns()
        try:
            b = await client.poll()
        finally:
            await client.close()
        assert b.device_id == "press"
        assert b.tag_ids.tolist() == [1, 2, 3, 4, 5]
        assert b.quality.tolist() == [Quality.GOOD] * 4 + [Quality.CONFIG_ERROR]
        assert b.values[0] == 72.25 and b.values[1] == 1.0 and b.values[3] == 4_000_000_000.0
        assert math.isnan(b.values[2]) and b.text == {2: "PX-9"}
        assert math.isnan(b.values[4])
        assert b.ts_ns[0] == 1_714_564_800_250_000_000  # the SourceTimestamp, not the poll time
        assert all(before - 5_000_000_000 < t <= time.time_ns() for t in b.ts_ns[1:4].tolist())
        s = client.stats
        assert s.polls == 1 and s.config_errors == 1 and s.comm_errors == 0 and s.connects == 1

    run(go())


def test_status_codes_map_to_qualities(sim: OpcUaSimulator) -> None:
    sim.set_status("Line1.Pressure", "BadSensorFailure")
    sim.set_status("Line1.Level", "UncertainLastUsableValue", 49.5)
    p = plan("press", sim.endpoint, [sim.node_id("Line1.Pressure"), sim.node_id("Line1.Level")])

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        try:
            b = await client.poll()
            assert b.quality.tolist() == [Quality.DEVICE_EXCEPTION, Quality.UNCERTAIN]
            assert math.isnan(b.values[0]) and b.values[1] == 49.5
            sim.set_value("Line1.Pressure", 2.5)  # the device recovers: the same session reads Good
            b = await client.poll()
            assert b.quality.tolist() == [Quality.GOOD, Quality.UNCERTAIN] and b.values[0] == 2.5
            assert client.stats.device_exceptions == 1 and client.stats.connects == 1
        finally:
            await client.close()

    run(go())


def test_subscription_delivers_each_change_with_its_timestamp_and_server_deadband(
    sim: OpcUaSimulator,
) -> None:
    sim.set_value("Line1.Level", 10.0)
    sim.set_value("Line1.Count", 1)
    tags = [
        OpcUaTagAddress(
            node_id=sim.node_id("Line1.Level"), sampling_interval_ms=0, queue_size=10, deadband_abs=1.0
        ),
        OpcUaTagAddress(node_id=sim.node_id("Line1.Count"), queue_size=10),
        OpcUaTagAddress(node_id="ns=1;s=No.Such.Node"),
    ]
    p = plan("press", sim.endpoint, tags, mode="subscribe", publishing_interval_ms=50)

    async def collect(
        client: OpcUaDeviceClient, want: int, timeout: float = 10.0
    ) -> list[tuple[int, float, int]]:
        got: list[tuple[int, float, int]] = []
        deadline = time.monotonic() + timeout
        while len(got) < want:
            assert time.monotonic() < deadline, f"only {got} arrived"
            b = await client.poll()
            got += list(zip(b.tag_ids.tolist(), b.values.tolist(), b.quality.tolist(), strict=True))
            await asyncio.sleep(0.05)
        return got

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        try:
            first = await collect(client, 3)  # initial values + the refused monitored item
            by_tag = {t: (v, q) for t, v, q in first}
            assert by_tag[1] == (10.0, Quality.GOOD) and by_tag[2] == (1.0, Quality.GOOD)
            assert by_tag[3][1] == Quality.CONFIG_ERROR
            t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
            loop = asyncio.get_running_loop()
            for k, v in enumerate((10.5, 10.9, 12.0, 12.5, 9.0)):  # 10.5, 10.9 and 12.5 are inside the band
                ts = t0 + dt.timedelta(seconds=k)
                await loop.run_in_executor(
                    None, lambda v=v, ts=ts: sim.set_value("Line1.Level", v, source_ts=ts)
                )
            for v in (2, 3):
                await loop.run_in_executor(None, lambda v=v: sim.set_value("Line1.Count", v))
            changes = await collect(client, 4)
            await asyncio.sleep(0.3)
            b = await client.poll()
            changes += list(zip(b.tag_ids.tolist(), b.values.tolist(), b.quality.tolist(), strict=True))
            level = [v for t, v, _ in changes if t == 1]
            count = [v for t, v, _ in changes if t == 2]
            assert level == [12.0, 9.0] and count == [2.0, 3.0], changes
        finally:
            await client.close()
        s = client.stats
        assert s.subscriptions_created == 1 and s.dropped_changes == 0 and s.changes >= 7

    run(go())


def test_subscription_change_timestamps_are_source_timestamps(sim: OpcUaSimulator) -> None:
    p = plan(
        "press", sim.endpoint, [sim.node_id("Line1.Serial")], mode="subscribe", publishing_interval_ms=50
    )
    src = dt.datetime(2023, 3, 4, 5, 6, 7, tzinfo=dt.UTC)

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        try:
            await client.poll()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: sim.set_value("Line1.Serial", 99, source_ts=src)
            )
            deadline = time.monotonic() + 10
            while True:
                b = await client.poll()
                if 99.0 in b.values.tolist():
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            i = b.values.tolist().index(99.0)
            assert b.ts_ns[i] == int(src.timestamp()) * 1_000_000_000 and b.quality[i] == Quality.GOOD
        finally:
            await client.close()

    run(go())


def test_write_changes_the_server_value_and_refuses_what_does_not_fit(sim: OpcUaSimulator) -> None:
    sim.set_values({"Line1.Count": 7, "Line1.Small": 3, "Line1.Speed": 1.25, "Line1.Running": True})
    names = [
        "Line1.Count",
        "Line1.Small",
        "Line1.Speed",
        "Line1.Running",
        "Line1.Recipe",
        "Line1.Temp",
        "Line1.Serial",
    ]
    p = plan("press", sim.endpoint, [sim.node_id(n) for n in names], writable=[1, 2, 3, 4, 5, 6])

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        try:
            await client.write(1, 42)
            await client.write(2, -5.0)  # an integral float fits an Int16
            await client.write(3, 2.5)
            await client.write(4, False)
            await client.write(5, "PX-10")
            assert [sim.get_value(n) for n in names[:5]] == [42, -5, 2.5, False, "PX-10"]
            refused = {
                (1, "abc"): "is not a number",
                (1, 1.5): "is not an integer",
                (2, 40_000): "out of range for Int16",
                (4, 2): "is not a boolean",
                (5, 3): "is not a string",
                (6, 1.0): "read-only",  # configured writable, read-only on the server
                (7, 1): "not writable",  # not in the plan's writable tags
                (99, 1): "no such tag",
            }
            for (tag, value), why in refused.items():
                with pytest.raises(WriteRejected, match=why):
                    await client.write(tag, value)
            assert [sim.get_value(n) for n in names[:5]] == [42, -5, 2.5, False, "PX-10"]
            assert sim.get_value("Line1.Temp") != 1.0
            s = client.stats
            assert s.writes == 5 + 6 and s.write_failures == 6  # tags 7 and 99 fail before counting
        finally:
            await client.close()

    run(go())


def test_write_to_an_unreachable_device_fails(make_sim: object) -> None:
    p = plan("gone", "opc.tcp://127.0.0.1:9", ["ns=1;s=X"], writable=[1], timeout_s=0.5)

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        with pytest.raises(WriteFailed, match="unreachable"):
            await client.write(1, 1.0)
        await client.close()

    run(go())


def test_browse_lists_the_variables(sim: OpcUaSimulator) -> None:
    found = run(browse_server(OpcUaConnection(endpoint=sim.endpoint, timeout_s=2.0)))
    by_path = {v.browse_path: v for v in found}
    assert set(by_path) == {f"Simulator/{n}" for n in sim.variables}
    temp = by_path["Simulator/Line1.Temp"]
    assert temp.node_id == sim.node_id("Line1.Temp") and temp.data_type == "Double" and not temp.writable
    assert by_path["Simulator/Line1.Count"].data_type == "Int32" and by_path["Simulator/Line1.Count"].writable
    assert by_path["Simulator/Line1.Recipe"].data_type == "String"

    async def through_client() -> list[str]:
        client = OpcUaDeviceClient(plan("press", sim.endpoint, [sim.node_id("Line1.Temp")]), metrics=False)
        try:
            return [
                v.node_id for v in await client.browse(root=f"ns={sim.node_id('Line1.Temp')[3]};s=Simulator")
            ]
        finally:
            await client.close()

    assert sorted(run(through_client())) == sorted(sim.node_id(n) for n in sim.variables)
