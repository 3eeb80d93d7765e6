"""OpcUaSource in a real Bytewax dataflow (poll and subscribe devices), stopped through stop_event."""

from __future__ import annotations

import threading
import time

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from connectors.opcua.config import OpcUaTagAddress
from connectors.opcua.simulator import OpcUaSimulator
from connectors.opcua.source import OpcUaSource
from core.batch import PointBatch
from core.quality import Quality
from tests.connectors.opcua.opcua_testlib import plan

pytestmark = pytest.mark.integration


def test_dataflow_reads_poll_and_subscribe_devices(sim: OpcUaSimulator) -> None:
    sim.set_values({"Line1.Temp": 21.5, "Line1.Count": 7, "Line1.Serial": 123456})
    polled = plan(
        "press", sim.endpoint, [sim.node_id("Line1.Temp"), sim.node_id("Line1.Count")], poll_interval_s=0.05
    )
    subscribed = plan(
        "oven",
        sim.endpoint,
        [OpcUaTagAddress(node_id=sim.node_id("Line1.Serial"))],
        poll_interval_s=0.05,
        mode="subscribe",
        publishing_interval_ms=50,
    )
    offline = plan("offline", "opc.tcp://127.0.0.1:9", ["ns=1;s=X"], poll_interval_s=0.05, timeout_s=0.3)
    stop = threading.Event()
    seen: list[PointBatch] = []
    source = OpcUaSource([polled, subscribed, offline], stop_event=stop)

    def collect(batch: PointBatch) -> PointBatch:
        seen.append(batch)
        devices = {b.device_id for b in seen if len(b)}
        if devices == {"press", "oven", "offline"} and sum(b.device_id == "press" for b in seen) >= 5:
            stop.set()
        return batch

    out: list[PointBatch] = []
    flow = Dataflow("opcua_test")
    op.output("out", op.map("collect", op.input("in", flow, source), collect), TestingSink(out))
    t0 = time.monotonic()
    run_main(flow)  # returns once every partition drained after stop_event
    assert time.monotonic() - t0 < 30

    assert len(out) == len(seen)
    press = [b for b in out if b.device_id == "press"]
    assert all(b.quality.tolist() == [Quality.GOOD] * 2 and b.values.tolist() == [21.5, 7.0] for b in press)
    oven = np.concatenate([b.values for b in out if b.device_id == "oven"])
    assert 123456.0 in oven.tolist()
    assert all(b.quality.tolist() == [Quality.COMM_ERROR] for b in out if b.device_id == "offline")
    stats = source.stats()
    assert set(stats) == {"press", "oven", "offline"}
    assert all(s.polls == s.completed for s in stats.values())
