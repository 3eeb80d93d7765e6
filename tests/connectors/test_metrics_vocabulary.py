"""One metric vocabulary for every polled protocol: the same series, labels and label values for
Modbus, OPC UA and S7, exercised against each library's real server (ok, a write accepted and one
refused, the device gone until the breaker opens, the device back)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.opcua.client import OpcUaDeviceClient
from connectors.opcua.simulator import OpcUaSimulator, SimVariable
from connectors.polling import WriteRejected
from connectors.resilience import POLL_RESULTS, REQUEST_ERROR_KINDS, WRITE_RESULTS
from connectors.s7.client import S7DeviceClient
from connectors.s7.simulator import S7Simulator
from core.quality import Quality
from tests.connectors.modbus.modbus_testlib import A
from tests.connectors.modbus.modbus_testlib import plan_for as modbus_plan
from tests.connectors.opcua.opcua_testlib import plan as opcua_plan
from tests.connectors.s7.s7_testlib import T
from tests.connectors.s7.s7_testlib import plan_for as s7_plan

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {
    "reconnect_min_s": 0.05,
    "reconnect_max_s": 0.1,
    "breaker_failures": 2,
    "breaker_reset_s": 0.5,
}


@dataclass
class Rig:
    client: Any
    stop: Callable[[], None]
    start: Callable[[], None]
    write_ok: tuple[int, Any]


def _modbus(device: str) -> Rig:
    tag = A(table="holding", address=0, data_type="int16")
    sim = ModbusSimulator("127.0.0.1", 0, [SimulatedDevice(device, 1, [SimTag(tag)])])
    sim.start()
    client = ModbusDeviceClient(modbus_plan(device, sim.port, [tag], **FAST))
    return Rig(client, sim.stop, sim.start, (100, 5))


def _opcua(device: str) -> Rig:
    sim = OpcUaSimulator([SimVariable("M.Count", "Int32", 7, writable=True)]).start()
    client = OpcUaDeviceClient(
        opcua_plan(device, sim.endpoint, [sim.node_id("M.Count")], writable=[1], timeout_s=1.0, **FAST)
    )

    def start() -> None:
        sim.start()

    return Rig(client, sim.stop, start, (1, 5))


def _s7(device: str) -> Rig:
    sim = S7Simulator(dbs={1: 16})
    sim.start()
    client = S7DeviceClient(s7_plan(device, sim.port, [T("DB1.DBW0", "INT")], **FAST))
    return Rig(client, sim.stop, sim.start, (100, 5))


def _samples(name: str, protocol: str, device: str, label: str) -> dict[str, float]:
    out = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == name and s.labels.get("protocol") == protocol and s.labels.get("device") == device:
                out[s.labels[label]] = s.value
    return out


async def _poll_until(client: Any, predicate: Callable[[Any], bool], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.poll()
        if predicate(batch):
            return batch
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; stats {client.stats}")
        await asyncio.sleep(0.05)


async def _exercise(rig: Rig) -> None:
    c = rig.client
    good: Callable[[Any], bool] = lambda b: bool(np.all(b.quality == Quality.GOOD))  # noqa: E731
    try:
        await _poll_until(c, good, "a good poll")
        await c.write(*rig.write_ok)
        with pytest.raises(WriteRejected):
            await c.write(999, 1)
        rig.stop()
        await _poll_until(c, lambda _: c.stats.breaker_state == "open", "the breaker to open")
        await _poll_until(c, lambda _: c.stats.breaker_open_polls > 0, "a poll answered by the open breaker")
        rig.start()
        await _poll_until(c, good, "the device back")
    finally:
        await c.close()


RIGS: dict[str, Callable[[str], Rig]] = {"modbus": _modbus, "opcua": _opcua, "s7": _s7}


@pytest.mark.parametrize("protocol", sorted(RIGS))
def test_every_protocol_speaks_the_same_metric_vocabulary(protocol: str) -> None:
    device = f"{protocol}-{uuid.uuid4().hex[:8]}"
    rig = RIGS[protocol](device)
    try:
        asyncio.run(_exercise(rig))
    finally:
        rig.stop()

    polls = _samples("nexus_device_polls_total", protocol, device, "result")
    assert set(polls) == set(POLL_RESULTS), polls
    assert polls["ok"] >= 2 and polls["comm_error"] >= 1 and polls["breaker_open"] >= 1, polls
    writes = _samples("nexus_device_writes_total", protocol, device, "result")
    assert set(writes) == set(WRITE_RESULTS), writes
    assert writes["ok"] == 1 and writes["rejected"] == 1, writes
    errors = _samples("nexus_device_request_errors_total", protocol, device, "kind")
    assert set(errors) == set(REQUEST_ERROR_KINDS) and errors["comm"] >= 1, errors
    labels = {"protocol": protocol, "device": device}
    assert (REGISTRY.get_sample_value("nexus_device_reconnects_total", labels) or 0) >= 1
    assert REGISTRY.get_sample_value("nexus_device_breaker_state", labels) == 0  # closed again
    assert (REGISTRY.get_sample_value("nexus_device_poll_seconds_count", labels) or 0) == sum(polls.values())
