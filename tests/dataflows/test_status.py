"""The flow status topic: one retained message per flow process, gone after a clean stop."""

from __future__ import annotations

import json
import uuid

import pytest

from dataflows.status import FlowStatus, bytewax_process_id, status_topic
from tests.conftest import wait_for
from tests.mqtt_probe import collect

pytestmark = pytest.mark.integration


def _retained(mqtt_url: str, flow: str) -> dict[str, bytes]:
    return {
        m.topic: m.payload
        for m in collect(mqtt_url, f"$nexus/status/flows/{flow}/#", f"$nexus/status/flows/{flow}/marker")
        if m.retain
    }


def test_the_topic_is_keyed_by_flow_and_bytewax_process_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYTEWAX_PROCESS_ID", "3")
    assert status_topic("line1") == "$nexus/status/flows/line1/3"
    assert bytewax_process_id({"BYTEWAX_POD_NAME": "nexus-flow-2"}) == 2
    with pytest.raises(ValueError, match="BYTEWAX_PROCESS_ID"):
        bytewax_process_id({"BYTEWAX_PROCESS_ID": "x"})


def test_restarts_leave_no_retained_status_behind(mqtt_url: str) -> None:
    flow = f"f{uuid.uuid4().hex[:8]}"
    for _restart in range(3):
        status = FlowStatus(flow, mqtt_url, interval_s=0.05, process=0)
        status.start()
        try:
            status.count_read(5)
            running = wait_for(lambda: _retained(mqtt_url, flow), what="a retained running status")
            assert list(running) == [f"$nexus/status/flows/{flow}/0"]  # one message per process
            report = json.loads(running[f"$nexus/status/flows/{flow}/0"])
            assert report["state"] == "running" and report["process"] == 0 and report["flow"] == flow
            assert report["points_read"] == 5
        finally:
            status.stop()
        assert _retained(mqtt_url, flow) == {}  # a clean stop clears it
    status.stop()  # idempotent


def test_two_processes_of_a_flow_each_have_their_own_status(mqtt_url: str) -> None:
    flow = f"f{uuid.uuid4().hex[:8]}"
    statuses = [FlowStatus(flow, mqtt_url, interval_s=0.05, process=p) for p in (0, 1)]
    for s in statuses:
        s.start()
    try:
        both = wait_for(lambda: len(r := _retained(mqtt_url, flow)) == 2 and r, what="two statuses")
        assert sorted(both) == [f"$nexus/status/flows/{flow}/0", f"$nexus/status/flows/{flow}/1"]
    finally:
        for s in statuses:
            s.stop()


def test_the_payload_carries_each_devices_poll_statistics() -> None:
    """What the live status feed (``devices:{flow}``) shows per device: polls, skipped polls, failures,
    breaker state, the last poll's latency and the current interval; a hot change's version beside them."""
    from connectors.client_base import DeviceClientStats
    from connectors.polling import PartitionStats

    client = DeviceClientStats(polls=9, failures=2, breaker_state="open", last_latency_s=0.0125)
    stats = {"press-01": PartitionStats("press-01", 10, 9, 1, 2, client, interval_s=0.5)}
    fresh = {"oven-01": PartitionStats("oven-01", 0, 0, 0, 0, DeviceClientStats(), interval_s=1.0)}
    status = FlowStatus("f", "mqtt://127.0.0.1:1", process=0)
    status.add_device_stats(lambda: stats)
    status.add_device_stats(lambda: fresh)
    status.set_device_version("press-01", 4)
    devices = json.loads(json.dumps(status.snapshot()))["devices"]
    assert devices == {
        "oven-01": {
            "polls": 0, "skipped_polls": 0, "failures": 0, "breaker": "closed", "latency_ms": None,
            "interval_s": 1.0,
        },
        "press-01": {
            "version": 4, "polls": 10, "skipped_polls": 1, "failures": 2, "breaker": "open",
            "latency_ms": 12.5, "interval_s": 0.5,
        },
    }  # fmt: skip
