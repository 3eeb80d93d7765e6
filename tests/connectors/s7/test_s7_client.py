"""S7DeviceClient against python-snap7's real server on loopback: reads, writes, faults, PDU packing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from connectors.polling import WriteFailed, WriteRejected
from connectors.s7.client import S7DeviceClient
from connectors.s7.config import S7DevicePlan
from connectors.s7.simulator import S7Simulator
from core.quality import Quality
from tests.connectors.s7.s7_testlib import MIXED_TAGS, MIXED_VALUES, T, free_port, plan_for

pytestmark = pytest.mark.integration


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def poll_until(client: S7DeviceClient, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """Poll every 50 ms until ``predicate(batch)`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.poll()
        if predicate(batch):
            return batch
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached; last qualities {batch.quality.tolist()}")
        await asyncio.sleep(0.05)


def expected_values() -> tuple[list[float], dict[int, str]]:
    values, text = [], {}
    for i, v in enumerate(MIXED_VALUES):
        if isinstance(v, str):
            values.append(np.nan)
            text[i] = v
        else:
            values.append(float(v))
    return values, text


def test_reads_every_type_from_db_m_i_q(mixed_sim: S7Simulator) -> None:
    async def main() -> None:
        client = S7DeviceClient(plan_for("plc", mixed_sim.port, MIXED_TAGS), metrics=False)
        try:
            b = await client.poll()
        finally:
            await client.close()
        values, text = expected_values()
        assert b.quality.tolist() == [Quality.GOOD] * len(MIXED_TAGS)
        np.testing.assert_array_equal(b.values, values)
        assert dict(b.text or {}) == text
        assert b.tag_ids.tolist() == [100 + i for i in range(len(MIXED_TAGS))]
        s = client.stats
        assert s.connects == 1 and s.pdu_size == 480 and s.requests == 1

    run(main())


def test_writes_change_the_server_memory_and_read_back(mixed_sim: S7Simulator) -> None:
    async def main() -> None:
        plan = plan_for("plc", mixed_sim.port, MIXED_TAGS)
        client = S7DeviceClient(plan, metrics=False)
        ids = {t.address: tag_id for tag_id, t in plan.tags}
        writes: list[tuple[str, str, object]] = [
            ("DB1.DBD20", "REAL", -7.25),
            ("DB1.DBW6", "INT", -32768),
            ("DB1.DBD8", "DINT", 2_000_000_000),
            ("DB1.DBX0.3", "BOOL", False),
            ("DB1.DBX0.4", "BOOL", True),
            ("DB1.DBB4", "BYTE", 255),
            ("DB1.DBW2", "WORD", 1),
            ("DB1.DBD12", "DWORD", 0),
            ("DB1.DBB24", "LREAL", 1e300),
            ("DB1.DBB40", "STRING", "bye"),
            ("MD10", "REAL", 0.5),
            ("M2.7", "BOOL", False),
            ("MW4", "INT", 12),
            ("QW2", "WORD", 7),
            ("Q0.0", "BOOL", False),
        ]
        mixed_sim.set_value("DB1.DBX0.5", True)  # a neighbour bit that BOOL writes must keep
        try:
            for address, _, value in writes:
                await client.write(ids[address], value)  # type: ignore[arg-type]
            b = await client.poll()
        finally:
            await client.close()
        for address, data_type, value in writes:
            length = 16 if data_type == "STRING" else None
            got = mixed_sim.get_value(address, data_type, length=length)
            assert got == (value if isinstance(value, str) else float(value)), address  # type: ignore[arg-type]
            i = ids[address] - 100
            assert (b.text or {}).get(i, b.values[i]) == got, address
        assert mixed_sim.get_value("DB1.DBX0.5", "BOOL") == 1.0
        assert client.stats.writes == len(writes)

    run(main())


def test_a_bool_write_keeps_bits_the_plc_changes_at_the_same_time(mixed_sim: S7Simulator) -> None:
    """A BOOL write is one bit-level request. With read-modify-write of the byte, a bit the PLC
    program changed between the client's read and its write was lost: here the "PLC" flips
    DB1.DBX0.5 whenever the byte is read, which is exactly that window."""
    server = mixed_sim._server
    assert server is not None
    serve_read = server._read_from_memory_area
    plc_bit5 = [False]  # what the PLC program last wrote to DB1.DBX0.5

    def plc_reacts(*args: Any) -> Any:
        answer = serve_read(*args)
        plc_bit5[0] = not plc_bit5[0]
        mixed_sim.set_value("DB1.DBX0.5", plc_bit5[0])  # the PLC, right after the read is served
        return answer

    server._read_from_memory_area = plc_reacts  # type: ignore[method-assign,assignment]
    mixed_sim.set_value("DB1.DBX0.5", False)

    async def main() -> None:
        plan = plan_for("plc", mixed_sim.port, MIXED_TAGS)
        client = S7DeviceClient(plan, metrics=False)
        ids = {t.address: tag_id for tag_id, t in plan.tags}
        try:
            for address, value in [("DB1.DBX0.4", True), ("DB1.DBX0.3", False), ("DB1.DBX0.4", False)]:
                await client.write(ids[address], value)
                assert mixed_sim.get_value(address, "BOOL") == float(value), address
                assert mixed_sim.get_value("DB1.DBX0.5", "BOOL") == float(plc_bit5[0]), "PLC's bit lost"
        finally:
            await client.close()

    run(main())


def test_invalid_writes_are_rejected_without_touching_the_device(mixed_sim: S7Simulator) -> None:
    async def main() -> None:
        plan = plan_for("plc", mixed_sim.port, MIXED_TAGS)
        client = S7DeviceClient(plan, metrics=False)
        before = {k: bytes(mixed_sim.raw(*k)) for k in [("DB", 1), ("M", 0), ("Q", 0), ("I", 0)]}
        cases = [
            (101, 40000, "outside -32768..32767"),  # DB1.DBW6 INT
            (100, float("inf"), "must be finite"),  # DB1.DBD20 REAL
            (103, 3, "true/false or 0/1"),  # DB1.DBX0.3 BOOL
            (109, "x" * 17, "max is 16"),  # STRING[16]
            (113, 1, "read-only"),  # IB2: inputs
            (999, 1, "no such tag"),
        ]
        for tag_id, value, reason in cases:
            with pytest.raises(WriteRejected, match=reason) as exc:
                await client.write(tag_id, value)  # type: ignore[arg-type]
            assert exc.value.tag_id == tag_id and exc.value.device_id == "plc"
        assert client.stats.connects == 0 and client.stats.requests == 0  # no I/O at all
        assert {k: bytes(mixed_sim.raw(*k)) for k in before} == before
        await client.close()

    run(main())


def test_write_to_an_unknown_db_fails_with_the_device_code(simulator: Callable[..., S7Simulator]) -> None:
    sim = simulator(dbs={1: 16})

    async def main() -> None:
        client = S7DeviceClient(plan_for("plc", sim.port, [T("DB5.DBW0", "INT")]), metrics=False)
        try:
            with pytest.raises(WriteFailed, match="refused") as exc:
                await client.write(100, 5)
        finally:
            await client.close()
        assert exc.value.code is not None

    run(main())


def test_an_unregistered_db_gives_bad_quality_for_its_tags_only(mixed_sim: S7Simulator) -> None:
    tags = [*MIXED_TAGS, T("DB2.DBW0", "INT"), T("DB9.DBD0", "REAL"), T("DB1.DBW200", "INT")]
    mixed_sim.set_value("DB2.DBW0", 77)

    async def main() -> None:
        client = S7DeviceClient(plan_for("plc", mixed_sim.port, tags), metrics=False)
        try:
            b = await client.poll()
            assert (
                b.quality.tolist() == [Quality.GOOD] * (len(MIXED_TAGS) + 1) + [Quality.DEVICE_EXCEPTION] * 2
            )
            assert b.values[len(MIXED_TAGS)] == 77
            mixed_sim.unregister_db(2)
            b = await client.poll()
            assert b.quality[len(MIXED_TAGS)] == Quality.DEVICE_EXCEPTION
            assert b.quality[: len(MIXED_TAGS)].tolist() == [Quality.GOOD] * len(MIXED_TAGS)
            mixed_sim.register_db(2)
            b = await client.poll()
            assert b.quality[len(MIXED_TAGS)] == Quality.GOOD
            assert client.stats.connects == 1  # device errors never drop the connection
            assert client.stats.breaker_state == "closed"
        finally:
            await client.close()

    run(main())


def test_server_stop_gives_comm_error_opens_the_breaker_and_restart_recovers(mixed_sim: S7Simulator) -> None:
    async def main() -> None:
        client = S7DeviceClient(plan_for("plc", mixed_sim.port, MIXED_TAGS), metrics=False)
        try:
            await poll_until(client, lambda b: bool(np.all(b.quality == Quality.GOOD)))
            mixed_sim.stop()
            b = await poll_until(client, lambda b: bool(np.all(b.quality == Quality.COMM_ERROR)))
            assert np.all(np.isnan(b.values))
            await poll_until(client, lambda _: client.stats.breaker_state == "open")
            # a poll answered by the open breaker does no I/O (on a slow machine the breaker may
            # already be half-open again: then poll until one is answered while it is open)
            for _ in range(100):
                before = client.stats
                b = await client.poll()
                after = client.stats
                if after.breaker_open_polls > before.breaker_open_polls:
                    break
            assert after.breaker_open_polls == before.breaker_open_polls + 1
            assert np.all(b.quality == Quality.COMM_ERROR)
            assert (after.requests, after.connect_failures) == (before.requests, before.connect_failures)
            mixed_sim.start()
            b = await poll_until(client, lambda b: bool(np.all(b.quality == Quality.GOOD)))
            values, _ = expected_values()
            np.testing.assert_array_equal(b.values, values)
            s = client.stats
            assert s.breaker_state == "closed" and s.breaker_opened >= 1 and s.reconnects >= 1
            with pytest.raises(WriteFailed):  # a write while the device is gone fails, typed
                mixed_sim.stop()
                await poll_until(client, lambda _: client.stats.breaker_state == "open")
                await client.write(100, 1.0)
        finally:
            await client.close()

    run(main())


def test_nothing_listening_is_comm_error_at_once() -> None:
    async def main() -> None:
        client = S7DeviceClient(plan_for("gone", free_port(), MIXED_TAGS[:3]), metrics=False)
        b = await client.poll()
        assert b.quality.tolist() == [Quality.COMM_ERROR] * 3
        assert client.stats.connect_failures == 1
        await client.close()

    run(main())


@pytest.mark.parametrize("pdu", [240, 480])
def test_many_tags_are_packed_into_several_requests_within_the_pdu(
    simulator: Callable[..., S7Simulator], pdu: int
) -> None:
    sim = simulator(dbs={1: 20_000, 2: 4_000})
    tags = [T(f"DB1.DBD{i * 40}", "REAL") for i in range(300)]  # one item each: 20 per request at most
    tags += [T(f"DB2.DBW{i * 2}", "INT") for i in range(1500)]  # 3000 contiguous bytes: split by PDU
    for i in range(300):
        sim.set_value(f"DB1.DBD{i * 40}", i + 0.5)
    for i in range(0, 1500, 7):
        sim.set_value(f"DB2.DBW{i * 2}", -i)

    async def main() -> None:
        client = S7DeviceClient(plan_for("plc", sim.port, tags, pdu_size=pdu), metrics=False)
        try:
            b = await client.poll()
        finally:
            await client.close()
        assert np.all(b.quality == Quality.GOOD)
        assert b.values[:300].tolist() == [i + 0.5 for i in range(300)]
        assert b.values[300:][::7].tolist() == [-float(i) for i in range(0, 1500, 7)]
        s = client.stats
        assert s.pdu_size == pdu
        assert s.requests == len(client.read_plan.requests) >= 300 / 20 + 3000 / pdu
        assert 0 < s.max_request_bytes <= pdu and 0 < s.max_response_bytes <= pdu
        assert all(len(r.items) <= 20 for r in client.read_plan.requests)

    run(main())


@pytest.mark.parametrize(
    "addressing",
    [
        {"rack": 0, "slot": 2},
        {"rack": 1, "slot": 3},
        {"local_tsap": "0x0100", "remote_tsap": "0x0200"},  # LOGO!-style
        {"local_tsap": "10.01", "remote_tsap": "03.01"},
    ],
)
def test_rack_slot_and_tsap_connections(mixed_sim: S7Simulator, addressing: dict[str, Any]) -> None:
    plan = plan_for("plc", mixed_sim.port, MIXED_TAGS[:2], **addressing)
    seen: list[int] = []

    async def main() -> None:
        client = S7DeviceClient(plan, metrics=False)
        try:
            b = await client.poll()
            snap = client._client
            assert snap is not None
            seen.extend([snap.local_tsap, snap.remote_tsap])
        finally:
            await client.close()
        assert b.quality.tolist() == [Quality.GOOD] * 2

    run(main())
    c = plan.connection
    assert seen == [c.local_tsap_value, c.remote_tsap_value]


def test_metrics_are_labelled_by_protocol_and_device(mixed_sim: S7Simulator) -> None:
    from prometheus_client import REGISTRY

    plan: S7DevicePlan = plan_for("s7-metrics-dev", mixed_sim.port, MIXED_TAGS[:2])

    async def main() -> None:
        client = S7DeviceClient(plan)
        await client.poll()
        await client.close()

    run(main())
    labels = {"protocol": "s7", "device": "s7-metrics-dev"}
    assert REGISTRY.get_sample_value("nexus_device_polls_total", {**labels, "result": "ok"}) == 1
    assert REGISTRY.get_sample_value("nexus_device_breaker_state", labels) == 0
    assert REGISTRY.get_sample_value("nexus_device_poll_seconds_count", labels) == 1
