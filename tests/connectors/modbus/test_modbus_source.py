"""ModbusSource: the schedule, the non-blocking partition contract, and a real Bytewax dataflow."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.modbus.source import ModbusSource
from connectors.polling import PollSchedule, schedule_offset
from core.batch import PointBatch
from core.quality import Quality
from tests.connectors.modbus.modbus_testlib import MIXED_TAGS, MIXED_VALUES, free_port, plan_for

A = ModbusTagAddress


def test_schedule_has_no_drift_and_counts_missed_slots() -> None:
    s = PollSchedule(origin=10.25, interval=0.5, now=10.0)
    assert s.next_deadline == 10.25
    assert [s.take(t) for t in (10.0, 10.25, 10.3, 10.76)] == [0, 1, 0, 1]
    assert s.next_deadline == 11.25
    assert s.take(13.0) == 4  # 11.25, 11.75, 12.25, 12.75
    assert s.next_deadline == 13.25
    late = [10.25 + 0.5 * k for k in range(1, 1000)]  # deadlines stay on the grid however often we look
    s = PollSchedule(origin=10.25, interval=0.5, now=10.25)
    for t in late:
        s.take(t + 0.001)
    assert s.next_deadline == pytest.approx(10.25 + 0.5 * 1000)


def test_schedule_offsets_spread_devices() -> None:
    offsets = {schedule_offset(f"press-{i:02d}", 1.0) for i in range(50)}
    assert len(offsets) == 50 and all(0 <= o < 1 for o in offsets)


def test_source_validation_and_parts() -> None:
    p1 = plan_for("a", 1502, MIXED_TAGS[:1])
    p2 = plan_for("b", 1502, MIXED_TAGS[:1])
    assert ModbusSource([p1, p2]).list_parts() == ["modbus:a", "modbus:b"]
    with pytest.raises(ValueError, match="device id 'a' appears twice"):
        ModbusSource([p1, p1])
    with pytest.raises(ValueError, match="`wake_slack_s` must be > 0"):
        ModbusSource([p1], wake_slack_s=0)


def drive(
    part: Callable[[], list[PointBatch]],
    awake: Callable[[], datetime | None],
    until: Callable[[], bool],
    timeout: float = 10.0,
) -> list[float]:
    """Emulate Bytewax: call next_batch whenever next_awake says; return each call's duration."""
    durations: list[float] = []
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached before the deadline")
        t0 = time.perf_counter()
        part()
        durations.append(time.perf_counter() - t0)
        wake = awake()
        if wake is not None:
            assert wake.tzinfo is not None
            time.sleep(max(0.0, min(0.05, (wake - datetime.now(UTC)).total_seconds())))
    return durations


@pytest.mark.integration
def test_partition_never_blocks_and_skips_slots_while_a_poll_is_in_flight(
    mixed_sim: ModbusSimulator,
) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS, poll_interval_s=0.05, timeout_s=0.5)
    source = ModbusSource([plan])
    part = source.build_part("in", "modbus:plc", None)
    got: list[PointBatch] = []
    try:
        mixed_sim.set_stall("plc", 0.3)  # each request answers after 0.3 s: 4 requests, 1.2 s per poll
        in_flight_returns = 0

        def next_batch() -> list[PointBatch]:
            nonlocal in_flight_returns
            got.extend(part.next_batch())
            s = part.stats
            in_flight_returns += s.polls > s.completed  # returned while a poll is still running
            return []

        drive(next_batch, part.next_awake, lambda: part.stats.skipped_polls >= 5 and len(got) >= 1)
        # next_batch returns without waiting for the stalled poll: many calls came back with a poll in flight
        assert in_flight_returns >= 5, in_flight_returns
        assert part.stats.polls == part.stats.completed + 1 or part.stats.polls == part.stats.completed
        mixed_sim.set_stall("plc", None)
        drive(
            lambda: got.extend(part.next_batch()) or [],
            part.next_awake,
            lambda: len(got) >= 2 and bool(np.all(got[-1].quality == Quality.GOOD)),
        )
        assert got[-1].values.tolist() == [float(v) for v in MIXED_VALUES]
    finally:
        part.close()
    assert not part._thread.is_alive()


@pytest.mark.integration
def test_dataflow_reads_simulated_devices(simulator: Callable[..., ModbusSimulator]) -> None:
    tags = [A(table="holding", address=i, data_type="int16") for i in range(10)]
    devices = [SimulatedDevice(f"press-{u:02d}", u, [SimTag(t) for t in tags]) for u in (1, 2, 3)]
    sim = simulator(devices)
    for d in devices:
        for i, t in enumerate(tags):
            sim.set_value(d.device_id, t, d.unit_id * 100 + i)
    plans = [plan_for(d.device_id, sim.port, tags, unit_id=d.unit_id, poll_interval_s=0.05) for d in devices]
    plans.append(plan_for("offline", free_port(), tags[:2], poll_interval_s=0.05))  # nothing listens

    stop = threading.Event()
    seen: list[PointBatch] = []
    source = ModbusSource(plans, stop_event=stop)

    def collect(batch: PointBatch) -> PointBatch:
        seen.append(batch)
        online = {b.device_id for b in seen if b.device_id != "offline"}
        if len(online) == 3 and sum(b.device_id == "offline" for b in seen) >= 2 and len(seen) >= 12:
            stop.set()
        return batch

    out: list[PointBatch] = []
    flow = Dataflow("modbus_test")
    batches = op.map("collect", op.input("in", flow, source), collect)
    op.output("out", batches, TestingSink(out))
    t0 = time.monotonic()
    run_main(flow)  # returns once every partition drained after stop_event
    assert time.monotonic() - t0 < 30

    assert len(out) == len(seen) >= 12
    for b in out:
        if b.device_id == "offline":
            assert b.quality.tolist() == [Quality.COMM_ERROR] * 2
            continue
        unit = int(b.device_id[-2:])
        assert b.quality.tolist() == [Quality.GOOD] * 10
        assert b.values.tolist() == [float(unit * 100 + i) for i in range(10)]
        assert b.tag_ids.tolist() == [100 + i for i in range(10)]
    stats = source.stats()
    assert set(stats) == {"press-01", "press-02", "press-03", "offline"}
    for s in stats.values():
        assert s.polls == s.completed  # drained: nothing was left in flight
    assert stats["offline"].failures == stats["offline"].completed


@pytest.mark.integration
def test_writes_go_through_the_partition_that_polls(simulator: Callable[..., ModbusSimulator]) -> None:
    tags = [A(table="holding", address=0, data_type="int16"), A(table="coil", address=1, data_type="bool")]
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in tags])])
    plan = plan_for("plc", sim.port, tags, poll_interval_s=0.05)
    source = ModbusSource([plan])
    part = source.build_part("in", "modbus:plc", None)
    got: list[PointBatch] = []
    try:
        source.submit_write("plc", plan.tags[0][0], -42).result(5)
        part.submit_write(plan.tags[1][0], True).result(5)
        drive(
            lambda: got.extend(part.next_batch()) or [],
            part.next_awake,
            lambda: bool(got) and got[-1].values.tolist() == [-42.0, 1.0],
        )
        client = part.stats.client
        assert client.connects == 1 and client.writes == 2  # one connection for polls and writes
    finally:
        part.close()
