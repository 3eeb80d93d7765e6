"""Real Modbus devices polled by the event loop's schedule through device-local routing: one ready
queue per worker hands every device's batches to a Bytewax dataflow, a hot config change's item
comes out ahead of the first batch of its plan, and the flow drains on its stop event with nothing
left in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from connectors.devices import DeviceSource
from connectors.modbus.config import ModbusDevicePlan, ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.polling import DeviceChange, PolledDevice
from core.batch import PointBatch
from core.quality import Quality
from dataflows.routing import WorkerLocalSource
from tests.connectors.modbus.modbus_testlib import plan_for

pytestmark = pytest.mark.integration

A = ModbusTagAddress


def test_worker_local_flow_reads_every_device_through_one_queue_and_drains(
    simulator: Callable[..., ModbusSimulator],
) -> None:
    tags = [A(table="holding", address=i, data_type="int16") for i in range(5)]
    devices = [SimulatedDevice(f"press-{u:02d}", u, [SimTag(t) for t in tags]) for u in range(1, 6)]
    sim = simulator(devices)
    for d in devices:
        for i, t in enumerate(tags):
            sim.set_value(d.device_id, t, d.unit_id * 100 + i)
    plans = [plan_for(d.device_id, sim.port, tags, unit_id=d.unit_id, poll_interval_s=0.05) for d in devices]
    stop = threading.Event()
    source = DeviceSource(plans, stop_event=stop)
    seen: list[Any] = []
    changed = threading.Event()
    wider = ModbusDevicePlan("press-01", plans[0].connection, 0.05, (*plans[0].tags, (999, tags[0])))

    def collect(item: Any) -> Any:
        seen.append(item)
        batches = [b for b in seen if isinstance(b, PointBatch)]
        if not changed.is_set() and len({b.device_id for b in batches}) == 5:
            changed.set()  # every device read once: change press-01's plan on the fly
            part = source.partition("press-01")
            assert part is not None
            part.request_change(
                DeviceChange(
                    "press-01", 2, wider, "config v2", device=PolledDevice("press-01", 0.05, "modbus")
                )
            )
        if (
            "config v2" in seen
            and sum(isinstance(b, PointBatch) for b in seen[seen.index("config v2") :]) >= 10
        ):
            stop.set()
        return item

    out: list[Any] = []
    flow = Dataflow("modbus_worker_group")
    items = op.map(
        "collect", op.input("in", flow, WorkerLocalSource(source, lambda p: p.split(":", 1)[1])), collect
    )
    op.output("out", items, TestingSink(out))
    t0 = time.monotonic()
    run_main(flow)  # returns once the worker's group drained after stop_event
    assert time.monotonic() - t0 < 30

    parts = [source.partition(d.device_id) for d in devices]
    assert len({id(p.poll_group) for p in parts if p is not None}) == 1  # one queue for the worker
    assert out == seen
    i = out.index("config v2")
    first_new = next(b for b in out[i:] if isinstance(b, PointBatch) and b.device_id == "press-01")
    assert first_new.tag_ids.tolist() == [100, 101, 102, 103, 104, 999]  # the new plan, after its item
    for b in out[:i]:
        if isinstance(b, PointBatch) and b.device_id == "press-01":
            assert b.tag_ids.tolist() == [100, 101, 102, 103, 104]
    for b in out:
        if isinstance(b, PointBatch):
            unit = int(b.device_id[-2:])
            assert b.quality.tolist() == [Quality.GOOD] * len(b)
            assert b.values.tolist()[:5] == [float(unit * 100 + k) for k in range(5)]
    stats = source.stats()
    assert set(stats) == {d.device_id for d in devices}
    for s in stats.values():
        assert s.polls == s.completed >= 1  # drained: nothing was left in flight
    assert sum(isinstance(b, PointBatch) for b in out) == sum(s.completed for s in stats.values())
