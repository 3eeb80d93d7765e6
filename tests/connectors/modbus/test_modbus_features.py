"""Data types, addressing, read splitting, the circuit breaker, writes and RTU, against the real
pymodbus server (the simulator) on loopback ports and pseudo-terminals."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
from pymodbus.client import ModbusTcpClient

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import (
    ModbusConnection,
    ModbusDevicePlan,
    ModbusSerialConnection,
    ModbusTagAddress,
)
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice, pty_link
from connectors.polling import WriteFailed, WriteRejected
from core.batch import PointBatch
from core.quality import Quality
from tests.connectors.modbus.modbus_testlib import GOLDEN, MIXED_TAGS, MIXED_VALUES, free_port, plan_for

pytestmark = pytest.mark.integration

T = TypeVar("T")
A = ModbusTagAddress
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def poll_once(plan: ModbusDevicePlan, **kwargs: Any) -> PointBatch:
    client = ModbusDeviceClient(plan, metrics=False, **kwargs)
    try:
        return await client.poll()
    finally:
        await client.close()


def golden_layout() -> tuple[list[A], list[tuple[int, list[int], float]]]:
    """One tag per golden vector and byte order, laid out back to back: (tags, (address, regs, value))."""
    tags: list[A] = []
    raw: list[tuple[int, list[int], float]] = []
    address = 0
    for data_type, value, by_order in GOLDEN:
        for order in ORDERS:
            regs = by_order[order]
            tags.append(A(table="holding", address=address, data_type=data_type, byte_order=order))  # type: ignore[arg-type]
            expected = float(np.float32(value)) if data_type == "float32" else float(value)
            raw.append((address, regs, expected))
            address += len(regs)
    return tags, raw


def test_known_registers_in_the_server_decode_for_every_type_and_byte_order(
    simulator: Callable[..., ModbusSimulator],
) -> None:
    tags, raw = golden_layout()
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in tags])])
    for address, regs, _ in raw:
        sim.set_registers("plc", "holding", address, regs)
    batch = run(poll_once(plan_for("plc", sim.port, tags)))
    assert batch.quality.tolist() == [Quality.GOOD] * len(tags)
    assert batch.values.tolist() == [v for _, _, v in raw]


def test_bits_strings_and_64_bit_values_through_the_server(simulator: Callable[..., ModbusSimulator]) -> None:
    tags = [
        A(table="holding", address=0, data_type="bit", bit=0),
        A(table="holding", address=0, data_type="bit", bit=15),
        A(table="input", address=0, data_type="bit", bit=3),
        A(table="holding", address=1, data_type="string", length=4),
        A(table="holding", address=5, data_type="string", length=2, string_byte_order="little"),
        A(table="holding", address=7, data_type="uint64", byte_order="DCBA"),
        A(table="input", address=1, data_type="float64", byte_order="CDAB"),
    ]
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in tags])])
    sim.set_registers("plc", "holding", 0, [0x8000])
    sim.set_registers("plc", "input", 0, [0b1000])
    sim.set_value("plc", tags[3], "PRESS-7")
    sim.set_value("plc", tags[4], "ok")
    sim.set_value("plc", tags[5], 2**53)
    sim.set_value("plc", tags[6], -0.1)
    batch = run(poll_once(plan_for("plc", sim.port, tags)))
    assert batch.quality.tolist() == [Quality.GOOD] * len(tags)
    assert batch.values[[0, 1, 2, 5, 6]].tolist() == [0.0, 1.0, 1.0, 2.0**53, -0.1]
    assert np.isnan(batch.values[[3, 4]]).all()
    assert batch.text == {3: "PRESS-7", 4: "ok"}
    assert sim.get_registers("plc", "holding", 5, 2) == [0x6B6F, 0]  # "ok", low byte first


def test_one_based_addresses_go_on_the_wire_minus_one(simulator: Callable[..., ModbusSimulator]) -> None:
    wire = [A(table="holding", address=0, data_type="int16"), A(table="coil", address=4, data_type="bool")]
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in wire])])
    sim.set_value("plc", wire[0], -5)
    sim.set_value("plc", wire[1], 1)
    spec = [t.at(t.address + 1) for t in wire]  # what a manual using 1-based numbers says
    batch = run(poll_once(plan_for("plc", sim.port, spec, address_base=1)))
    assert batch.values.tolist() == [-5.0, 1.0]


def test_an_illegal_address_splits_the_read_and_the_split_is_remembered(
    simulator: Callable[..., ModbusSimulator],
) -> None:
    tags = [A(table="holding", address=a, data_type="int16") for a in range(8)]
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in tags], holes=[("holding", 5)])])
    for i, t in enumerate(tags):
        if i != 5:
            sim.set_value("plc", t, 10 + i)
    now = [0.0]
    plan = plan_for("plc", sim.port, tags, split_reprobe_s=60.0)
    calls: list[tuple[int, int]] = []

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False, clock=lambda: now[0])
        client_read = client._read

        async def counting_read(req: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((req.address, req.count))
            return await client_read(req, *args, **kwargs)

        client._read = counting_read  # type: ignore[method-assign]
        want_q = [Quality.GOOD] * 8
        want_q[5] = Quality.DEVICE_EXCEPTION
        first = await client.poll()
        assert first.quality.tolist() == want_q
        assert first.values[[0, 1, 2, 3, 4, 6, 7]].tolist() == [10, 11, 12, 13, 14, 16, 17]
        assert client.stats.split_requests == 1
        assert client.stats.failures == 1 and client.breaker.state == "closed"  # not a link failure
        split_calls = len(calls)
        assert split_calls > 1

        calls.clear()
        second = await client.poll()  # the pieces, not the whole read that fails
        assert second.quality.tolist() == want_q
        assert (0, 8) not in calls and len(calls) <= 4

        sim.set_hole("plc", "holding", 5, hole=False)
        sim.set_value("plc", tags[5], 15)
        now[0] = 61.0  # time to re-probe: the whole read works again
        calls.clear()
        third = await client.poll()
        assert third.quality.tolist() == [Quality.GOOD] * 8
        assert calls == [(0, 8)] and client.stats.split_requests == 0
        await client.close()

    run(go())


def test_breaker_opens_after_failed_polls_answers_without_io_and_recovers(
    mixed_sim: ModbusSimulator,
) -> None:
    now = [0.0]
    plan = plan_for(
        "plc", mixed_sim.port, MIXED_TAGS, breaker_failures=3, breaker_reset_s=30.0, reconnect_min_s=0.01,
        reconnect_max_s=0.01,
    )  # fmt: skip

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False, clock=lambda: now[0])
        assert all(q == Quality.GOOD for q in (await client.poll()).quality)
        mixed_sim.stop()
        for _ in range(3):
            now[0] += 1.0  # past the backoff: every poll tries to reconnect and fails
            batch = await client.poll()
            assert batch.quality.tolist() == [Quality.COMM_ERROR] * len(MIXED_TAGS)
        assert client.breaker.state == "open" and client.stats.breaker_opened == 1
        failures = client.stats.connect_failures
        now[0] += 1.0
        batch = await client.poll()
        assert batch.quality.tolist() == [Quality.COMM_ERROR] * len(MIXED_TAGS)
        assert client.stats.breaker_open_polls == 1 and client.stats.connect_failures == failures  # no I/O
        with pytest.raises(WriteFailed, match="circuit breaker open"):
            await client.write(101, 5)

        mixed_sim.start()
        now[0] += 30.0  # the reset timeout: one probe goes through and closes the breaker
        batch = await client.poll()
        assert batch.values.tolist() == [float(v) for v in MIXED_VALUES]
        assert client.breaker.state == "closed" and client.stats.breaker_state == "closed"
        await client.close()

    run(go())


WRITE_TAGS = [
    A(table="holding", address=0, data_type="int16"),
    A(table="holding", address=1, data_type="float32", byte_order="CDAB"),
    A(table="holding", address=3, data_type="uint64", byte_order="BADC"),
    A(table="holding", address=7, data_type="bit", bit=4),
    A(table="holding", address=8, data_type="string", length=3),
    A(table="coil", address=2, data_type="bool"),
    A(table="input", address=0, data_type="uint16"),
    A(table="holding", address=11, data_type="float64"),
]


def test_writes_change_the_device_and_read_back(simulator: Callable[..., ModbusSimulator]) -> None:
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in WRITE_TAGS])])
    sim.set_registers("plc", "holding", 7, [0b1_0000_0001])  # bits 0 and 8 set: a bit write keeps them
    plan = plan_for("plc", sim.port, WRITE_TAGS)
    ids = [tag_id for tag_id, _ in plan.tags]

    async def go() -> PointBatch:
        client = ModbusDeviceClient(plan, metrics=False)
        await client.write(ids[0], -1234)
        await client.write(ids[1], 2.5)
        await client.write(ids[2], 2**64 - 1)
        await client.write(ids[3], True)
        await client.write(ids[4], "AB12")
        await client.write(ids[5], True)
        await client.write(ids[7], math.pi)
        batch = await client.poll()  # polls and writes share the one connection
        assert client.stats.connects == 1 and client.stats.writes == 7
        await client.close()
        return batch

    batch = run(go())
    assert batch.quality.tolist() == [Quality.GOOD] * len(WRITE_TAGS)
    assert batch.values[[0, 1, 2, 3, 5, 7]].tolist() == [-1234.0, 2.5, float(2**64 - 1), 1.0, 1.0, math.pi]
    assert batch.text == {4: "AB12"}
    reader = ModbusTcpClient("127.0.0.1", port=sim.port, timeout=1, retries=0)  # an independent view
    assert reader.connect()
    try:
        assert reader.read_holding_registers(7, count=1, device_id=1).registers == [0b1_0001_0001]
        assert reader.read_holding_registers(1, count=2, device_id=1).registers == [0x0000, 0x4020]
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("index", "value", "reason"),
    [
        (0, 40000, "out of range for int16"),
        (0, 1.5, "not an integer, as int16 requires"),
        (0, "12", "is not a number"),
        (3, 2, "not a bool"),
        (4, "too long for it", "does not fit 3 registers"),
        (6, 1, "table 'input' is read-only"),
        (None, 1, "no such tag on this device"),
    ],
)
def test_refused_writes_never_reach_the_device(
    simulator: Callable[..., ModbusSimulator], index: int | None, value: Any, reason: str
) -> None:
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in WRITE_TAGS])])
    plan = plan_for("plc", sim.port, WRITE_TAGS)
    tag_id = 999_999 if index is None else plan.tags[index][0]
    before = sim.get_registers("plc", "holding", 0, 12)

    async def go() -> ModbusDeviceClient:
        client = ModbusDeviceClient(plan, metrics=False)
        with pytest.raises(WriteRejected, match=reason) as exc:
            await client.write(tag_id, value)
        assert isinstance(exc.value, ValueError) and exc.value.tag_id == tag_id
        return client

    client = run(go())
    assert client.stats.connects == 0  # refused before any I/O
    assert sim.get_registers("plc", "holding", 0, 12) == before


def test_device_exception_and_transport_errors_fail_writes(simulator: Callable[..., ModbusSimulator]) -> None:
    sim = simulator([SimulatedDevice("plc", 1, [SimTag(t) for t in WRITE_TAGS])])
    plan = plan_for("plc", sim.port, WRITE_TAGS)
    tag_id = plan.tags[0][0]

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        sim.set_exception("plc", "holding", 0, 4)
        with pytest.raises(WriteFailed, match="exception code 4") as exc:
            await client.write(tag_id, 1)
        assert exc.value.code == 4
        sim.set_exception("plc", "holding", 0, None)
        await client.write(tag_id, 2)
        sim.stop()
        with pytest.raises(WriteFailed) as exc:
            await client.write(tag_id, 3)
        assert exc.value.code is None
        assert client.stats.write_failures == 2 and client.stats.writes == 1
        await client.close()

    run(go())
    assert sim.get_registers("plc", "holding", 0, 1) == [2]


def test_rtu_framing_over_tcp(simulator: Callable[..., ModbusSimulator]) -> None:
    sim = simulator([SimulatedDevice("plc", 3, [SimTag(t) for t in MIXED_TAGS])], transport="rtu_over_tcp")
    for address, value in zip(MIXED_TAGS, MIXED_VALUES, strict=True):
        sim.set_value("plc", address, value)
    plan = plan_for("plc", sim.port, MIXED_TAGS, unit_id=3, transport="rtu_over_tcp")
    batch = run(poll_once(plan))
    assert batch.values.tolist() == [float(v) for v in MIXED_VALUES]
    # a plain Modbus TCP client cannot talk to it: the framing matters
    assert (
        run(poll_once(plan_for("plc", sim.port, MIXED_TAGS[:1], unit_id=3, timeout_s=0.2))).quality[0] >= 128
    )


def test_rtu_over_a_pseudo_terminal_pair() -> None:
    tags = [*MIXED_TAGS, A(table="holding", address=20, data_type="float64", byte_order="DCBA")]
    values = [*MIXED_VALUES, -1.25]
    with pty_link() as (server_end, client_end):
        sim = ModbusSimulator(
            devices=[SimulatedDevice("plc", 5, [SimTag(t) for t in tags])],
            transport="rtu",
            serial_port=server_end,
        )
        with sim:
            for address, value in zip(tags, values, strict=True):
                sim.set_value("plc", address, value)
            conn = ModbusSerialConnection(port=client_end, baudrate=115200, unit_id=5, timeout_s=1.0)
            plan = ModbusDevicePlan("plc", conn, 1.0, tuple((100 + i, t) for i, t in enumerate(tags)))

            async def go() -> PointBatch:
                client = ModbusDeviceClient(plan, metrics=False)
                try:
                    deadline = asyncio.get_running_loop().time() + 10
                    while True:  # the serial server may need a moment to open its end
                        batch = await client.poll()
                        if (
                            batch.quality == Quality.GOOD
                        ).all() or asyncio.get_running_loop().time() > deadline:
                            break
                        await asyncio.sleep(0.05)
                    await client.write(100, 77)
                    return await client.poll()
                finally:
                    await client.close()

            batch = run(go())
    assert batch.quality.tolist() == [Quality.GOOD] * len(tags)
    assert batch.values.tolist() == [77.0, *[float(v) for v in values[1:]]]


def test_unreachable_device_write_fails_without_waiting() -> None:
    plan = plan_for("ghost", free_port(), WRITE_TAGS, reconnect_min_s=30.0, reconnect_max_s=60.0)

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        await client.poll()  # refused: now backing off
        with pytest.raises(WriteFailed, match="unreachable"):
            await client.write(plan.tags[0][0], 1)
        await client.close()

    run(go())


def test_connection_models_pick_the_framer() -> None:
    async def go() -> tuple[str, str]:
        tcp = ModbusDeviceClient(plan_for("d", 1502, MIXED_TAGS[:1]), metrics=False)._new_client()
        conn = ModbusConnection(host="127.0.0.1", transport="rtu_over_tcp")
        gw = ModbusDeviceClient(ModbusDevicePlan("g", conn, 1.0, ((1, MIXED_TAGS[0]),)), metrics=False)
        return type(tcp.ctx.framer).__name__, type(gw._new_client().ctx.framer).__name__

    assert run(go()) == ("FramerSocket", "FramerRTU")
