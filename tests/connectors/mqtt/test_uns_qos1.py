"""The UNS publisher's QoS 1 path (own message-id table, batched PUBACKs) against a real mosquitto.

Redelivery is forced deterministically with a TCP relay between publisher and broker that can hold
back the broker's PUBACKs and then cut the connection: every message in flight at that moment is
unacknowledged, so all of them must come back (re-spooled, replayed as ``"historical": true``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mqtt.batch_ack import BatchAckClient
from connectors.mqtt.config import MqttSinkConfig, parse_mqtt_url
from connectors.mqtt.publisher import PublishTimeout, UnsPublisher
from core.batch import PointBatch
from core.tags import TagInfo
from nexus.embedded import MosquittoBroker, free_port

T0 = 1_700_000_000_000_000_000
TAGS = {i: TagInfo(i, "press-01", f"t{i}", "degC", f"acme/q1/press-01/t{i}") for i in range(1, 51)}
IDS = np.arange(1, 51, dtype=np.int64)


def _batch(k: int) -> PointBatch:
    """50 points, one per tag, timestamps unique per batch (so every message has its own key)."""
    return PointBatch.from_values("press-01", IDS, np.full(50, float(k)), ts_ns=T0 + k * 1_000_000)


# ------------------------------------------------------------------ the chunked reader (no broker)


def _packet(kind: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes((kind,)) + bytes(length) + body


_PACKETS = st.one_of(
    st.integers(1, 65535).map(lambda m: ("ack", m)),
    st.just(("other", (0xD0, b""))),  # PINGRESP
    st.binary(max_size=300).map(lambda b: ("other", (0x30, b))),  # PUBLISH of any length
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PACKETS, max_size=40), st.lists(st.integers(1, 64), max_size=30))
def test_split_finds_every_packet_in_order_whatever_the_read_boundaries(
    packets: list[tuple[str, Any]], cuts: list[int]
) -> None:
    stream = b"".join(
        _packet(0x40, pkt.to_bytes(2, "big")) if kind == "ack" else _packet(*pkt) for kind, pkt in packets
    )
    buf, got, pos = bytearray(), [], 0
    for size in [*cuts, len(stream)]:  # reads of arbitrary sizes, the last one takes the rest
        buf += stream[pos : pos + size]
        pos += size
        items, used = BatchAckClient._split(buf)
        del buf[:used]
        for item in items:
            got += [("ack", m) for m in item] if isinstance(item, list) else [("other", item)]
    assert not buf
    assert got == packets


# ------------------------------------------------------------------ against mosquitto


class _Collector:
    """A paho subscriber at QoS 1 keeping every (topic, payload) it receives."""

    def __init__(self, url: str) -> None:
        u = parse_mqtt_url(url)
        self.lock = threading.Lock()
        self.keys: list[tuple[str, str]] = []
        self.historical = 0
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"q1-sub-{free_port()}")
        self.client.on_connect = lambda c, *_: c.subscribe("acme/q1/#", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(u.host, u.port)
        self.client.loop_start()
        assert ready.wait(10), "subscription not acknowledged"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self.lock:
            self.keys.append((msg.topic, body["timestamp"]))
            self.historical += bool(body.get("historical"))

    def distinct(self) -> set[tuple[str, str]]:
        with self.lock:
            return set(self.keys)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class _Relay:
    """TCP relay 127.0.0.1:port -> broker; ``hold_acks`` keeps the broker's bytes back, ``cut`` drops
    the current connection (the client reconnects through the relay)."""

    def __init__(self, broker_port: int) -> None:
        self.port = free_port()
        self.broker_port = broker_port
        self.hold_acks = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_broker: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if from_broker and self.hold_acks.is_set():
                    continue  # swallowed: the client never sees these PUBACKs
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop = True
        self._server.close()
        self.cut()


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    if not MosquittoBroker.available():
        pytest.skip("mosquitto is not installed")
    broker = MosquittoBroker(free_port())
    broker.start()
    yield broker
    broker.stop()


def test_qos1_every_message_acknowledged_and_received(
    mosquitto: MosquittoBroker, wait_for: Callable[..., Any]
) -> None:
    sub = _Collector(mosquitto.url)
    pub = UnsPublisher(MqttSinkConfig(url=mosquitto.url, qos=1), TAGS)
    try:
        for k in range(200):  # 10,000 messages, more than one packed write per batch group
            assert pub.wait_for_room(50, 30)
            assert pub.publish_batch(_batch(k)) == 50
        pub.flush(30)
        s = pub.stats()
        assert (s["published"], s["acked"], s["lost"], s["spooled"]) == (10_000, 10_000, 0, 0)
        assert s["outstanding"] == 0
        wait_for(lambda: len(sub.distinct()) == 10_000, timeout=60, what="10,000 distinct messages")
        assert sub.historical == 0
    finally:
        pub.close(timeout=5)
        sub.close()


def test_qos1_unacknowledged_messages_are_redelivered_after_the_connection_drops(
    mosquitto: MosquittoBroker, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    relay = _Relay(mosquitto.port)
    sub = _Collector(mosquitto.url)
    cfg = MqttSinkConfig(
        url=f"mqtt://127.0.0.1:{relay.port}", qos=1, spool_dir=str(tmp_path), reconnect_max_s=1
    )
    pub = UnsPublisher(cfg, TAGS)
    try:
        for k in range(20):
            pub.publish_batch(_batch(k))
        pub.flush(30)  # 1,000 acknowledged the normal way
        relay.hold_acks.set()
        for k in range(20, 60):
            pub.publish_batch(_batch(k))
        # the broker receives the 2,000 held ones (the subscriber sees them) but no PUBACK comes back
        wait_for(lambda: len(sub.distinct()) == 3_000, timeout=60, what="the broker to receive all")
        assert pub.acked == 1_000 and pub.outstanding == 2_000
        relay.hold_acks.clear()
        relay.cut()
        wait_for(lambda: pub.lost == 2_000, timeout=30, what=f"the unacknowledged re-spooled: {pub.stats()}")
        assert pub.wait_drained(60), pub.stats()
        pub.flush(30)
        s = pub.stats()
        assert s["respooled"] == s["lost"] == 2_000 and s["replayed"] == 2_000
        assert s["published"] == s["acked"] + s["lost"] and s["outstanding"] == 0
        # at least once: the 2,000 arrive again, marked historical (the broker had them already)
        wait_for(lambda: sub.historical == 2_000, timeout=60, what="the replayed copies")
        assert len(sub.distinct()) == 3_000
    finally:
        pub.close(timeout=5)
        sub.close()
        relay.close()


def test_qos1_unacknowledged_at_close_stay_in_the_spool(
    mosquitto: MosquittoBroker, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    relay = _Relay(mosquitto.port)
    cfg = MqttSinkConfig(url=f"mqtt://127.0.0.1:{relay.port}", qos=1, spool_dir=str(tmp_path))
    pub = UnsPublisher(cfg, TAGS)
    try:
        relay.hold_acks.set()
        pub.publish_batch(_batch(0))
        assert pub.outstanding == 50
    finally:
        with pytest.raises(PublishTimeout):
            pub.close(timeout=0.5)  # the flush times out: the 50 are kept, not forgotten
        relay.close()
    again = UnsPublisher(cfg.model_copy(update={"url": mosquitto.url}), TAGS)
    try:
        assert again.wait_drained(30), again.stats()
        again.flush(10)
        assert again.replayed == 50 and again.acked == 50
    finally:
        again.close(timeout=5)
