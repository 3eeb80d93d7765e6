"""Fixtures for the Modbus connector tests: simulators on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from tests.connectors.modbus.modbus_testlib import MIXED_TAGS, MIXED_VALUES


@pytest.fixture
def simulator() -> Iterator[Callable[..., ModbusSimulator]]:
    """Start simulators on free ports; all are stopped at the end of the test."""
    started: list[ModbusSimulator] = []

    def make(devices: Sequence[SimulatedDevice], **kwargs: float) -> ModbusSimulator:
        sim = ModbusSimulator("127.0.0.1", 0, devices, **kwargs)
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def mixed_sim(simulator: Callable[..., ModbusSimulator]) -> ModbusSimulator:
    """One device ``plc`` (unit 1) with every data type and word order, values from MIXED_VALUES."""
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in MIXED_TAGS])])
    for address, value in zip(MIXED_TAGS, MIXED_VALUES, strict=True):
        sim.set_value("plc", address, value)
    return sim
