"""Fixtures of the OPC UA tests: simulators on free loopback ports, certificates cached for the session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.opcua.simulator import OpcUaSimulator
from tests.connectors.opcua.opcua_testlib import VARIABLES


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every certificate of the session (RSA key generation is slow: generate once)."""
    return tmp_path_factory.mktemp("opcua-pki")


@pytest.fixture(scope="module")
def sim() -> Iterator[OpcUaSimulator]:
    """A plain (no security) simulator shared by a test module; tests reset the values they use."""
    with OpcUaSimulator(VARIABLES) as s:
        yield s


@pytest.fixture
def make_sim() -> Iterator[Callable[..., OpcUaSimulator]]:
    """Start simulators of one test; all are stopped at the end."""
    started: list[OpcUaSimulator] = []

    def make(*args: Any, **kwargs: Any) -> OpcUaSimulator:
        s = OpcUaSimulator(*args, **kwargs).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
