"""A hot plan change on a live Modbus client: the read plan is re-coalesced, the connection stays
(counted at the pymodbus server); a changed endpoint reconnects."""

from __future__ import annotations

import asyncio

import pytest

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import ModbusDevicePlan
from connectors.modbus.simulator import ModbusSimulator
from core.quality import Quality
from tests.connectors.modbus.modbus_testlib import MIXED_TAGS, MIXED_VALUES, plan_for

pytestmark = pytest.mark.integration


def test_a_new_plan_is_read_on_the_same_connection(mixed_sim: ModbusSimulator) -> None:
    async def main() -> None:
        first = plan_for("plc", mixed_sim.port, MIXED_TAGS[:2])
        client = ModbusDeviceClient(first, metrics=False)
        try:
            b = await client.poll()
            assert b.values.tolist() == [-123.0, 65000.0]
            accepted = mixed_sim.connections_accepted
            requests = len(client.read_plan.requests)
            # Tag 100 removed, 101 kept, three holding registers and a coil added; a longer timeout.
            tags = ((101, MIXED_TAGS[1]), (110, MIXED_TAGS[6]), (111, MIXED_TAGS[2]), (112, MIXED_TAGS[10]))
            new = ModbusDevicePlan("plc", first.connection.model_copy(update={"timeout_s": 0.9}), 0.5, tags)
            await client.reconfigure(new)
            assert len(client.read_plan.requests) == requests + 1  # holding 1..11 in one read, plus the coil
            b = await client.poll()
            assert b.tag_ids.tolist() == [101, 110, 111, 112]
            assert b.values.tolist() == [65000.0, MIXED_VALUES[6], MIXED_VALUES[2], 1.0]
            assert b.quality.tolist() == [Quality.GOOD] * 4
            assert client.stats.connects == 1 and mixed_sim.connections_accepted == accepted
            assert client._client is not None and client._client.comm_params.timeout_connect == 0.9
            # Another endpoint (here: another unit id is not a new link, another port is).
            moved = ModbusDevicePlan(
                "plc", first.connection.model_copy(update={"port": mixed_sim.port}), 0.5, tags
            )
            await client.reconfigure(moved)  # the same port: nothing to reconnect
            assert client.connected
            elsewhere = first.connection.model_copy(update={"host": "localhost"})
            await client.reconfigure(ModbusDevicePlan("plc", elsewhere, 0.5, tags))
            assert not client.connected  # dropped; the next poll connects to the new endpoint
            b = await client.poll()
            assert b.quality.tolist() == [Quality.GOOD] * 4 and client.stats.connects == 2
        finally:
            await client.close()

    asyncio.run(main())
