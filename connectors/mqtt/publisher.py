"""The Unified Namespace publisher: one JSON message per point on the tag's UNS topic.

Payload: ``{"value": 21.5, "timestamp": "2023-11-14T22:13:20.000000Z", "quality": "good", "unit": "degC"}``
(``value`` is ``null`` for NaN/inf, or the string of a text point).

>>> from core.tags import TagInfo
>>> tags = {7: TagInfo(7, "press-01", "temp", "degC", "acme/p1/a/l/press-01/temp")}
>>> b = PointBatch.from_values("press-01", [7, 7, 8], [21.5, float("nan"), 1], ts_ns=1_700_000_000 * 10**9)
>>> msgs, unknown = format_batch(b, _encode_tags(tags))
>>> msgs[0][0]
'acme/p1/a/l/press-01/temp'
>>> print(msgs[0][1].decode())
{"value":21.5,"timestamp":"2023-11-14T22:13:20.000000Z","quality":"good","unit":"degC"}
>>> msgs[1][1][:13], unknown
(b'{"value":null', [8])
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.config import MqttSinkConfig
from core.batch import PointBatch
from core.quality import QUALITY_NAMES
from core.tags import TagInfo

__all__ = ["BrokerUnavailable", "MqttPublishError", "PublishTimeout", "UnsPublisher", "format_batch"]

log = logging.getLogger(__name__)

_QUALITY_JSON: tuple[str, ...] = tuple(f'"quality":{json.dumps(name)},' for name in QUALITY_NAMES)


_PUBLISH = 0x30
_MAX_BLOB = 1 << 20
"""QoS 0 fast path: PUBLISH packets are packed into blobs of about this many bytes."""


def _varint(n: int) -> bytes:
    """MQTT's variable-length integer (the remaining length of a packet).

    >>> _varint(127), _varint(128), _varint(16_383)
    (b'\\x7f', b'\\x80\\x01', b'\\xff\\x7f')
    """
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pack_publish_qos0(
    messages: Iterable[tuple[str, str | bytes]], retain: bool
) -> list[tuple[bytearray, int]]:
    """MQTT 3.1.1 QoS 0 PUBLISH packets, concatenated into blobs of at most about ``_MAX_BLOB`` bytes.

    Returns ``(blob, message count)`` pairs. Topics with wildcards are refused like paho does.

    >>> [(bytes(b), n) for b, n in pack_publish_qos0([("a/b", b"1")], retain=False)]
    [(b'0\\x06\\x00\\x03a/b1', 1)]
    """
    header = bytes((_PUBLISH | (1 if retain else 0),))
    blobs: list[tuple[bytearray, int]] = []
    blob = bytearray()
    count = 0
    topics: dict[str, bytes] = {}
    for topic, payload in messages:
        t = topics.get(topic)
        if t is None:
            if "+" in topic or "#" in topic or not topic:
                raise ValueError(f"invalid topic for publishing: {topic!r}")
            raw = topic.encode()
            t = topics[topic] = len(raw).to_bytes(2, "big") + raw
        p = payload.encode() if isinstance(payload, str) else payload
        blob += header
        blob += _varint(len(t) + len(p))
        blob += t
        blob += p
        count += 1
        if len(blob) >= _MAX_BLOB:
            blobs.append((blob, count))
            blob, count = bytearray(), 0
    if count:
        blobs.append((blob, count))
    return blobs


class MqttPublishError(RuntimeError):
    """Base of the UNS publisher's errors."""


class BrokerUnavailable(MqttPublishError):  # noqa: N818 - the name says what happened
    """The broker could not be reached or refused the connection."""


class PublishTimeout(MqttPublishError):  # noqa: N818
    """Messages could not be handed over or acknowledged within the deadline."""


def _encode_tags(tags: Mapping[int, TagInfo]) -> dict[int, tuple[str, str]]:
    """Per tag: its topic and the constant payload tail (``"unit":...}``)."""
    return {tid: (t.topic, f'"unit":{json.dumps(t.unit)}}}') for tid, t in tags.items()}


def format_batch(
    batch: PointBatch, encoded: Mapping[int, tuple[str, str]]
) -> tuple[list[tuple[str, bytes]], list[int]]:
    """(topic, payload) per known point, and the tag ids of the points whose tag is unknown."""
    n = len(batch)
    if n == 0:
        return [], []
    ts = batch.ts_ns
    if n > 1 and ts[0] == ts[-1] and bool((ts == ts[0]).all()):  # one poll, one timestamp
        stamp = np.datetime_as_string(
            ts[:1].astype("datetime64[ns]").astype("datetime64[us]"), timezone="UTC"
        )
        stamps = [str(stamp[0])] * n
    else:
        stamps = np.datetime_as_string(
            ts.astype("datetime64[ns]").astype("datetime64[us]"), timezone="UTC"
        ).tolist()
    values = batch.values
    finite = np.isfinite(values)
    vals: list[str] = [repr(v) for v in values.tolist()]
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            vals[i] = "null"
    if batch.text:
        for i, text in batch.text.items():
            if 0 <= i < n:
                vals[i] = json.dumps(text)
    qualities = [_QUALITY_JSON[q] for q in batch.quality.tolist()]
    out: list[tuple[str, bytes]] = []
    unknown: list[int] = []
    get = encoded.get
    for tid, v, s, q in zip(batch.tag_ids.tolist(), vals, stamps, qualities, strict=True):
        tag = get(tid)
        if tag is None:
            unknown.append(tid)
            continue
        out.append((tag[0], f'{{"value":{v},"timestamp":"{s}",{q}{tag[1]}'.encode()))
    return out, unknown


class UnsPublisher:
    """One paho-mqtt client publishing point batches to the UNS; thread-safe and bounded.

    Connects at construction (``BrokerUnavailable`` after ``connect_timeout_s``) and reconnects by
    itself with backoff. At most ``max_queue`` messages are outstanding; beyond that
    :meth:`publish_batch` waits for completions up to ``publish_timeout_s``, then raises ``PublishTimeout``.
    """

    def __init__(self, config: MqttSinkConfig, tags: Mapping[int, TagInfo]) -> None:
        self.config = config
        self._encoded = _encode_tags(tags)
        self._broker = config.broker
        self._where = f"{self._broker.host}:{self._broker.port}"
        self._cond = threading.Condition()
        self._connected = False
        self._connect_error: str | None = None
        self._warned: set[int] = set()
        self.published = 0
        """Messages handed to the client."""
        self.acked = 0
        """Messages sent (QoS 0) or acknowledged by the broker (QoS 1/2)."""
        self.dropped = 0
        """QoS 0 messages dropped because the client was disconnected."""
        self.unknown_tags = 0
        """Points skipped because their tag id is not configured."""
        self._closed = False
        self._blobs: dict[int, int] = {}
        """QoS 0 fast path: messages in each packed blob handed to paho, by the blob's message id."""

        client = make_client(self._broker, config.client_id or unique_client_id("nexus-uns"))
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(config.max_queue)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(self._broker.host, self._broker.port, keepalive=config.keepalive_s)
        client.loop_start()
        try:
            self._wait_connected(config.connect_timeout_s)
        except BaseException:
            client.loop_stop()
            raise

    # ---------------------------------------------------------------- paho callbacks (network thread)

    def update_tags(self, tags: Mapping[int, TagInfo]) -> None:
        """Learn (or relearn: topic, unit) the given tags; tags already known and not given stay
        known, so points of a removed tag still in flight are published."""
        encoded = {**self._encoded, **_encode_tags(tags)}
        self._encoded = encoded  # one reference swap: a concurrent publish sees the old or the new map

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._cond:
            if getattr(reason, "is_failure", False):
                self._connected = False
                self._connect_error = str(reason)
            else:
                self._connected = True
                self._connect_error = None
                log.info("connected to MQTT broker %s", self._where)
            self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._closed:
            log.warning("disconnected from MQTT broker %s (%s); reconnecting", self._where, reason)

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, _reason: object, _p: object) -> None:
        with self._cond:
            self.acked += self._blobs.pop(mid, 1)
            self._cond.notify_all()

    # ---------------------------------------------------------------- API

    @property
    def connected(self) -> bool:
        return self._connected

    def _wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._connected:
                remaining = deadline - time.monotonic()
                if self._connect_error is not None or remaining <= 0:
                    why = self._connect_error or f"no connection within {timeout:g} s"
                    raise BrokerUnavailable(f"MQTT broker {self._where} unavailable: {why}")
                self._cond.wait(remaining)

    def publish_batch(self, batch: PointBatch) -> int:
        """Publish one message per point of a known tag; returns the number handed to the client."""
        if self._closed:
            raise MqttPublishError("the UNS publisher is closed")
        messages, unknown = format_batch(batch, self._encoded)
        if unknown:
            self._count_unknown(unknown, batch.device_id)
        return self.publish_messages(messages)

    def publish_messages(self, messages: Iterable[tuple[str, str | bytes]]) -> int:
        """Publish ready ``(topic, payload)`` pairs with the configured QoS and retain flag.

        QoS 0 takes a fast path when the installed paho offers it: the batch's PUBLISH packets are
        packed into one buffer and handed to paho's network thread as a single write, instead of one
        queue entry, one wake-up and one ``send()`` per message (see BENCHMARKS.md). QoS 1/2 go through
        ``paho.publish`` one by one (paho keeps each message for its acknowledgement and redelivery).
        """
        if self._closed:
            raise MqttPublishError("the UNS publisher is closed")
        cfg = self.config
        if cfg.qos == 0 and self._fast_qos0:
            return self._publish_packed(messages)
        publish = self._client.publish
        sent = 0
        pending = 0  # handed over but not yet added to `published` (one lock per batch, not per message)
        for topic, payload in messages:
            if self.published + pending - self.acked >= cfg.max_queue:
                pending = self._commit(pending)
                self._wait_room(cfg.publish_timeout_s)
            info = publish(topic, payload, cfg.qos, cfg.retain)
            while info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                pending = self._commit(pending)
                self._wait_room(cfg.publish_timeout_s, force=True)
                info = publish(topic, payload, cfg.qos, cfg.retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and cfg.qos == 0:
                with self._cond:
                    self.dropped += 1
                continue
            pending += 1
            sent += 1
        self._commit(pending)
        return sent

    def _commit(self, pending: int) -> int:
        if pending:
            with self._cond:
                self.published += pending
        return 0

    @property
    def _fast_qos0(self) -> bool:
        client = self._client
        return (
            hasattr(client, "_packet_queue") and hasattr(client, "_mid_generate") and hasattr(client, "_sock")
        )

    def _publish_packed(self, messages: Iterable[tuple[str, str | bytes]]) -> int:
        cfg = self.config
        client: Any = self._client
        sent = 0
        for blob, count in pack_publish_qos0(messages, cfg.retain):
            if self.published - self.acked >= cfg.max_queue:
                self._wait_room(cfg.publish_timeout_s)
            if client._sock is None:  # not connected: QoS 0 messages are dropped, as paho does
                with self._cond:
                    self.dropped += count
                continue
            mid = client._mid_generate()
            with self._cond:
                self._blobs[mid] = count
                self.published += count
            client._packet_queue(_PUBLISH, blob, mid, 0, mqtt.MQTTMessageInfo(mid))
            sent += count
        return sent

    def _count_unknown(self, tag_ids: list[int], device_id: str) -> None:
        with self._cond:
            self.unknown_tags += len(tag_ids)
            new = set(tag_ids) - self._warned
            self._warned |= new
        for tid in sorted(new):
            log.warning("UNS publisher: skipping points of unknown tag id %d (device %r)", tid, device_id)

    def _wait_room(self, timeout: float, *, force: bool = False) -> None:
        """Wait until fewer than ``max_queue`` messages are outstanding (or one completes, if ``force``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            start_acked = self.acked
            while True:
                outstanding = self.published - self.acked
                if (self.acked > start_acked) if force else outstanding < self.config.max_queue:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PublishTimeout(
                        f"MQTT broker {self._where}: {outstanding} messages still outstanding after "
                        f"{timeout:g} s (connected={self._connected})"
                    )
                self._cond.wait(remaining)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message handed over so far is sent (QoS 0) or acknowledged (QoS 1/2)."""
        timeout = self.config.publish_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self.published
            while self.acked < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PublishTimeout(
                        f"MQTT broker {self._where}: {target - self.acked} messages not acknowledged "
                        f"within {timeout:g} s"
                    )
                self._cond.wait(remaining)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then disconnect and stop the network thread (also when the flush times out)."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._client.disconnect()
            self._client.loop_stop()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "published": self.published,
                "acked": self.acked,
                "dropped": self.dropped,
                "unknown_tags": self.unknown_tags,
                "outstanding": self.published - self.acked,
            }

    def __enter__(self) -> UnsPublisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
