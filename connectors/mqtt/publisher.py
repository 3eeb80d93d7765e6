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
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from connectors.mqtt.config import MqttSinkConfig
from core.batch import PointBatch
from core.quality import QUALITY_NAMES
from core.tags import TagInfo

__all__ = ["BrokerUnavailable", "MqttPublishError", "PublishTimeout", "UnsPublisher", "format_batch"]

log = logging.getLogger(__name__)

_QUALITY_JSON: tuple[str, ...] = tuple(f'"quality":{json.dumps(name)},' for name in QUALITY_NAMES)


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

        client_id = (
            config.client_id or f"nexus-uns-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311
        )
        if self._broker.username:
            client.username_pw_set(self._broker.username, self._broker.password)
        if self._broker.tls:
            client.tls_set()
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(config.max_queue)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
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

    def _on_publish(self, _c: mqtt.Client, _u: object, _mid: int, _reason: object, _p: object) -> None:
        with self._cond:
            self.acked += 1
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
        """Publish ready ``(topic, payload)`` pairs with the configured QoS and retain flag."""
        if self._closed:
            raise MqttPublishError("the UNS publisher is closed")
        cfg = self.config
        publish = self._client.publish
        sent = 0
        for topic, payload in messages:
            if self.published - self.acked >= cfg.max_queue:
                self._wait_room(cfg.publish_timeout_s)
            info = publish(topic, payload, cfg.qos, cfg.retain)
            while info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self._wait_room(cfg.publish_timeout_s, force=True)
                info = publish(topic, payload, cfg.qos, cfg.retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and cfg.qos == 0:
                with self._cond:
                    self.dropped += 1
                continue
            with self._cond:
                self.published += 1
            sent += 1
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
