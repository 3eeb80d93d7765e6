"""ModbusDeviceClient against pymodbus's real server (the simulator) on a loopback port."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from core.batch import PointBatch
from core.quality import Quality
from tests.connectors.modbus.modbus_testlib import MIXED_TAGS, MIXED_VALUES, free_port, plan_for

pytestmark = pytest.mark.integration

T = TypeVar("T")
A = ModbusTagAddress


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def poll_until(
    client: ModbusDeviceClient, predicate: Callable[[PointBatch], bool], timeout: float = 10.0
) -> PointBatch:
    """Poll until ``predicate`` holds for a batch, failing the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.poll()
        if predicate(batch):
            return batch
        if time.monotonic() > deadline:
            pytest.fail(f"no poll satisfied the condition within {timeout} s; last: {batch.quality.tolist()}")
        await asyncio.sleep(0.02)


def all_good(batch: PointBatch) -> bool:
    return bool(np.all(batch.quality == Quality.GOOD))


def test_values_set_in_the_simulator_arrive_good(mixed_sim: ModbusSimulator) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS)

    async def go() -> tuple[PointBatch, int, int]:
        client = ModbusDeviceClient(plan, metrics=False)
        before = time.time_ns()
        batch = await client.poll()
        after = time.time_ns()
        await client.close()
        return batch, before, after

    batch, before, after = run(go())
    assert batch.device_id == "plc"
    assert batch.tag_ids.tolist() == [100 + i for i in range(len(MIXED_TAGS))]
    assert batch.quality.tolist() == [Quality.GOOD] * len(MIXED_TAGS)
    assert batch.values.tolist() == [float(v) for v in MIXED_VALUES]
    assert len(set(batch.ts_ns.tolist())) == 1 and before <= batch.ts_ns[0] <= after


def test_exception_response_marks_only_that_requests_tags(mixed_sim: ModbusSimulator) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS)
    is_input = np.array([t.table == "input" for t in MIXED_TAGS])

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        mixed_sim.set_exception("plc", "input", 5, 4)  # DEVICE_FAILURE inside the input-register request
        batch = await client.poll()
        assert (batch.quality[is_input] == Quality.DEVICE_EXCEPTION).all()
        assert np.isnan(batch.values[is_input]).all()
        assert (batch.quality[~is_input] == Quality.GOOD).all()
        assert batch.values[~is_input].tolist() == [
            float(v) for v, i in zip(MIXED_VALUES, is_input, strict=True) if not i
        ]
        assert client.stats.device_exceptions == 1 and client.stats.failures == 1
        assert client.connected  # an exception response is not a transport failure

        mixed_sim.set_exception("plc", "input", 5, None)
        assert all_good(await client.poll())

        mixed_sim.fail_next("plc", 4)  # the next request (holding registers come first) fails
        batch = await client.poll()
        is_holding = np.array([t.table == "holding" for t in MIXED_TAGS])
        assert (batch.quality[is_holding] == Quality.DEVICE_EXCEPTION).all()
        assert (batch.quality[~is_holding] == Quality.GOOD).all()
        await client.close()

    run(go())


def test_unknown_unit_id_is_a_device_exception(mixed_sim: ModbusSimulator) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS[:2], unit_id=9)

    async def go() -> PointBatch:
        client = ModbusDeviceClient(plan, metrics=False)
        try:
            return await client.poll()
        finally:
            await client.close()

    assert run(go()).quality.tolist() == [Quality.DEVICE_EXCEPTION] * 2


def test_stopped_server_gives_comm_error_then_polling_recovers(mixed_sim: ModbusSimulator) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS)

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        assert all_good(await client.poll())
        mixed_sim.stop()
        down = await poll_until(client, lambda b: bool(np.all(b.quality == Quality.COMM_ERROR)))
        assert np.isnan(down.values).all()
        assert not client.connected
        mixed_sim.start()
        up = await poll_until(client, all_good)
        assert up.values.tolist() == [float(v) for v in MIXED_VALUES]  # values survive the outage
        stats = client.stats
        assert stats.reconnects >= 1 and stats.failures >= 1 and stats.comm_errors >= 1
        await client.close()

    run(go())


def test_dropped_connection_is_reopened(mixed_sim: ModbusSimulator) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS[:3])

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        assert all_good(await client.poll())
        assert mixed_sim.drop_connections() == 1
        await poll_until(client, lambda b: all_good(b) and client.stats.reconnects == 1)
        await client.close()

    run(go())


def test_stalled_device_times_out_as_comm_error(mixed_sim: ModbusSimulator) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS, timeout_s=0.2)

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        assert all_good(await client.poll())  # connected: the next poll sends requests at once
        requests = len(client.read_plan.requests)
        assert requests > 1
        mixed_sim.set_stall("plc", 1.0)
        before = mixed_sim.request_count("plc")
        batch = await client.poll()
        # the first request times out; the rest of the poll is not attempted
        assert batch.quality.tolist() == [Quality.COMM_ERROR] * len(MIXED_TAGS)
        assert mixed_sim.request_count("plc") == before + 1
        assert client.stats.comm_errors == requests  # the timed-out one and those not attempted
        mixed_sim.set_stall("plc", None)
        await poll_until(client, all_good)
        await client.close()

    run(go())


def test_connection_refused_backs_off_without_io() -> None:
    port = free_port()  # nothing listens here
    plan = plan_for("ghost", port, MIXED_TAGS[:2], reconnect_min_s=30.0, reconnect_max_s=60.0)

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        first = await client.poll()
        assert first.quality.tolist() == [Quality.COMM_ERROR] * 2
        assert client.stats.connect_failures == 1
        second = await client.poll()  # inside the backoff window: answered at once, no connect attempt
        assert second.quality.tolist() == [Quality.COMM_ERROR] * 2
        stats = client.stats
        assert (stats.connect_failures, stats.backoff_polls, stats.polls, stats.failures) == (1, 1, 2, 2)
        assert client.retry_at - time.monotonic() > 25
        await client.close()

    run(go())


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    port = free_port()
    plan = plan_for(
        "ghost", port, MIXED_TAGS[:1], reconnect_min_s=1.0, reconnect_max_s=8.0, breaker_failures=100
    )
    now = [1000.0]

    async def go() -> list[float]:
        client = ModbusDeviceClient(plan, clock=lambda: now[0], rng=random.Random(4), metrics=False)
        delays = []
        for _ in range(7):
            await client.poll()  # a real, refused connect attempt
            delays.append(client.retry_at - now[0])
            now[0] = client.retry_at  # jump to the moment the next attempt is due
        await client.close()
        return delays

    delays = run(go())
    ceilings = [1, 2, 4, 8, 8, 8, 8]
    assert all(1.0 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert max(delays[3:]) > 4  # it does grow past the early ceilings


def test_short_and_non_finite_values() -> None:
    """A NaN float from the device is OUT_OF_RANGE, not GOOD."""
    tags = [A(table="holding", address=0, data_type="float32"), A(table="holding", address=2)]
    sim = ModbusSimulator("127.0.0.1", 0, [SimulatedDevice("d", 1, [SimTag(t) for t in tags])])
    with sim:
        sim.set_value("d", tags[0], math.nan)
        sim.set_value("d", tags[1], 5)
        plan = plan_for("d", sim.port, tags)

        async def go() -> PointBatch:
            client = ModbusDeviceClient(plan, metrics=False)
            try:
                return await client.poll()
            finally:
                await client.close()

        batch = run(go())
    assert batch.quality.tolist() == [Quality.OUT_OF_RANGE, Quality.GOOD]
    assert batch.values[1] == 5.0


def test_metrics_are_labelled_by_protocol_and_device(mixed_sim: ModbusSimulator) -> None:
    from prometheus_client import REGISTRY

    plan = plan_for("metered-plc", mixed_sim.port, MIXED_TAGS[:2])
    labels = {"protocol": "modbus", "device": "metered-plc"}

    async def go() -> None:
        client = ModbusDeviceClient(plan)
        await client.poll()
        await client.poll()
        await client.close()

    run(go())
    assert REGISTRY.get_sample_value("nexus_device_polls_total", {**labels, "result": "ok"}) == 2.0
    assert REGISTRY.get_sample_value("nexus_device_poll_seconds_count", labels) == 2.0
    assert REGISTRY.get_sample_value("nexus_device_poll_seconds_sum", labels) > 0  # type: ignore[operator]
    assert REGISTRY.get_sample_value("nexus_device_breaker_state", labels) == 0.0


def test_a_connection_reads_small_chunks_and_keeps_doing_so_after_a_reconnect(
    mixed_sim: ModbusSimulator,
) -> None:
    """asyncio's socket transport reads 256 KiB at a time (an ``mmap`` per poll above glibc's pinned
    threshold); the client's connections read ``RECV_BYTES``, the new one after a reconnect too."""
    from connectors.modbus.client import RECV_BYTES

    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS)

    async def go() -> tuple[int, int]:
        client = ModbusDeviceClient(plan, metrics=False)
        assert all_good(await client.poll())
        first = client._client.ctx.transport.max_size  # type: ignore[union-attr]
        assert mixed_sim.drop_connections() == 1
        batch = await poll_until(client, lambda b: all_good(b) and client.stats.reconnects == 1)
        assert batch.values.tolist() == [float(v) for v in MIXED_VALUES]
        second = client._client.ctx.transport.max_size  # type: ignore[union-attr]
        await client.close()
        return first, second

    assert run(go()) == (RECV_BYTES, RECV_BYTES)
    assert RECV_BYTES >= 260  # the largest Modbus TCP frame
