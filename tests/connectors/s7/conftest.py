"""Fixtures for the S7 connector tests: python-snap7 servers on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from connectors.s7.simulator import S7Simulator
from tests.connectors.s7.s7_testlib import MIXED_TAGS, MIXED_VALUES


@pytest.fixture
def simulator() -> Iterator[Callable[..., S7Simulator]]:
    """Start simulators on free ports; all are stopped at the end of the test."""
    started: list[S7Simulator] = []

    def make(**kwargs: object) -> S7Simulator:
        sim = S7Simulator("127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def mixed_sim(simulator: Callable[..., S7Simulator]) -> S7Simulator:
    """DB1 (128 bytes), DB2 (64 bytes), M, I, Q with MIXED_VALUES at MIXED_TAGS."""
    sim = simulator(dbs={1: 128, 2: 64})
    for tag, value in zip(MIXED_TAGS, MIXED_VALUES, strict=True):
        sim.set_value(tag.address, value, tag.data_type, length=tag.length)
    return sim
