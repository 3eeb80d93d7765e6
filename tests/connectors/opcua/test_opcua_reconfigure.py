"""A hot plan change on a live OPC UA client: poll mode reads the new nodes, subscribe mode replaces
its subscription, both on the open session."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectors.opcua.client import OpcUaDeviceClient
from connectors.opcua.config import OpcUaTagAddress
from connectors.opcua.simulator import OpcUaSimulator
from core.quality import Quality
from tests.connectors.opcua.opcua_testlib import plan, run

pytestmark = pytest.mark.integration


def test_poll_mode_reads_the_new_nodes_on_the_same_session(sim: OpcUaSimulator) -> None:
    sim.set_value("Line1.Temp", 50.5)
    sim.set_value("Line1.Level", 3.0)
    first = plan("press", sim.endpoint, [sim.node_id("Line1.Temp")])
    second = plan("press", sim.endpoint, [sim.node_id("Line1.Level"), sim.node_id("Line1.Temp")])

    async def go() -> None:
        client = OpcUaDeviceClient(first, metrics=False)
        try:
            b = await client.poll()
            assert b.values.tolist() == [50.5]
            session = client.session
            await client.reconfigure(second)
            b = await client.poll()
            assert b.tag_ids.tolist() == [1, 2] and b.values.tolist() == [3.0, 50.5]
            assert b.quality.tolist() == [Quality.GOOD] * 2
            assert client.session is session and client.stats.connects == 1
        finally:
            await client.close()

    run(go())


def test_subscribe_mode_replaces_the_subscription_on_the_same_session(sim: OpcUaSimulator) -> None:
    sim.set_value("Line1.Level", 10.0)
    sim.set_value("Line1.Count", 1)
    level = OpcUaTagAddress(node_id=sim.node_id("Line1.Level"), queue_size=10)
    count = OpcUaTagAddress(node_id=sim.node_id("Line1.Count"), queue_size=10)
    first = plan("press", sim.endpoint, [level], mode="subscribe", publishing_interval_ms=50)
    second = plan("press", sim.endpoint, [count, level], mode="subscribe", publishing_interval_ms=50)

    async def until(client: OpcUaDeviceClient, tag: int, value: float) -> None:
        deadline = time.monotonic() + 10
        while True:
            b = await client.poll()
            if any(
                t == tag and v == value for t, v in zip(b.tag_ids.tolist(), b.values.tolist(), strict=True)
            ):
                return
            assert time.monotonic() < deadline, "the value did not arrive"
            await asyncio.sleep(0.05)

    async def go() -> None:
        client = OpcUaDeviceClient(first, metrics=False)
        try:
            await until(client, 1, 10.0)
            session = client.session
            await client.reconfigure(second)
            await until(
                client, 1, 1.0
            )  # Count is tag 1 now: its initial value comes with the new subscription
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: sim.set_value("Line1.Level", 12.0))
            await until(client, 2, 12.0)
            assert client.session is session and client.stats.connects == 1
            assert client.stats.subscriptions_created == 2
        finally:
            await client.close()

    run(go())
