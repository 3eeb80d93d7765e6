"""S7Source in a real Bytewax dataflow, and write submission through its partition."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from connectors.s7.simulator import S7Simulator
from connectors.s7.source import S7Source
from core.batch import PointBatch
from core.quality import Quality
from tests.connectors.s7.s7_testlib import MIXED_TAGS, T, free_port, plan_for


def test_source_lists_one_partition_per_device() -> None:
    p1 = plan_for("a", 1102, MIXED_TAGS[:1])
    p2 = plan_for("b", 1102, MIXED_TAGS[:1])
    assert S7Source([p1, p2]).list_parts() == ["s7:a", "s7:b"]
    with pytest.raises(ValueError, match="device id 'a' appears twice"):
        S7Source([p1, p1])


@pytest.mark.integration
def test_dataflow_reads_simulated_cpus(simulator: Callable[..., S7Simulator]) -> None:
    tags = [T(f"DB1.DBW{2 * i}", "INT") for i in range(10)] + [T("M0.1", "BOOL")]
    sims = [simulator(dbs={1: 64}) for _ in range(2)]
    for n, sim in enumerate(sims):
        for i in range(10):
            sim.set_value(f"DB1.DBW{2 * i}", n * 100 + i)
        sim.set_value("M0.1", True)
    plans = [plan_for(f"cpu-{n}", sim.port, tags, poll_interval_s=0.05) for n, sim in enumerate(sims)]
    plans.append(plan_for("offline", free_port(), tags[:2], poll_interval_s=0.05))

    stop = threading.Event()
    seen: list[PointBatch] = []
    source = S7Source(plans, stop_event=stop)

    def collect(batch: PointBatch) -> PointBatch:
        seen.append(batch)
        online = {b.device_id for b in seen if b.device_id != "offline"}
        if len(online) == 2 and sum(b.device_id == "offline" for b in seen) >= 2 and len(seen) >= 10:
            stop.set()
        return batch

    out: list[PointBatch] = []
    flow = Dataflow("s7_test")
    op.output("out", op.map("collect", op.input("in", flow, source), collect), TestingSink(out))
    t0 = time.monotonic()
    run_main(flow)  # returns once every partition drained after stop_event
    assert time.monotonic() - t0 < 30

    assert len(out) == len(seen) >= 10
    for b in out:
        if b.device_id == "offline":
            assert b.quality.tolist() == [Quality.COMM_ERROR] * 2
            continue
        n = int(b.device_id[-1])
        assert b.quality.tolist() == [Quality.GOOD] * 11
        assert b.values.tolist() == [float(n * 100 + i) for i in range(10)] + [1.0]
    stats = source.stats()
    assert set(stats) == {"cpu-0", "cpu-1", "offline"}
    for s in stats.values():
        assert s.polls == s.completed


@pytest.mark.integration
def test_writes_go_through_the_partition_connection(
    simulator: Callable[..., S7Simulator], wait_for: Callable[..., object]
) -> None:
    sim = simulator(dbs={1: 64})
    plan = plan_for("cpu", sim.port, [T("DB1.DBD0", "REAL"), T("Q0.1", "BOOL")], poll_interval_s=0.05)
    source = S7Source([plan])
    part = source.build_part("in", "s7:cpu", None)
    got: list[PointBatch] = []
    try:
        source.submit_write("cpu", 100, 12.5).result(5)
        source.submit_write("cpu", 101, True).result(5)
        assert sim.get_value("DB1.DBD0", "REAL") == 12.5 and sim.get_value("Q0.1", "BOOL") == 1.0

        def polled() -> bool:
            got.extend(part.next_batch())
            return bool(got) and bool(np.all(got[-1].quality == Quality.GOOD))

        wait_for(polled, what="a good poll")
        assert got[-1].values.tolist() == [12.5, 1.0]
        assert part.stats.client.connects == 1  # one connection for writes and polls
    finally:
        part.close()
