"""Fault injection: the server goes away and comes back (poll and subscribe mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from connectors.opcua.client import OpcUaDeviceClient
from connectors.opcua.simulator import OpcUaSimulator
from core.quality import Quality
from tests.connectors.opcua.opcua_testlib import VARIABLES, plan, run

pytestmark = pytest.mark.integration

FAST = {
    "timeout_s": 0.5,
    "reconnect_min_s": 0.05,
    "reconnect_max_s": 0.2,
    "breaker_failures": 2,
    "breaker_reset_s": 0.3,
    "watchdog_interval_s": 0.2,
}


async def poll_until(
    client: OpcUaDeviceClient, cond: Callable[[list[int], list[float]], bool], timeout: float = 15.0
) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        b = await client.poll()
        q, v = b.quality.tolist(), b.values.tolist()
        if cond(q, v):
            return q
        assert time.monotonic() < deadline, f"condition not met; last qualities {q}, stats {client.stats}"
        await asyncio.sleep(0.05)


def test_poll_mode_outage_opens_the_breaker_and_recovers(make_sim: Callable[..., OpcUaSimulator]) -> None:
    sim = make_sim(VARIABLES)
    p = plan("press", sim.endpoint, [sim.node_id("Line1.Temp"), sim.node_id("Line1.Count")], **FAST)

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        loop = asyncio.get_running_loop()
        try:
            await poll_until(client, lambda q, v: q == [Quality.GOOD] * 2)
            await loop.run_in_executor(None, sim.outage)
            await poll_until(client, lambda q, v: q == [Quality.COMM_ERROR] * 2)
            await poll_until(client, lambda q, v: client.stats.breaker_state == "open")
            assert client.stats.breaker_opened >= 1 and client.stats.connect_failures >= 1
            await loop.run_in_executor(None, sim.restore)
            await loop.run_in_executor(None, lambda: sim.set_value("Line1.Count", 77))
            await poll_until(client, lambda q, v: q == [Quality.GOOD] * 2 and v[1] == 77.0)
            s = client.stats
            assert s.reconnects == 1 and s.breaker_state == "closed" and s.breaker_open_polls >= 1
        finally:
            await client.close()

    run(go())


def test_subscribe_mode_outage_recreates_the_subscription(make_sim: Callable[..., OpcUaSimulator]) -> None:
    sim = make_sim(VARIABLES)
    p = plan(
        "press",
        sim.endpoint,
        [sim.node_id("Line1.Count")],
        mode="subscribe",
        publishing_interval_ms=50,
        **FAST,
    )

    async def go() -> None:
        client = OpcUaDeviceClient(p, metrics=False)
        loop = asyncio.get_running_loop()
        try:
            await poll_until(client, lambda q, v: q == [Quality.GOOD] and v == [7.0])
            await loop.run_in_executor(None, sim.outage)
            await poll_until(client, lambda q, v: Quality.COMM_ERROR in q)
            await loop.run_in_executor(None, sim.restore)
            await loop.run_in_executor(None, lambda: sim.set_value("Line1.Count", 8))
            await poll_until(client, lambda q, v: 8.0 in v)
            s = client.stats
            assert s.subscriptions_created == 2 and s.reconnects == 1
        finally:
            await client.close()

    run(go())
