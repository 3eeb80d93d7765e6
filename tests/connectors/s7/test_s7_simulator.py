"""The S7 simulator: values by address, signals, restart on the same port."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from connectors.s7.simulator import S7Simulator


def test_values_by_address_with_inferred_types() -> None:
    sim = S7Simulator(dbs={1: 64}, m_size=16)
    sim.set_value("DB1.DBD20", 1.5)
    sim.set_value("DB1.DBD24", -5)
    sim.set_value("DB1.DBW6", -2)
    sim.set_value("M1.2", True)
    sim.set_value("DB1.DBB30", "abc")
    assert bytes(sim.raw("DB", 1)[20:28]).hex() == "3fc00000fffffffb"
    assert bytes(sim.raw("DB", 1)[6:8]).hex() == "fffe"
    assert sim.raw("M")[1] == 0b100
    assert sim.get_value("DB1.DBB30", "STRING", length=3) == "abc"
    with pytest.raises(ValueError, match="no DB9 area"):
        sim.set_value("DB9.DBW0", 1)
    with pytest.raises(ValueError, match="beyond the area's 16 bytes"):
        sim.set_value("MD14", 1.0)


def test_signals_and_restart_on_the_same_port(
    simulator: Callable[..., S7Simulator], wait_for: Callable[..., object]
) -> None:
    sim = simulator(dbs={1: 16}, signal_interval_s=0.02)
    sim.add_signal("DB1.DBD0", "sine", period_s=1.0, amplitude=10.0)
    sim.add_signal("DB1.DBW4", "counter", "INT", period_s=0.05)
    sim.add_signal("DB1.DBD8", "ramp", period_s=0.5, amplitude=100.0)
    first = float(sim.get_value("DB1.DBW4", "INT"))
    wait_for(lambda: float(sim.get_value("DB1.DBW4", "INT")) > first, what="the counter to count")
    assert -10.0 <= float(sim.get_value("DB1.DBD0", "REAL")) <= 10.0
    assert 0.0 <= float(sim.get_value("DB1.DBD8", "REAL")) <= 100.0
    port = sim.port
    sim.stop()
    assert not sim.running
    sim.start()
    assert sim.port == port and sim.running
