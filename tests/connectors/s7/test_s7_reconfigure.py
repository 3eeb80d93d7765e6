"""A hot plan change on a live S7 client: new addresses are read on the open connection."""

from __future__ import annotations

import asyncio

import pytest

from connectors.s7.client import S7DeviceClient
from connectors.s7.config import S7DevicePlan
from connectors.s7.simulator import S7Simulator
from core.quality import Quality
from tests.connectors.s7.s7_testlib import MIXED_TAGS, MIXED_VALUES, plan_for

pytestmark = pytest.mark.integration


def test_a_new_plan_is_read_on_the_same_connection(mixed_sim: S7Simulator) -> None:
    async def main() -> None:
        first = plan_for("plc", mixed_sim.port, MIXED_TAGS[:1])
        client = S7DeviceClient(first, metrics=False)
        try:
            b = await client.poll()
            assert b.values.tolist() == [pytest.approx(MIXED_VALUES[0])]
            tags = ((100, first.tags[0][1]), (101, MIXED_TAGS[1]), (102, MIXED_TAGS[2]))
            await client.reconfigure(S7DevicePlan("plc", first.connection, 0.5, tags))
            b = await client.poll()
            assert b.tag_ids.tolist() == [100, 101, 102]
            assert b.values.tolist() == [pytest.approx(float(v)) for v in MIXED_VALUES[:3]]
            assert b.quality.tolist() == [Quality.GOOD] * 3
            assert client.stats.connects == 1
        finally:
            await client.close()

    asyncio.run(main())
