"""Bytewax source subscribing to topic filters on an MQTT broker: one partition per device.

Each partition (``mqtt:{device_id}``) owns one paho client running in paho's own network thread
(``loop_start``). It subscribes inside ``on_connect``, so every reconnect renews the
subscriptions, and ``on_message`` only appends ``(topic, payload, receive time)`` to a bounded
queue: when the dataflow falls behind by ``max_queue`` messages the *oldest* are dropped and
counted. Dropping beats blocking: a blocked network thread stops answering keepalives, the broker
drops the connection, and with QoS 1/2 the backlog just moves to the broker; for live telemetry
the newest values are the ones worth keeping.

``next_batch`` never blocks: it swaps the queue out under a lock, decodes every message (JSON
paths, timestamps, qualities) and returns one columnar :class:`~core.batch.PointBatch` for the
device per drain. ``next_awake`` returns ``None`` (call again at once) while messages are waiting.
With napping on (``max_wait_s``, :mod:`connectors.nap`) a partition with nothing queued may be its
worker's sleeper, waiting in ``next_batch`` until ``on_message`` wakes it, and otherwise asks to be
called at every activation the sleeper paces: a message is handed over as soon as it arrives.
With napping off, ``next_awake`` is ``now + idle_wake_s`` when the queue is empty: a lone message
waits at most ``idle_wake_s`` (20 ms by default) and an idle source costs ~50 cheap calls per second.

Payload problems never stop the flow. The tag gets a NaN point with a bad quality and a counted,
rate-limited warning names the topic and the path:

- malformed JSON, a path that is not in the payload, an object or list where a value should be:
  ``CONFIG_ERROR``;
- a value that is not a number for a ``number`` tag, ``null``, NaN or infinity: ``OUT_OF_RANGE``;
- a timestamp that cannot be read, lies more than ``max_clock_skew_s`` in the future or more than
  ``max_past_s`` in the past (:mod:`core.timestamps`, the rule of every source): the receive time
  is used instead, the point is ``UNCERTAIN`` and ``nexus_timestamps_replaced`` counts it.

Timestamps come from the payload when the tag has a ``timestamp_path`` (ISO-8601, naive taken as
UTC, or epoch s/ms/µs/ns by magnitude, see :mod:`connectors.mqtt.source_config`), else they are
the time paho handed over the message.

No loss at QoS 1 (acknowledged only once durable): paho runs with ``manual_ack``. Each drained
batch is appended to the partition's disk spool (:mod:`connectors.spool`, ``{spool_dir}/{device}``)
before it is emitted, and its messages' PUBACKs are sent only when the spool's group commit has
fsynced it — so a message the broker considers delivered is on disk. ``snapshot()`` is the spool
sequence number of the last emitted batch; a resumed partition (Bytewax recovery, or a restart
without it: the spool's own cursor) first re-emits the spooled batches after it, so a ``kill -9``
between receive and sink loses nothing (sinks are idempotent or mark replays). At every snapshot the
spool is trimmed to the previous snapshot. With a fixed ``client_id``, ``clean_session=False`` and
QoS 1 the broker also keeps what arrives while the flow is down. A QoS 1 message dropped from a full
queue (``max_queue``) is acknowledged as dropped and counted — a bounded, visible loss rather than a
broker that stops delivering. Set ``stop_event`` to drain: the partition returns what is queued,
then raises ``StopIteration``.

>>> decode_timestamp("2024-05-01T12:00:00Z"), decode_timestamp("2024-05-01T12:00:00")
(1714564800000000000, 1714564800000000000)
>>> decode_timestamp(1714564800), decode_timestamp(1714564800123), decode_timestamp(1714564800123456789)
(1714564800000000000, 1714564800123000000, 1714564800123456789)
>>> lookup({"values": [{"v": 1}, {"v": 2.5}]}, ("values", 1, "v"))
2.5
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.mqtt.client import make_client, reason_failed, unique_client_id
from connectors.mqtt.source_config import (
    MqttPayload,
    MqttSourceConfig,
    MqttSubscription,
    PathPart,
)
from connectors.nap import WorkerNap, max_wait_from_env, worker_nap
from connectors.polling import ConfigRegistry, DeviceChange
from connectors.spool import Spool, batches_from, encode_batch
from core.batch import PointBatch, tag_id_for
from core.quality import QUALITY_DTYPE, QUALITY_NAMES, Quality
from core.timerslack import restore_thread
from core.timestamps import TimestampWindow, count_replaced

__all__ = [
    "MqttSource",
    "MqttSourceStats",
    "PayloadError",
    "decode_quality",
    "decode_timestamp",
    "lookup",
]

log = logging.getLogger(__name__)

_ROUTE_CACHE_MAX = 10_000
_NS_PER_S = 1_000_000_000


class PayloadError(ValueError):
    """A payload that does not fit the tag's mapping; ``quality`` says how the point is marked."""

    def __init__(self, quality: Quality, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.quality = quality
        self.reason = reason
        self.detail = detail


_MISSING = object()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(raw: Any, limit: int = 80) -> str:
    """``repr(raw)`` cut to ``limit`` characters: a payload value goes into a log line."""
    return _cut(repr(raw), limit)


def lookup(doc: Any, path: Sequence[PathPart]) -> Any:
    """The value at ``path`` in a decoded JSON document; :class:`PayloadError` if it is not there."""
    node = doc
    for part in path:
        try:
            if isinstance(part, int):
                if not isinstance(node, list):
                    raise TypeError
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise TypeError
                node = node[part]
        except (KeyError, IndexError, TypeError):
            raise PayloadError(Quality.CONFIG_ERROR, "missing_path", f"no {part!r} at this level") from None
    return node


def decode_timestamp(raw: Any) -> int:
    """Nanoseconds since the epoch from an ISO-8601 string (naive: UTC) or an epoch number.

    Numbers are told apart by magnitude: ``|x| < 1e11`` seconds, ``< 1e14`` milliseconds,
    ``< 1e17`` microseconds, else nanoseconds. :class:`ValueError` for anything else.
    """
    if isinstance(raw, bool):
        raise ValueError(f"a boolean is not a timestamp: {raw!r}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise ValueError(f"timestamp {raw!r} is not finite")
        mag = abs(raw)
        if isinstance(raw, int):
            if mag < 10**11:
                return raw * _NS_PER_S
            if mag < 10**14:
                return raw * 1_000_000
            if mag < 10**17:
                return raw * 1_000
            return raw
        # a float64 holds an epoch in seconds to about a microsecond: round there, not to noise
        if mag < 1e11:
            return round(raw * 1e6) * 1_000
        if mag < 1e14:
            return round(raw * 1e3) * 1_000
        if mag < 1e17:
            return round(raw) * 1_000
        return round(raw)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise ValueError(f"timestamp {raw!r} is neither ISO-8601 nor a number") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * 1_000
    raise ValueError(f"timestamp of type {type(raw).__name__} is not supported")


_QUALITY_BY_NAME: dict[str, int] = {
    name: code for code, name in enumerate(QUALITY_NAMES) if code in {int(q) for q in Quality}
}


def decode_quality(raw: Any) -> int:
    """A quality code from a payload: a boolean (true: good), a code 0..255 or a quality name.

    >>> decode_quality(True), decode_quality(131), decode_quality("uncertain"), decode_quality("BAD")
    (0, 131, 64, 128)
    """
    if isinstance(raw, bool):
        return int(Quality.GOOD if raw else Quality.BAD)
    if isinstance(raw, int) and 0 <= raw <= 255:
        return raw
    if isinstance(raw, str):
        code = _QUALITY_BY_NAME.get(raw.strip().lower())
        if code is not None:
            return code
    raise ValueError(f"quality {raw!r} is neither a boolean, a code 0..255 nor a quality name")


def _coerce(raw: Any, value_type: str) -> tuple[float, str | None]:
    """(value, text) of a raw scalar for a tag of ``value_type``; :class:`PayloadError` if it does not fit."""
    if isinstance(raw, bool):
        return (math.nan, "true" if raw else "false") if value_type == "text" else (float(raw), None)
    if isinstance(raw, int | float):
        if value_type == "text":
            return math.nan, json.dumps(raw)
        value = float(raw)
        if not math.isfinite(value):
            raise PayloadError(Quality.OUT_OF_RANGE, "not_finite", f"value {raw!r} is not finite")
        return value, None
    if isinstance(raw, str):
        if value_type == "text":
            return math.nan, raw
        try:
            value = float(raw)
        except ValueError:
            if value_type == "auto":
                return math.nan, raw
            raise PayloadError(
                Quality.OUT_OF_RANGE, "not_numeric", f"value {raw[:40]!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise PayloadError(Quality.OUT_OF_RANGE, "not_finite", f"value {raw!r} is not finite")
        return value, None
    if raw is None:
        raise PayloadError(Quality.OUT_OF_RANGE, "null", "value is null")
    raise PayloadError(
        Quality.CONFIG_ERROR, "not_scalar", f"value is a JSON {type(raw).__name__}, not a scalar"
    )


def _plain(payload: bytes) -> Any:
    """A payload without a JSON path: a number, ``true``/``false``, a JSON string or plain text."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError(Quality.CONFIG_ERROR, "not_utf8", "payload is not UTF-8 text") from None
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


@dataclass(frozen=True, slots=True)
class _Extractor:
    """One tag fed by a topic, with its compiled paths."""

    name: str
    tag_id: int
    payload: MqttPayload
    value_path: tuple[PathPart, ...] | None
    timestamp_path: tuple[PathPart, ...] | None
    quality_path: tuple[PathPart, ...] | None

    @classmethod
    def build(cls, device_id: str, name: str, payload: MqttPayload) -> _Extractor:
        return cls(
            name=name,
            tag_id=tag_id_for(device_id, name),
            payload=payload,
            value_path=payload.compiled_value_path(),
            timestamp_path=payload.compiled_timestamp_path(),
            quality_path=payload.compiled_quality_path(),
        )


@dataclass(slots=True)
class MqttSourceStats:
    """Counters of one device's partition; :meth:`stats` hands out copies."""

    device_id: str
    connected: bool = False
    subscribed: bool = False
    """Every subscription of the current connection was granted by the broker."""
    connects: int = 0
    received: int = 0
    """Messages handed over by paho."""
    dropped: int = 0
    """Messages dropped because the queue was full (the oldest go first)."""
    unmatched: int = 0
    """Messages whose topic no mapping of the device matched."""
    points: int = 0
    bad_points: int = 0
    """Points marked bad because of the payload (malformed JSON, missing path, not a number, ...)."""
    timestamp_errors: int = 0
    """Payload timestamps that could not be read or lay in the future (receive time used)."""
    refused_level_tags: int = 0
    """Messages ignored because their topic level would exceed ``max_level_tags`` names."""
    batches: int = 0
    replayed_batches: int = 0
    """Spooled batches emitted again after a restart (emitted before it, maybe not yet stored)."""


@functools.cache
def _metrics() -> dict[str, Any]:
    from prometheus_client import Counter

    label = ["device"]
    return {
        "received": Counter("nexus_mqtt_source_messages", "MQTT messages received by the source", label),
        "dropped": Counter(
            "nexus_mqtt_source_dropped", "MQTT messages dropped because the source queue was full", label
        ),
        "bad_points": Counter(
            "nexus_mqtt_source_payload_errors", "Points marked bad because of their MQTT payload", label
        ),
    }


class _RateLimitedWarnings:
    """At most one warning per key and interval; the ones in between are counted and reported."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def warn(self, key: tuple[str, str], message: str, *args: object) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-math.inf, 0))
        if now - last < self.interval_s:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) > 10_000:  # keys are (tag, problem): bounded by the declared tags anyway
            self._last.clear()
        self._last[key] = (now, 0)
        if suppressed:
            log.warning(message + " (%d similar warnings suppressed)", *args, suppressed)
        else:
            log.warning(message, *args)


_SPOOL_SYNC_S = 0.01
"""The source spool's group commit: short, because the broker waits for the acks (mosquitto sends at
most ``max_inflight_messages``, 20 by default, unacknowledged QoS 1 messages per client)."""


class _MqttPartition(StatefulSourcePartition[PointBatch, int | None]):
    def __init__(
        self,
        config: MqttSourceConfig,
        device_id: str,
        subscriptions: Sequence[MqttSubscription],
        *,
        stop_event: threading.Event | None,
        spool_dir: str | None = None,
        resume_state: int | None = None,
        max_wait_s: float = 0.0,
    ) -> None:
        self.config = config
        self._max_wait_s = max_wait_s
        self._nap: WorkerNap | None = None
        """The nap of the worker thread calling :meth:`next_batch` (:mod:`connectors.nap`; ``None``:
        napping off or not looked up yet); ``on_message`` wakes it."""
        self._nap_looked_up = max_wait_s <= 0
        self._called_at = datetime.now(UTC)
        self.device_id = device_id
        self._subs = list(subscriptions)
        self._stop_event = stop_event
        self._idle = timedelta(seconds=config.idle_wake_s)
        self._window = TimestampWindow(max_past_s=config.max_past_s, max_future_s=config.max_clock_skew_s)
        self._explicit: list[list[tuple[str | None, _Extractor]]] = [
            [(m.topic, _Extractor.build(device_id, m.name, m)) for m in sub.tags] for sub in self._subs
        ]
        self._routes: dict[str, tuple[_Extractor, ...]] = {}
        self._warnings = _RateLimitedWarnings(config.warn_interval_s)
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, bytes, int]] = deque(maxlen=config.max_queue)
        self._c = MqttSourceStats(device_id=device_id)
        self._granted: dict[int | None, bool] = {}
        self._closed = False
        self._change: DeviceChange | None = None
        """A hot config change waiting for the next batch boundary (set from the listener's thread)."""
        self.on_close: list[Callable[[], None]] = []
        m = _metrics()
        self._m = {name: counter.labels(device_id) for name, counter in m.items()}
        self._m_reported = {"received": 0, "dropped": 0}

        # the ack path: QoS 1/2 messages are acknowledged once their batch is durable in the spool
        self._acks: deque[tuple[int, int]] = deque(maxlen=config.max_queue)
        """(mid, qos) of every queued message (QoS 0: nothing to ack), aligned with the queue."""
        self._pending_acks: deque[tuple[int, list[tuple[int, int]]]] = deque()
        """(spool seq, the messages it holds) waiting for the group commit."""
        self.spool = Spool(
            spool_dir,
            name=f"mqtt-source-{device_id}",
            sync_interval_s=_SPOOL_SYNC_S,
            on_durable=self._on_durable,
        )
        start = self.spool.acked if resume_state is None else max(resume_state, self.spool.acked)
        self._replay_after: int | None = start if self.spool.last_seq > start else None
        self._last_snapshot = start
        self.acks_sent = 0

        broker = config.broker
        self._where = broker.redacted()
        client_id = f"{config.client_id}-{device_id}" if config.client_id else unique_client_id("nexus-src")
        client = make_client(
            broker,
            client_id,
            clean_session=config.clean_session,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
        )
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        client.connect_async(broker.host, broker.port, keepalive=config.keepalive_s)
        client.loop_start()

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_failed(reason):
            log.warning(
                "MQTT source %s: broker %s refused the connection: %s", self.device_id, self._where, reason
            )
            return
        topics: list[tuple[str, int]] = [
            (sub.topic_filter, self.config.qos if sub.qos is None else sub.qos) for sub in self._subs
        ]
        _rc, mid = client.subscribe(topics)
        with self._lock:
            c = self._c
            c.connected, c.subscribed, c.connects = True, False, c.connects + 1
            self._granted = {mid: False}
        log.info(
            "MQTT source %s connected to %s, subscribing to %d filters",
            self.device_id,
            self._where,
            len(topics),
        )

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, reasons: list[Any], _p: object) -> None:
        subs = self._subs
        failed = [
            str(subs[i].topic_filter) if i < len(subs) else f"#{i}"
            for i, r in enumerate(reasons)
            if reason_failed(r)
        ]
        if failed:
            log.error(
                "MQTT source %s: broker %s refused the subscriptions %s", self.device_id, self._where, failed
            )
        with self._lock:
            if mid in self._granted and not failed:
                self._c.subscribed = True

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._lock:
            self._c.connected = self._c.subscribed = False
        if not self._closed:
            log.warning(
                "MQTT source %s disconnected from %s (%s); reconnecting", self.device_id, self._where, reason
            )

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        item = (msg.topic, bytes(msg.payload), time.time_ns())
        dropped = (0, 0)
        with self._lock:
            q = self._queue
            if len(q) == q.maxlen:
                self._c.dropped += 1
                dropped = self._acks[0]  # the oldest message goes (deque maxlen), and its ack with it
            q.append(item)
            self._acks.append((msg.mid, msg.qos))
            self._c.received += 1
        nap = self._nap
        if nap is not None:
            nap.notify()
        if dropped[1]:
            client.ack(*dropped)  # counted as dropped: let the broker go on delivering

    def _on_durable(self, seq: int) -> None:
        """Spool group commit (flusher thread): acknowledge the messages of every batch up to ``seq``."""
        ready: list[tuple[int, int]] = []
        with self._lock:
            while self._pending_acks and self._pending_acks[0][0] <= seq:
                ready += self._pending_acks.popleft()[1]
        for mid, qos in ready:
            self._client.ack(mid, qos)
        if ready:
            with self._lock:
                self.acks_sent += len(ready)

    # -- the Bytewax contract ------------------------------------------------------------------

    def next_batch(self) -> list[PointBatch]:
        self._called_at = datetime.now(UTC)
        if not self._nap_looked_up:
            self._nap = worker_nap(self._max_wait_s)
            self._nap_looked_up = True
        if self._replay_after is not None:
            return self._replay()
        with self._lock:
            items = self._queue
            acks = self._acks
            if items:
                self._queue = deque(maxlen=self.config.max_queue)
                self._acks = deque(maxlen=self.config.max_queue)
            change, self._change = self._change, None
        out: list[Any] = []
        if items:
            batch = self._decode(items)  # what arrived so far, with the mapping it arrived under
            if len(batch):
                seq = self.spool.append(encode_batch(batch))
                if (
                    seq is None
                ):  # the spool volume is full (counted, alerted): ack, the point is live in the flow
                    seq = self.spool.durable_seq
                out.append(batch)
            else:
                seq = self.spool.durable_seq  # nothing to keep (unmatched topics): ack at the next commit
            to_ack = [a for a in acks if a[1]]
            if to_ack:
                with self._lock:
                    self._pending_acks.append((seq, to_ack))
                if seq <= self.spool.durable_seq:
                    self._on_durable(self.spool.durable_seq)
        if change is not None:
            self._resubscribe(change.plan)
            out.append(change.item)  # ahead of the first batch decoded with the new mapping
            if change.on_applied is not None:
                change.on_applied(change.version)
        if not out and self._stop_event is not None and self._stop_event.is_set():
            if self._nap is not None:
                self._nap.release(self)
            raise StopIteration
        nap = self._nap
        if nap is not None:
            if out:
                nap.handed_over()
            elif nap.attach(self):
                nap.nap(self)
        return out

    def _replay(self) -> list[PointBatch]:
        """Re-emit the spooled batches after the resume point (emitted before a crash, maybe not stored)."""
        after = self._replay_after
        assert after is not None
        records = self.spool.read(after, max_records=256)
        if not records:
            self._replay_after = None
            return []
        self._replay_after = records[-1][0]
        with self._lock:
            self._c.replayed_batches += len(records)
        return [b for b in batches_from(records) if len(b)]

    def next_awake(self) -> datetime | None:
        if (
            self._queue
            or self._replay_after is not None
            or self._change is not None
            or (self._stop_event is not None and self._stop_event.is_set())
        ):
            return None
        if self._nap is not None and self._nap.is_sleeper(self):
            return self._called_at  # at once (see PollingPartition.next_awake): its next call naps
        if self._nap is not None and self._nap.active:  # the sleeper paces the activations
            return datetime.now(UTC)
        return datetime.now(UTC) + self._idle

    def snapshot(self) -> int:
        """The spool sequence of the last emitted batch; the spool keeps one snapshot interval more."""
        seq = self._replay_after if self._replay_after is not None else self.spool.last_seq
        previous, self._last_snapshot = self._last_snapshot, seq
        if previous < seq:
            self.spool.ack(previous)  # the previous epoch's snapshot is committed by now
        return seq

    # -- hot config changes ----------------------------------------------------------------------

    def request_change(self, change: DeviceChange) -> None:
        """Take the device's new subscriptions (``change.plan``) at the next batch boundary
        (thread-safe); the connection stays, filters are unsubscribed and subscribed on it."""
        if change.device_id != self.device_id:
            raise ValueError(f"change for device {change.device_id!r} sent to {self.device_id!r}")
        with self._lock:
            if self._change is None or change.version >= self._change.version:
                self._change = change
        nap = self._nap
        if nap is not None:
            nap.notify()  # a napping worker takes it now, not at its nap's cap

    def _resubscribe(self, subscriptions: Sequence[MqttSubscription]) -> None:
        old = {s.topic_filter for s in self._subs}
        new = {s.topic_filter for s in subscriptions}
        self._subs = list(subscriptions)
        self._explicit = [
            [(m.topic, _Extractor.build(self.device_id, m.name, m)) for m in sub.tags] for sub in self._subs
        ]
        self._routes = {}
        if old - new:
            self._client.unsubscribe(sorted(old - new))
        added: list[tuple[str, int]] = [
            (s.topic_filter, self.config.qos if s.qos is None else s.qos)
            for s in self._subs
            if s.topic_filter in new - old
        ]
        if added:
            self._client.subscribe(added)
        log.info(
            "MQTT source %s: subscriptions changed (+%d -%d filters)",
            self.device_id,
            len(added),
            len(old - new),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._nap is not None:
            self._nap.release(self)
        for callback in self.on_close:
            callback()
        self.spool.sync()  # acknowledges what is durable before the connection goes
        self._client.disconnect()
        self._client.loop_stop()
        self.spool.close()

    # -- decoding (worker thread) --------------------------------------------------------------

    def _route(self, topic: str) -> tuple[_Extractor, ...]:
        route = self._routes.get(topic)
        if route is not None:
            return route
        found: list[_Extractor] = []
        for i, sub in enumerate(self._subs):
            if not mqtt.topic_matches_sub(sub.topic_filter, topic):
                continue
            found.extend(
                ex
                for t, ex in self._explicit[i]
                if t is None or t == topic or (("+" in t or "#" in t) and mqtt.topic_matches_sub(t, topic))
            )
        route = tuple(dict.fromkeys(found))  # overlapping subscriptions: each tag once
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _decode(self, items: deque[tuple[str, bytes, int]]) -> PointBatch:
        ts: list[int] = []
        ids: list[int] = []
        vals: list[float] = []
        qual: list[int] = []
        text: dict[int, str] = {}
        unmatched = bad = ts_errors = 0
        for topic, payload, recv_ns in items:
            route = self._route(topic)
            if not route:
                unmatched += 1
                continue
            doc: Any = _MISSING
            json_error: PayloadError | None = None
            for ex in route:
                pl = ex.payload
                quality = int(Quality.GOOD)
                stamp = recv_ns
                path_label = pl.value_path or "(payload)"
                try:
                    if pl.needs_json:
                        if doc is _MISSING and json_error is None:
                            try:
                                doc = json.loads(payload)
                            except ValueError as exc:
                                json_error = PayloadError(
                                    Quality.CONFIG_ERROR, "bad_json", f"malformed JSON: {exc}"
                                )
                        if json_error is not None:
                            raise json_error
                        raw = doc if ex.value_path is None else lookup(doc, ex.value_path)
                    else:
                        raw = _plain(payload)
                    value, txt = _coerce(raw, pl.value_type)
                    if ex.quality_path is not None:
                        path_label = pl.quality_path or ""
                        q_raw = _lookup_optional(doc, ex.quality_path)
                        if q_raw is not _MISSING:
                            try:
                                quality = decode_quality(q_raw)
                            except ValueError as exc:
                                raise PayloadError(Quality.CONFIG_ERROR, "bad_quality", str(exc)) from None
                except PayloadError as exc:
                    bad += 1
                    self._warnings.warn(
                        (ex.name, exc.reason),
                        "MQTT source %s: tag %r from topic %r path %r: %s; point marked %s",
                        self.device_id, ex.name, topic, path_label, exc.detail, QUALITY_NAMES[exc.quality],
                    )  # fmt: skip
                    ts.append(recv_ns)
                    ids.append(ex.tag_id)
                    vals.append(math.nan)
                    qual.append(int(exc.quality))
                    continue
                if ex.timestamp_path is not None:
                    stamp, problem = self._stamp(doc, ex.timestamp_path, recv_ns)
                    if problem is not None:
                        ts_errors += 1
                        if quality < Quality.UNCERTAIN:
                            quality = int(Quality.UNCERTAIN)
                        self._warnings.warn(
                            (ex.name, "timestamp"),
                            "MQTT source %s: tag %r from topic %r path %r: %s; receive time used",
                            self.device_id, ex.name, topic, pl.timestamp_path, problem,
                        )  # fmt: skip
                if txt is not None:
                    text[len(ids)] = txt
                ts.append(stamp)
                ids.append(ex.tag_id)
                vals.append(value)
                qual.append(quality)
        batch = PointBatch(
            device_id=self.device_id,
            ts_ns=np.array(ts, dtype=np.int64),
            tag_ids=np.array(ids, dtype=np.int64),
            values=np.array(vals, dtype=np.float64),
            quality=np.array(qual, dtype=QUALITY_DTYPE),
            text=text or None,
        )
        with self._lock:
            c = self._c
            c.unmatched += unmatched
            c.points += len(batch)
            c.bad_points += bad
            c.timestamp_errors += ts_errors
            c.batches += 1 if len(batch) else 0
            received, dropped = c.received, c.dropped
        self._report_metrics(received, dropped, bad)
        return batch

    def _stamp(self, doc: Any, path: tuple[PathPart, ...], recv_ns: int) -> tuple[int, str | None]:
        """The point's timestamp under the rule of :mod:`core.timestamps`, and the problem if any."""
        raw = _lookup_optional(doc, path)
        problem: str | None = None
        stamp: int | None = None
        if raw is _MISSING:
            problem = "timestamp missing"
        else:
            try:
                stamp = decode_timestamp(raw)
            except (ValueError, OverflowError) as exc:
                problem = _cut(str(exc), 200)
        used, reason = self._window.check(stamp, recv_ns)
        if reason is None:
            return used, None
        count_replaced(f"mqtt:{self.device_id}", reason)
        if reason == "future":
            problem = f"timestamp {_short(raw)} is more than {self._window.max_future_s:g} s in the future"
        elif reason == "too_old":
            problem = f"timestamp {_short(raw)} is more than {self._window.max_past_s:g} s in the past"
        return used, problem

    def _report_metrics(self, received: int, dropped: int, bad: int) -> None:
        for name, now in (("received", received), ("dropped", dropped)):
            delta = now - self._m_reported[name]
            if delta:
                self._m[name].inc(delta)
                self._m_reported[name] = now
        if bad:
            self._m["bad_points"].inc(bad)

    @property
    def stats(self) -> MqttSourceStats:
        with self._lock:
            return replace(self._c)


def _lookup_optional(doc: Any, path: tuple[PathPart, ...]) -> Any:
    if doc is _MISSING:
        return _MISSING
    try:
        return lookup(doc, path)
    except PayloadError:
        return _MISSING


class MqttSource(FixedPartitionedSource[PointBatch, int | None]):
    """Subscribes to the configured topic filters; one partition and one connection per device.

    Partition keys are ``mqtt:{device_id}``; in a cluster each partition (and so each device's
    connection) lives on exactly one worker.
    """

    protocol = "mqtt"

    def __init__(
        self,
        config: MqttSourceConfig,
        *,
        stop_event: threading.Event | None = None,
        spool_dir: str | None = None,
        config_registry: ConfigRegistry | None = None,
        max_wait_s: float | None = None,
    ) -> None:
        self.config = config
        self.stop_event = stop_event
        self.max_wait_s = max_wait_from_env() if max_wait_s is None else max_wait_s
        """How long a partition with nothing queued may nap in ``next_batch`` for a message
        (:mod:`connectors.nap`; 0: never, it is looked at every ``idle_wake_s``); default
        ``NEXUS_SOURCE_MAX_WAIT_MS``."""
        self.spool_dir = spool_dir
        """Base folder of the partitions' spools (``{spool_dir}/{device}``); ``None``: temporary folders."""
        self.config_registry = config_registry
        """Told about each partition this process builds, so hot config changes reach its device."""
        self._devices = {f"{self.protocol}:{d}": subs for d, subs in config.devices().items()}
        self._parts: dict[str, _MqttPartition] = {}

    def list_parts(self) -> list[str]:
        return list(self._devices)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _MqttPartition:
        restore_thread()  # (a worker thread of a cluster: see core.timerslack)
        subs = self._devices[for_part]
        device = subs[0].device_id
        folder = None if self.spool_dir is None else f"{self.spool_dir}/{device}"
        part = _MqttPartition(
            self.config,
            device,
            subs,
            stop_event=self.stop_event,
            spool_dir=folder,
            resume_state=resume_state,
            max_wait_s=self.max_wait_s,
        )
        self._parts[for_part] = part
        if self.config_registry is not None:
            configs, apply, device_id = self.config_registry, part.request_change, part.device_id
            configs.register(device_id, apply)
            part.on_close.append(lambda: configs.unregister(device_id, apply))
        return part

    def stats(self) -> dict[str, MqttSourceStats]:
        """Counters of the partitions this process built, by device id."""
        return {p.device_id: p.stats for p in list(self._parts.values())}

    def tag_ids(self) -> Mapping[str, Mapping[str, int]]:
        """The mapped tags: device id → tag name → tag id."""
        out: dict[str, dict[str, int]] = {}
        for sub in self.config.subscriptions:
            names = out.setdefault(sub.device_id, {})
            for tag in sub.tags:
                names[tag.name] = tag_id_for(sub.device_id, tag.name)
        return out
