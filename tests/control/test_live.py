"""Live status: the throttle on a fake clock, and status/alerts/values from a real broker to a WebSocket."""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from litestar.testing import TestClient

from api.app import create_app
from connectors.historian.config import HistorianConfig
from connectors.historian.schema import ensure_schema, upsert_tags
from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from control.live import LiveStatus
from core.settings import Settings
from core.tags import TagInfo
from tests.auth_helpers import login, password_of, prepare

# ---------------------------------------------------------------------------------- throttle (fake clock)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_sends_first_at_once_then_the_newest_per_interval() -> None:
    clock = FakeClock()
    sent: list[tuple[str, Any]] = []
    live = LiveStatus(
        "mqtt://127.0.0.1:1", max_rate_hz=10, clock=clock, sink=lambda c, m: sent.append((c, m))
    )
    live.watch_values(7, "a/b/c/d/e/t")
    live.offer_value(7, {"value": 1})
    assert sent == [("values:7", {"value": 1})]  # leading edge
    for i, dt in enumerate((0.01, 0.02, 0.05), start=2):
        clock.now += dt
        live.offer_value(7, {"value": i})
    assert live.flush_due() == 0 and len(sent) == 1  # 80 ms after the first: still inside the interval
    clock.now += 0.03  # 110 ms after the first
    assert live.flush_due() == 1
    assert sent[-1] == ("values:7", {"value": 4})  # the newest of the burst, the others dropped
    assert live.flush_due() == 0
    clock.now += 1.0
    live.offer_value(7, {"value": 5})  # quiet for a while: goes at once again
    assert sent[-1] == ("values:7", {"value": 5}) and len(sent) == 3
    live.offer_value(99, {"value": 0})  # nobody watches tag 99
    assert len(sent) == 3


def test_watches_are_reference_counted() -> None:
    live = LiveStatus("mqtt://127.0.0.1:1")
    live.watch_values(1, "x/1")
    live.watch_values(1, "x/1")
    live.unwatch_values(1)
    assert live.watched() == {1: 1}
    live.unwatch_values(1)
    live.unwatch_values(1)  # one too many: ignored
    assert live.watched() == {}


def test_status_payloads_merge_per_flow_with_points_per_s() -> None:
    live = LiveStatus("mqtt://127.0.0.1:1")
    topic = "$nexus/status/flows/demo/"
    live._handle(
        topic + "h-1", b'{"state": "running", "points_read": 100, "time": "2026-11-30T10:00:00+00:00"}'
    )
    live._handle(
        topic + "h-1", b'{"state": "running", "points_read": 400, "time": "2026-11-30T10:00:02+00:00"}'
    )
    live._handle(topic + "h-2", b'{"state": "offline"}')
    live._handle(topic + "h-3", b"not json")
    s = live.flow_status("demo")
    assert s is not None
    assert s["state"] == "running" and s["points_per_s"] == 150.0 and s["points_read"] == 400
    assert set(s["processes"]) == {"h-1", "h-2"} and live.counters.bad_messages == 1
    live._handle(topic + "h-1", b"")  # retained status cleared
    live._handle(topic + "h-2", b"")
    assert live.flow_status("demo") is None and live.flow_status("other") is None


# ---------------------------------------------------------------------------------- broker → WebSocket


def _publisher(mqtt_url: str) -> Iterator[mqtt.Client]:
    url = parse_mqtt_url(mqtt_url)
    client = make_client(url, unique_client_id("test-live-pub"))
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def publisher(mqtt_url: str) -> Iterator[mqtt.Client]:
    yield from _publisher(mqtt_url)


def receive_until(
    ws: Any, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Every message up to and including the first that satisfies ``pred`` (fails at the deadline)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no matching WebSocket message within {timeout} s; got {got[-5:]}")
        try:
            msg = ws.receive_json(timeout=left)
        except queue.Empty:
            continue
        got.append(msg)
        if pred(msg):
            return got


def ticket_socket(client: TestClient[Any]) -> Any:
    """The WebSocket as a script connects: a one-use ticket from ``POST /api/v1/auth/ws-ticket``."""
    ticket = client.post("/api/v1/auth/ws-ticket", headers=login(client, "viewer")).json()["ticket"]
    return client.websocket_connect(f"/api/v1/ws?ticket={ticket}")


def cookie_socket(client: TestClient[Any]) -> Any:
    """The WebSocket as the UI connects: with the session cookie of a log-in."""
    r = client.post("/api/v1/auth/login", json={"username": "viewer", "password": password_of("viewer")})
    assert r.status_code == 200, r.text
    return client.websocket_connect("/api/v1/ws")


@pytest.mark.integration
def test_status_and_alerts_reach_a_websocket_client(db: str, mqtt_url: str, publisher: mqtt.Client) -> None:
    flow = f"f-{uuid.uuid4().hex[:8]}"
    topic = f"$nexus/status/flows/{flow}/host-1"
    publisher.publish(topic, json.dumps({"flow": flow, "state": "running", "points_read": 10,
                                         "time": "2026-11-30T10:00:00+00:00"}), qos=1, retain=True).wait_for_publish(5)  # fmt: skip
    prepare(db)
    app = create_app(Settings(database_url=db, mqtt_url=mqtt_url))
    with TestClient(app=app) as client, ticket_socket(client) as ws:
        live: LiveStatus = app.state.live
        assert live.wait_connected(10)
        ws.send_json({"subscribe": ["flows", "alerts", "bogus channel"]})
        msgs = receive_until(
            ws, lambda m: m.get("channel") == "flows" and m["data"]["flow"] == flow
        )  # the retained status, as a snapshot or as it arrives
        assert {"type": "error", "path": "subscribe[2]"}.items() <= next(
            m for m in msgs if m.get("type") == "error"
        ).items()
        assert next(m for m in msgs if m.get("type") == "subscribed")["channels"] == ["flows", "alerts"]
        publisher.publish(topic, json.dumps({"flow": flow, "state": "running", "points_read": 310,
                                             "time": "2026-11-30T10:00:03+00:00"}), qos=1, retain=True)  # fmt: skip
        msgs = receive_until(
            ws,
            lambda m: (
                m.get("channel") == "flows" and m["data"]["flow"] == flow and m["data"]["points_read"] == 310
            ),
        )
        assert msgs[-1]["data"]["points_per_s"] == 100.0 and msgs[-1]["data"]["state"] == "running"
        status = live.flow_status(flow)
        assert status is not None and status["points_per_s"] == 100.0
        alert = {"tag": "temp", "kind": "range_high", "state": "raised", "severity": "warning", "value": 99.0}
        publisher.publish(f"acme/{flow}/a/l1/press-01/_alerts", json.dumps(alert), qos=1)
        msgs = receive_until(ws, lambda m: m.get("channel") == "alerts" and f"/{flow}/" in m["data"]["topic"])
        assert msgs[-1]["data"]["device"] == "press-01" and msgs[-1]["data"]["state"] == "raised"
    publisher.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # leave the broker clean


@pytest.mark.integration
def test_values_are_throttled_to_ten_per_second_per_tag(
    db: str, mqtt_url: str, publisher: mqtt.Client
) -> None:
    tag_topic = f"acme/t{uuid.uuid4().hex[:8]}/a/l1/press-01/temp"
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_schema(conn, HistorianConfig(url=db))
        upsert_tags(conn, [TagInfo(4242, "press-01", "temp", "degC", tag_topic)])
    prepare(db)
    app = create_app(Settings(database_url=db, mqtt_url=mqtt_url))
    with TestClient(app=app) as client, cookie_socket(client) as ws:
        assert app.state.live.wait_connected(10)
        ws.send_json({"subscribe": ["values:4242", "values:777"]})
        msgs = receive_until(ws, lambda m: m.get("type") == "subscribed")
        assert msgs[-1]["channels"] == ["values:4242"]
        assert any(m.get("type") == "error" and "777" in m["detail"] for m in msgs)
        assert app.state.live.watched() == {4242: 1}

        # the MQTT subscription is asynchronous: publish until the first value comes through
        def first_value() -> bool:
            publisher.publish(tag_topic, json.dumps({"value": -1.0, "quality": "good"}), qos=0)
            try:
                m = ws.receive_json(timeout=0.5)
            except queue.Empty:
                return False
            return m.get("channel") == "values:4242"

        deadline = time.monotonic() + 15
        while not first_value():
            assert time.monotonic() < deadline, "the tag's values never reached the socket"
        t0 = time.monotonic()
        n = 300
        for i in range(n):
            publisher.publish(tag_topic, json.dumps({"value": float(i), "quality": "good"}), qos=1)
        msgs = receive_until(
            ws, lambda m: m.get("channel") == "values:4242" and m["data"]["value"] == float(n - 1), timeout=30
        )
        elapsed = time.monotonic() - t0
        values = [
            m["data"]["value"] for m in msgs if m.get("channel") == "values:4242" and m["data"]["value"] >= 0
        ]
        assert values[-1] == n - 1  # the newest value of the burst always arrives (trailing edge)
        assert values == sorted(values)
        # at most one per 100 ms (plus the leading edge), however fast the burst came
        assert len(values) <= elapsed * 10 + 2, (len(values), elapsed)
        assert len(values) < n
        assert msgs[-1]["data"]["tag_id"] == 4242 and msgs[-1]["data"]["quality"] == "good"
        ws.send_json({"unsubscribe": ["values:4242"]})
        receive_until(ws, lambda m: m.get("type") == "unsubscribed")
        assert app.state.live.watched() == {}


@pytest.mark.integration
def test_metrics_expose_control_plane_counters_and_request_latency(db: str) -> None:
    from control.metrics import DEPLOYS, FLOW_RESTARTS, set_flow_states

    set_flow_states({"a": "running", "b": "failed"})
    FLOW_RESTARTS.labels(flow="a").inc()
    DEPLOYS.labels(path="hot").inc()
    prepare(db)
    with TestClient(app=create_app(Settings(database_url=db))) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 401
        text = client.get("/metrics", headers=login(client, "viewer")).text
    assert 'nexus_flows{state="running"} 1.0' in text and 'nexus_flows{state="failed"} 1.0' in text
    assert 'nexus_flows{state="stopped"} 0.0' in text
    assert 'nexus_flow_restarts_total{flow="a"}' in text and 'nexus_deploys_total{path="hot"}' in text
    assert "nexus_api_request_duration_seconds_bucket" in text and 'path="/health"' in text


def test_device_statistics_and_alerts_go_to_their_channels() -> None:
    sent: list[tuple[str, Any]] = []
    live = LiveStatus("mqtt://127.0.0.1:1", sink=lambda c, m: sent.append((c, m)))
    devices = {"press-01": {"latency_ms": 12.5, "breaker": "closed", "skipped_polls": 0, "version": 3}}
    live._handle("$nexus/status/flows/demo/1", json.dumps({"state": "running", "devices": devices}).encode())
    live._handle("acme/p1/a/l1/press-01/_alerts", b'{"tag": "temp", "state": "cleared"}')
    live._handle("acme/p1/a/l1/press-01/temp", b'{"value": 1.0}')  # nobody watches it: dropped
    assert [c for c, _ in sent] == ["flows", "devices:demo", "alerts"]
    assert sent[1][1] == {"flow": "demo", "process": "1", "devices": devices}
    assert sent[2][1]["device"] == "press-01" and sent[2][1]["topic"] == "acme/p1/a/l1/press-01"
