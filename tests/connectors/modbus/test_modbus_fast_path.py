"""The Modbus poll path's own request steps and response decoding, against pymodbus's real server.

:mod:`connectors.modbus.transaction` sends the reads of a poll without pymodbus's ``execute`` and
:mod:`connectors.modbus.responses` decodes register responses in one call; both must answer exactly
what pymodbus's stock path answers, time out like it, and leave every other pymodbus user alone.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.responses import FastHoldingRegisters, FastInputRegisters, register_fast_responses
from connectors.modbus.simulator import ModbusSimulator
from connectors.modbus.transaction import execute, read_request
from core.quality import Quality
from tests.connectors.modbus.modbus_testlib import MIXED_TAGS, plan_for

A = ModbusTagAddress


@given(st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=125), st.binary(max_size=3))
def test_fast_decode_equals_pymodbus_decode(registers: list[int], trailing: bytes) -> None:
    frame = ReadHoldingRegistersResponse(registers=registers).encode() + trailing
    stock, fast = ReadHoldingRegistersResponse(), FastHoldingRegisters()
    stock.decode(frame)
    fast.decode(frame)
    assert fast.registers.tolist() == list(stock.registers) == registers
    assert str(fast) == f"FastHoldingRegisters(dev_id=0, transaction_id=0, registers={len(registers)})"


@pytest.mark.parametrize("cls", [FastHoldingRegisters, FastInputRegisters])
def test_fast_decode_rejects_a_byte_count_beyond_the_frame_as_pymodbus_does(cls: type) -> None:
    with pytest.raises(ModbusIOException, match="byte_count 4 > length of packet 3"):
        cls().decode(bytes([4, 0, 1]))


async def _connected(sim: ModbusSimulator, *, fast: bool) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, retries=0, timeout=2)
    if fast:
        register_fast_responses(client)
    assert await client.connect()
    return client


@pytest.mark.integration
def test_execute_reads_what_pymodbus_reads_and_stock_clients_keep_stock_classes(
    mixed_sim: ModbusSimulator,
) -> None:
    async def go() -> None:
        fast = await _connected(mixed_sim, fast=True)
        stock = await _connected(mixed_sim, fast=False)  # made after: registration must not leak
        try:
            for table, count in (("holding", 14), ("input", 6), ("coil", 18), ("discrete", 8)):
                rr = await execute(fast, read_request(table, 0, count, 1), 2.0)
                want = await getattr(stock, f"read_{_READS[table]}")(0, count=count, device_id=1)
                assert not rr.isError() and not want.isError()
                if table in ("coil", "discrete"):
                    assert list(rr.bits) == list(want.bits)
                else:
                    assert isinstance(rr, FastHoldingRegisters | FastInputRegisters)
                    assert type(want).__name__.startswith("Read")  # pymodbus's own class
                    assert rr.registers.tolist() == list(want.registers)
            # an exception response comes back as a response, not an exception
            mixed_sim.set_exception("plc", "holding", 0, 2)
            rr = await execute(fast, read_request("holding", 0, 2, 1), 2.0)
            assert rr.isError() and rr.exception_code == 2
        finally:
            fast.close()
            stock.close()

    asyncio.run(go())


@pytest.mark.integration
def test_execute_times_out_on_a_stalled_device_and_refuses_when_not_connected(
    mixed_sim: ModbusSimulator,
) -> None:
    async def go() -> None:
        client = await _connected(mixed_sim, fast=True)
        mixed_sim.set_stall("plc", 30.0)
        try:
            with pytest.raises(TimeoutError, match=r"no response within 0\.2 s"):
                await asyncio.wait_for(execute(client, read_request("holding", 0, 1, 1), 0.2), 10)
        finally:
            mixed_sim.set_stall("plc", None)
            client.close()
        with pytest.raises(ConnectionException, match="not connected"):
            await execute(client, read_request("holding", 0, 1, 1), 0.2)

    asyncio.run(go())


@pytest.mark.integration
def test_a_hot_reconfigured_timeout_bounds_the_next_reads(mixed_sim: ModbusSimulator) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS, timeout_s=30.0)

    async def go() -> None:
        client = ModbusDeviceClient(plan, metrics=False)
        assert (await client.poll()).quality.max() == Quality.GOOD
        short = dataclasses.replace(plan, connection=plan.connection.model_copy(update={"timeout_s": 0.3}))
        await client.reconfigure(short)
        mixed_sim.set_stall("plc", 60.0)
        try:  # with the old 30 s timeout the poll would outlast the deadline
            batch = await asyncio.wait_for(client.poll(), 10)
        finally:
            mixed_sim.set_stall("plc", None)
        assert batch.quality.tolist() == [Quality.COMM_ERROR] * len(MIXED_TAGS)
        await client.close()

    asyncio.run(go())


@pytest.mark.integration
def test_integer_plans_skip_the_finiteness_check_but_float_nan_is_out_of_range(
    mixed_sim: ModbusSimulator,
) -> None:
    ints = plan_for("plc", mixed_sim.port, [A(table="holding", address=1, data_type="uint16")])
    floats = plan_for("plc", mixed_sim.port, [A(table="holding", address=10, data_type="float32")])
    mixed_sim.set_value("plc", floats.tags[0][1], float("nan"))

    async def go() -> None:
        a, b = ModbusDeviceClient(ints, metrics=False), ModbusDeviceClient(floats, metrics=False)
        assert not a.read_plan.floats and b.read_plan.floats
        good, nan = await a.poll(), await b.poll()
        assert good.quality.tolist() == [Quality.GOOD] and np.isfinite(good.values).all()
        assert nan.quality.tolist() == [Quality.OUT_OF_RANGE] and np.isnan(nan.values[0])
        assert (a.stats.failures, b.stats.failures) == (0, 1)  # a bad point makes a failed poll
        await a.close()
        await b.close()

    asyncio.run(go())


_READS = {
    "holding": "holding_registers",
    "input": "input_registers",
    "coil": "coils",
    "discrete": "discrete_inputs",
}
