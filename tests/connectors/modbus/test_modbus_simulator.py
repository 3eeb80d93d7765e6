"""The simulated device farm: signals, raw encoding, faults, restart."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from pydantic import ValidationError

from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, Signal, SimTag, SimulatedDevice, to_raw

A = ModbusTagAddress


def test_signal_shapes() -> None:
    sine = Signal(kind="sine", offset=10, amplitude=5, period_s=4)
    assert sine.value_at(1.0, None) == pytest.approx(15.0)
    assert sine.value_at(3.0, None) == pytest.approx(5.0)
    ramp = Signal(kind="ramp", offset=0, amplitude=100, period_s=10)
    assert [ramp.value_at(t, None) for t in (0, 5, 9.99, 10)] == pytest.approx([0, 50, 99.9, 0])
    counter = Signal(kind="counter", offset=7, amplitude=2, period_s=3)
    assert [counter.value_at(t, None) for t in (0, 2.9, 3, 9)] == [7, 7, 9, 13]
    assert Signal(kind="constant", offset=42).value_at(123.0, None) == 42


def test_noise_is_seeded_and_additive() -> None:
    sig = Signal(kind="noise", offset=100, noise=2, seed=1)
    a = [sig.value_at(0, np.random.default_rng(1)) for _ in range(3)]
    b = [sig.value_at(0, np.random.default_rng(1)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(0)
    draws = np.array([sig.value_at(0, rng) for _ in range(2000)])
    assert abs(draws.mean() - 100) < 0.3 and 1.7 < draws.std() < 2.3


def test_signal_validation() -> None:
    with pytest.raises(ValidationError, match="step_values must not be empty"):
        Signal(kind="step")
    with pytest.raises(ValidationError) as exc:
        Signal(kind="sine", period_s=0)
    assert exc.value.errors()[0]["loc"] == ("period_s",)
    with pytest.raises(ValidationError):
        Signal(kind="sawtooth")  # type: ignore[arg-type]


def test_to_raw_rounds_clamps_and_wraps() -> None:
    i16 = A(table="holding", address=0, data_type="int16")
    assert to_raw(12.6, i16) == [13]
    assert to_raw(1e9, i16) == [0x7FFF]
    assert to_raw(-1e9, i16) == [0x8000]
    u32 = A(table="input", address=0, data_type="uint32", word_order="little")
    assert to_raw(2**32 + 5, u32, wrap=True) == [5, 0]
    f32 = A(table="holding", address=0, data_type="float32")
    assert to_raw(1e40, f32) == [0x7F7F, 0xFFFF]  # float32 max
    coil = A(table="coil", address=0, data_type="bool")
    assert (to_raw(0.7, coil), to_raw(0.2, coil)) == ([1], [0])


def test_bad_inputs_are_refused() -> None:
    tag = A(table="holding", address=0)
    with pytest.raises(ValueError, match="unit_id"):
        SimulatedDevice("d", 0, [SimTag(tag)])
    with pytest.raises(ValueError, match="must be unique"):
        ModbusSimulator(devices=[SimulatedDevice("d", 1), SimulatedDevice("d", 2)])
    sim = ModbusSimulator(devices=[SimulatedDevice("d", 1, [SimTag(tag)])])
    with pytest.raises(ValueError, match="out of range for uint16"):
        sim.set_value("d", tag, -1)
    with pytest.raises(ValueError, match="outside the table"):
        sim.set_value("d", A(table="holding", address=500), 1)
    with pytest.raises(ValueError, match="not a Modbus exception code"):
        sim.set_exception("d", "holding", 0, 99)
    with pytest.raises(KeyError, match="unknown simulated device 'x'"):
        sim.fail_next("x")
    with pytest.raises(ValueError, match="do not fit a coil"):
        sim.set_registers("d", "coil", 0, [2])


@pytest.mark.integration
def test_signals_drive_the_served_registers() -> None:
    """Tags with a signal change over time and stay inside their type's range."""
    from pymodbus.client import ModbusTcpClient

    tags = [
        SimTag(
            A(table="holding", address=0, data_type="uint16"),
            Signal(kind="ramp", amplitude=60000, period_s=0.5),
        ),
        SimTag(
            A(table="coil", address=0, data_type="bool"),
            Signal(kind="step", step_values=[0, 1], period_s=0.1),
        ),
    ]
    with ModbusSimulator(devices=[SimulatedDevice("d", 3, tags)], update_interval_s=0.02) as sim:
        client = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=1, retries=0)
        assert client.connect()
        seen_regs: set[int] = set()
        seen_bits: set[bool] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until both signals showed movement
            seen_regs.add(client.read_holding_registers(0, count=1, device_id=3).registers[0])
            seen_bits.add(client.read_coils(0, count=1, device_id=3).bits[0])
            if len(seen_regs) > 3 and len(seen_bits) == 2:
                break
        client.close()
    assert len(seen_regs) > 3 and seen_bits == {False, True}
    assert max(seen_regs) <= 60000


def test_counter_signal_wraps_in_integer_types() -> None:
    u16 = A(table="holding", address=0)
    sig = Signal(kind="counter", amplitude=1000, period_s=1)
    raw = to_raw(sig.value_at(70.0, None), u16, wrap=True)
    assert raw == [70_000 % 65536]
    assert not math.isnan(sig.value_at(0.0, None))
