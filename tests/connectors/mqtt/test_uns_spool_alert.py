"""Issue 11 (1): a spool that drops records raises a platform alert — also while the broker is away.

A UNS spool fills because the broker is unreachable, so its drop alert cannot be published when the
drop happens; it used to be skipped then (only the log line and the Prometheus counter remained).
Real mosquitto with persistence (stopped and restarted by PID), the real publisher and its real
spool, bounded small so an outage overflows it, and an independent subscriber with a persistent
session on ``$nexus/alerts/spool/#``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.chaos import Mosquitto
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.publisher import UnsPublisher
from core.batch import PointBatch
from core.tags import TagInfo
from nexus.embedded import free_port

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000
TAGS = {i: TagInfo(i, "press-01", f"t{i}", "", f"acme/order/press-01/t{i}") for i in range(1, 101)}


def test_spool_drops_during_an_outage_are_alerted_once_the_broker_is_back(
    tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    broker = Mosquitto(tmp_path / "broker", free_port())
    broker.start()
    alerts: list[dict[str, Any]] = []
    lock = threading.Lock()

    subscribed = threading.Event()

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, _codes: object, _p: object) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            alerts.append({"topic": msg.topic, **json.loads(msg.payload)})

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alert-watcher", clean_session=False)
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.reconnect_delay_set(1, 1)
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("$nexus/alerts/spool/#", qos=1)
    sub.loop_start()
    pub: UnsPublisher | None = None
    try:
        wait_for(sub.is_connected, timeout=10, what="the watcher's connection")
        wait_for(subscribed.is_set, timeout=10, what="the watcher's subscription")
        broker.stop()  # it saves the persistent session: the alert is queued for the watcher at once
        cfg = MqttSinkConfig(
            url=broker.url, qos=1, connect_timeout_s=0.2, reconnect_max_s=1,
            spool_dir=str(tmp_path / "spool"), spool_max_bytes=64 << 10,
        )  # fmt: skip
        pub = UnsPublisher(cfg, TAGS)  # the broker is away: everything goes to the spool
        ids = np.array(list(TAGS), dtype=np.int64)
        for i in range(1, 201):  # ~500 kB of records into a 64 kB spool: the oldest segments go
            pub.publish_batch(PointBatch.from_values("press-01", ids, np.ones(len(ids)), ts_ns=T0 + i * 1000))
        dropped = pub.stats()["spool_dropped_records"]
        assert dropped > 0, pub.stats()  # the case under test happened
        assert pub.stats()["spool_drop_alerts"] == 0  # nothing could be published yet
        broker.start()
        wait_for(
            lambda: sum(a["records"] for a in alerts) >= dropped,
            timeout=60,
            what=f"alerts for {dropped} dropped records (got {alerts})",
        )
        assert pub.wait_drained(60), pub.stats()
        stats = pub.stats()
    finally:
        if pub is not None:
            pub.close(timeout=5)
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
    assert {a["topic"] for a in alerts} == {"$nexus/alerts/spool/uns"}
    assert {a["reason"] for a in alerts} == {"max_bytes"}
    assert sum(a["records"] for a in alerts) == dropped == stats["spool_dropped_records"]
    assert stats["spool_dropped_messages"] == 100 * dropped  # each record: one poll of the 100 tags
    assert stats["spool_drop_alerts"] == len(alerts)
    # the alerts are not UNS messages: the publisher's own counts stay exact
    assert stats["acked"] == stats["published"] == stats["replayed"] and stats["outstanding"] == 0, stats
