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
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from connectors.mqtt.batch_ack import BatchAckClient
from connectors.mqtt.client import describe_connect_failure, make_client, unique_client_id
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.packing import PackTable, json_numbers, publishable
from connectors.spool import Spool, SpoolDrop, decode_batch, encode_batch
from core.batch import PointBatch
from core.quality import QUALITY_NAMES
from core.tags import TagInfo

__all__ = [
    "BrokerUnavailable",
    "MqttPublishError",
    "PublishTimeout",
    "UnsPublisher",
    "format_batch",
    "mark_historical",
]

log = logging.getLogger(__name__)

_QUALITY_JSON: tuple[str, ...] = tuple(f'"quality":{json.dumps(name)},' for name in QUALITY_NAMES)


_PUBLISH = 0x30
_PUBLISH_QOS1 = 0x32
_MAX_BLOB = 1 << 20
"""QoS 0 fast path: PUBLISH packets are packed into blobs of about this many bytes."""
_QOS1_WINDOW = 32_768
"""QoS 1 fast path: at most this many messages awaiting their PUBACK (message ids are 16 bits and
shared with paho's own publishes, so at most half of them are ours at any time)."""
_QOS1_CHUNK = 4_096
"""QoS 1 fast path: messages packed and handed to paho per write."""


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
            if not publishable(topic):
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


def pack_publish_qos1(
    messages: Sequence[tuple[str, str | bytes]], mids: Sequence[int], retain: bool
) -> bytes:
    """MQTT 3.1.1 QoS 1 PUBLISH packets, one per message with the given message ids, concatenated.

    >>> pack_publish_qos1([("a/b", b"1")], [258], retain=False)
    b'2\\x08\\x00\\x03a/b\\x01\\x021'
    """
    header = bytes((_PUBLISH_QOS1 | (1 if retain else 0),))
    parts: list[bytes] = []
    topics: dict[str, bytes] = {}
    varints = _VARINT_BYTES
    mid_bytes = _MID.pack
    for (topic, payload), mid in zip(messages, mids, strict=True):
        t = topics.get(topic)
        if t is None:
            if not publishable(topic):
                raise ValueError(f"invalid topic for publishing: {topic!r}")
            raw = topic.encode()
            t = topics[topic] = len(raw).to_bytes(2, "big") + raw
        p = payload.encode() if isinstance(payload, str) else payload
        length = len(t) + 2 + len(p)
        parts += (header, varints[length] if length < 16384 else _varint(length), t, mid_bytes(mid), p)
    return b"".join(parts)


_VARINT_BYTES: tuple[bytes, ...] = tuple(_varint(n) for n in range(1 << 14))
_MID = struct.Struct(">H")


def _take_mids(client: Any, n: int) -> list[int]:
    """``n`` consecutive message ids from paho's own counter (1..65535, wrapping), in one lock."""
    with client._mid_generate_mutex:
        start = client._last_mid
        mids = [(start + i) % 65535 + 1 for i in range(n)]
        client._last_mid = mids[-1]
    return mids


class BlobBuffers:
    """Reused buffers for the packed PUBLISH packets of one hand-over (QoS 0 fast path).

    An activation's packets went to paho as ``b"".join(...)``: a fresh buffer of up to a few hundred
    KiB each time, which glibc maps anew above its (pinned, :mod:`core.memory`) mmap threshold and
    the kernel zero-fills page by page — ~570 µs for 900 KiB on this machine against ~80 µs to copy
    the same packets into a buffer that is already mapped. A buffer goes back to the free list when
    paho has written all of it (``on_publish``); one swept at a disconnect is left to the collector
    (paho may still hold it). At most ``keep`` free buffers of at most ``max_bytes`` each are kept.

    >>> pool = BlobBuffers()
    >>> view = pool.fill([b"ab", b"cde"], 5)
    >>> bytes(view), len(pool.free)
    (b'abcde', 0)
    >>> pool.release(view); len(pool.free)
    1
    >>> pool.fill([b"xy"], 2).obj is view.obj   # the same buffer, reused
    True
    """

    def __init__(self, keep: int = 4, min_bytes: int = 256 * 1024, max_bytes: int = 2 << 20) -> None:
        self.free: list[bytearray] = []
        self.keep, self.min_bytes, self.max_bytes = keep, min_bytes, max_bytes
        self.allocated = 0
        """Buffers made so far (the rest of the hand-overs reused one)."""

    def fill(self, parts: Sequence[bytes | bytearray | memoryview], size: int) -> memoryview:
        """A view of ``size`` bytes holding ``parts`` one after the other (``size`` is their total)."""
        free = self.free
        buf = free.pop() if free else None  # (list.pop and append are atomic: no lock needed)
        if buf is None or len(buf) < size:
            buf = bytearray(max(size + size // 4, self.min_bytes))
            self.allocated += 1
        pos = 0
        for part in parts:
            end = pos + len(part)
            buf[pos:end] = part
            pos = end
        return memoryview(buf)[:size]

    def release(self, view: bytes | bytearray | memoryview) -> None:
        """``view`` (from :meth:`fill`) is no longer read by anyone: its buffer may be reused."""
        if isinstance(view, memoryview) and isinstance(view.obj, bytearray):
            buf = view.obj
            if len(self.free) < self.keep and len(buf) <= self.max_bytes:
                self.free.append(buf)


def unpack_publish_qos0(blob: bytes | bytearray | memoryview) -> list[tuple[str, bytes]]:
    """The ``(topic, payload)`` pairs of a blob made by :func:`pack_publish_qos0`.

    >>> msgs = [("a/b", b"1"), ("c", b"x" * 300)]
    >>> [unpack_publish_qos0(b) for b, _n in pack_publish_qos0(msgs, retain=False)] == [msgs]
    True
    """
    out: list[tuple[str, bytes]] = []
    pos, end = 0, len(blob)
    while pos < end:
        pos += 1  # fixed header
        length, mult = 0, 1
        while True:
            byte = blob[pos]
            pos += 1
            length += (byte & 0x7F) * mult
            mult *= 128
            if not byte & 0x80:
                break
        tlen = int.from_bytes(blob[pos : pos + 2], "big")
        out.append(
            (bytes(blob[pos + 2 : pos + 2 + tlen]).decode(), bytes(blob[pos + 2 + tlen : pos + length]))
        )
        pos += length
    return out


def _unsent(info: mqtt.MQTTMessageInfo, gone: bool) -> bool:
    """Whether paho dropped (or, with ``gone``: will never write) this fast-path blob."""
    if info.rc == MQTTErrorCode.MQTT_ERR_CONN_LOST:
        return True
    return gone and not info.is_published()


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
    if len(batch) == 0:
        return [], []
    stamps, vals = _stamps_and_values(batch)
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


def _stamps_and_values(batch: PointBatch) -> tuple[list[str], list[str]]:
    """The batch's timestamps (ISO 8601, microseconds, UTC) and JSON values (``null`` for NaN/inf,
    a JSON string for a text point), as text, one per point."""
    n = len(batch)
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
    vals = json_numbers(batch.values)
    if batch.text:
        for i, text in batch.text.items():
            if 0 <= i < n:
                vals[i] = json.dumps(text)
    return stamps, vals


def mark_historical(payload: bytes) -> bytes:
    """A replayed JSON object gets ``"historical":true`` (Sparkplug's ``is_historical`` idea).

    >>> mark_historical(b'{"value":1}'), mark_historical(b'{}'), mark_historical(b'7')
    (b'{"historical":true,"value":1}', b'{"historical":true}', b'7')
    >>> mark_historical(mark_historical(b'{"value":1}'))  # replayed twice (lost again at a reconnect)
    b'{"historical":true,"value":1}'
    """
    if not payload.startswith(b"{") or payload.startswith(b'{"historical":true'):
        return payload
    rest = payload[1:].lstrip()
    return b'{"historical":true' + (b"}" if rest.startswith(b"}") else b"," + payload[1:])


_KIND_BATCH = b"B"
_KIND_MESSAGES = b"M"
_MSG = struct.Struct("<II")


def encode_messages(messages: Sequence[tuple[str, str | bytes]]) -> bytes:
    """Ready ``(topic, payload)`` pairs as one spool record.

    >>> decode_messages(encode_messages([("a/b", "1"), ("c", b"{}")]))
    [('a/b', b'1'), ('c', b'{}')]
    """
    parts = [_KIND_MESSAGES]
    for topic, payload in messages:
        t = topic.encode()
        pl = payload.encode() if isinstance(payload, str) else payload
        parts += (_MSG.pack(len(t), len(pl)), t, pl)
    return b"".join(parts)


def decode_messages(record: bytes | memoryview) -> list[tuple[str, bytes]]:
    data = bytes(record)
    if data[:1] != _KIND_MESSAGES:
        raise ValueError(f"spool record kind {data[:1]!r} is not a message list")
    out: list[tuple[str, bytes]] = []
    pos = 1
    while pos < len(data):
        lt, lp = _MSG.unpack_from(data, pos)
        pos += _MSG.size
        if pos + lt + lp > len(data):
            raise ValueError("spool message record is truncated")
        out.append((data[pos : pos + lt].decode(), data[pos + lt : pos + lt + lp]))
        pos += lt + lp
    return out


class UnsPublisher:
    """One paho-mqtt client publishing point batches to the UNS; thread-safe, bounded, never stalls.

    Connects at construction (waits up to ``connect_timeout_s``; ``BrokerUnavailable`` only when the
    broker *refuses* the connection, e.g. bad credentials) and reconnects by itself with backoff.
    What cannot be handed to the broker now — it is unreachable, or ``max_queue`` messages are
    outstanding — goes to the publisher's disk spool (:mod:`connectors.spool`) instead of waiting:
    a broker outage never stalls or crashes the dataflow. A drain thread replays the spool once the
    broker is back, paced (``drain_messages_per_s``, and at most half of ``max_queue`` outstanding)
    so live messages keep flowing, and acknowledges spool records only after the broker has
    acknowledged their messages (at-least-once). Replayed messages carry ``"historical": true``.
    With policy ``in_order`` live messages go to the spool too while it holds anything.
    """

    def __init__(self, config: MqttSinkConfig, tags: Mapping[int, TagInfo], *, name: str = "uns") -> None:
        self.config = config
        self.name = name
        self._encoded = _encode_tags(tags)
        self._packed = PackTable().with_tags(tags)
        self._broker = config.broker
        self._where = f"{self._broker.host}:{self._broker.port}"
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._drain_cond = threading.Condition(lock)
        """Wakes the drain thread only (records spooled, connected, closing), not at every
        acknowledgement like ``_cond`` — an idle drainer stays asleep under load."""
        self._connected = False
        self._connect_error: str | None = None
        self._warned: set[int] = set()
        self.published = 0
        """Messages handed to the client."""
        self.acked = 0
        """Messages sent (QoS 0) or acknowledged by the broker (QoS 1/2)."""
        self.lost = 0
        """Messages handed over and not confirmed when the connection ended — QoS 0 discarded by paho
        unsent, QoS 1 not acknowledged — sent again (re-spooled, or re-sent by the drain)."""
        self.spooled = 0
        """Messages written to the disk spool instead of the broker."""
        self.replayed = 0
        """Spooled messages published again (``"historical": true``)."""
        self.unknown_tags = 0
        """Points skipped because their tag id is not configured."""
        self._closed = False
        self._blobs: dict[int, tuple[int, mqtt.MQTTMessageInfo, bytes | bytearray | memoryview, int]] = {}
        """QoS 0 fast path: per packed blob handed to paho (by message id), its message count, info,
        packets (paho holds them anyway until they are written; a live hand-over's are a view of a
        :class:`BlobBuffers` buffer) and, for a replayed blob, the offset of its first message in
        the drain's list (-1: a live blob)."""
        self._buffers = BlobBuffers()
        """The live batches' packets, one buffer per hand-over, reused once paho has written it."""
        self._rewind: int | None = None
        """The drain's list offset of the first replayed message paho discarded: publish again from it."""
        self._inflight: dict[int, tuple[str, str | bytes, int]] = {}
        """QoS 1 fast path: per message id awaiting its PUBACK, the message and its drain offset as for
        ``_blobs`` (sent again if the connection drops before the broker acknowledged it)."""
        self.respooled = 0
        """Of ``lost``: live messages put back into the spool, replayed later."""
        self.rewound = 0
        """Of ``lost``: replayed messages the drain publishes again (their records are still spooled)."""
        self._unannounced: dict[str, list[int]] = {}
        """Spool drops not yet announced, per reason: records, bytes, first and last sequence. The
        drain thread publishes them (outside the lock) once connected: a spool fills because the
        broker is away, so the alert must wait for it, not be skipped."""
        self.alerts = 0
        """Spool-drop alerts handed to the broker."""
        self.dropped_messages = 0
        """Messages in spool records dropped by a bound or a full volume (counted, alerted)."""
        self.spool = Spool(
            config.spool_dir,
            name=name,
            max_bytes=config.spool_max_bytes,
            max_age_s=config.spool_max_age_s,
            sync_interval_s=config.spool_sync_interval_s,
            on_drop=self._on_spool_drop,
            count=self._messages_in,
        )

        client = make_client(
            self._broker,
            config.client_id or unique_client_id("nexus-uns"),
            reconnect_max_s=config.reconnect_max_s,
            client_class=BatchAckClient,
        )
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(config.max_queue)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        assert isinstance(client, BatchAckClient)
        client.on_pubacks = self._on_pubacks
        self._client = client
        client.connect_async(self._broker.host, self._broker.port, keepalive=config.keepalive_s)
        client.loop_start()
        try:
            self._wait_connected(config.connect_timeout_s)
        except BrokerUnavailable:
            if self._connect_error is not None:  # refused: a configuration error, say so now
                client.loop_stop()
                self.spool.close()
                raise
            log.warning(
                "UNS publisher: MQTT broker %s not reachable yet (%s); spooling to %s until it is",
                self._where, describe_connect_failure(self._broker), self.spool.dir,
            )  # fmt: skip
        self._drainer = threading.Thread(target=self._drain_loop, name=f"{name}-drain", daemon=True)
        self._drainer.start()

    # ---------------------------------------------------------------- paho callbacks (network thread)

    def update_tags(self, tags: Mapping[int, TagInfo]) -> None:
        """Learn (or relearn: topic, unit) the given tags; tags already known and not given stay
        known, so points of a removed tag still in flight are published."""
        encoded = {**self._encoded, **_encode_tags(tags)}
        packed = self._packed.with_tags(tags)
        # reference swaps: a concurrent publish sees the old or the new table (``_packed`` may be a
        # step behind ``_encoded`` for one batch: its new tags then take the general path)
        self._encoded = encoded
        self._packed = packed

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._cond:
            if getattr(reason, "is_failure", False):
                self._connected = False
                self._connect_error = str(reason)
            else:
                self._sweep_blobs(gone=True)  # blobs paho discarded at the reconnect
                self._sweep_inflight()  # QoS 1 messages the old connection never saw acknowledged
                self._connected = True
                self._connect_error = None
                log.info("connected to MQTT broker %s", self._where)
            self._cond.notify_all()
            self._drain_cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._cond:
            # paho closed the socket before calling us: a blob not written yet never will be. Spool
            # it now, before the flag below sends later messages to the spool: per-tag order kept
            self._sweep_blobs(gone=True)
            self._sweep_inflight()
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._closed:
            log.warning(
                "disconnected from MQTT broker %s (%s); reconnecting, spooling meanwhile", self._where, reason
            )

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, _reason: object, _p: object) -> None:
        with self._cond:
            blob = self._blobs.pop(mid, None)
            if blob is None and self.config.qos < 2 and self._fast_path:
                return  # not one of ours (they are blobs, or PUBACKs in _on_pubacks): a spool-drop alert
            if blob is not None:
                self._buffers.release(blob[2])  # written in full: paho is done with it
            self.acked += 1 if blob is None else blob[0]
            self._cond.notify_all()

    def _on_pubacks(self, mids: list[int]) -> list[int]:
        """PUBACKs of one socket read (network thread): settle ours, give paho back the others."""
        with self._cond:
            pop = self._inflight.pop
            others = [m for m in mids if pop(m, None) is None]
            if len(others) < len(mids):
                self.acked += len(mids) - len(others)
                self._cond.notify_all()
        return others

    def _sweep_inflight(self) -> None:
        """QoS 1 fast path: messages not acknowledged on the connection that ended (caller holds
        ``_cond``). With a clean session the broker forgets them: live ones go to the spool — at the
        disconnect, before any later message, so each tag's order is kept — and replayed ones set the
        drain's rewind point (their records are still spooled). At least once: one the broker did
        receive but whose PUBACK was lost with the connection arrives twice."""
        if not self._inflight:
            return
        live: list[tuple[str, str | bytes]] = []
        for topic, payload, offset in self._inflight.values():  # in the order they were sent
            if offset >= 0:
                self.rewound += 1
                self._rewind = offset if self._rewind is None else min(self._rewind, offset)
            else:
                live.append((topic, payload))
        self.lost += len(self._inflight)
        self._inflight.clear()
        if live:
            self.spool.append_many([encode_messages(live)])
            self.spooled += len(live)
            self.respooled += len(live)
            self._drain_cond.notify_all()

    def _sweep_blobs(self, *, gone: bool = False) -> None:
        """Settle fast-path blobs paho will never send (caller holds ``_cond``).

        paho's ``reconnect()`` discards its queue of unsent packets and marks each QoS 0 packet's
        info as published with ``rc = MQTT_ERR_CONN_LOST`` — without calling ``on_publish``. With
        ``gone`` (paho's socket is closed: at the disconnect, or seen by a publishing thread) every
        blob not fully written yet is settled too, before any later message can reach the spool.
        Live blobs go back to the spool — where they come before every message spooled after the
        disconnect, so the replay keeps each tag's order; replayed blobs set the drain's rewind
        point instead (their records are still in the spool, unacknowledged). Either way they count
        as ``lost`` (not sent), so the outstanding count returns to zero.
        """
        lost = [mid for mid, (_n, info, _b, _o) in self._blobs.items() if _unsent(info, gone)]
        if not lost:
            return
        records: list[bytes] = []
        n = 0
        for mid in lost:  # the dict keeps the order the blobs were queued in
            count, _info, blob, offset = self._blobs.pop(mid)
            self.lost += count
            if offset >= 0:
                self.rewound += count
                self._rewind = offset if self._rewind is None else min(self._rewind, offset)
                continue
            n += count
            records.append(encode_messages(unpack_publish_qos0(blob)))
        if records:  # never sent: replayed (marked historical) like any other outage
            self.spool.append_many(records)
            self.spooled += n
            self.respooled += n
            self._drain_cond.notify_all()

    def _on_spool_drop(self, drop: SpoolDrop) -> None:
        """The platform alert for a spool bound: noted here (any thread, maybe under ``_cond``), published
        on ``$nexus/alerts/spool/{name}`` by the drain thread as soon as the broker is reachable."""
        with self._cond:
            self.dropped_messages += drop.items or 0
            got = self._unannounced.setdefault(drop.reason, [0, 0, drop.first_seq, drop.last_seq])
            got[0] += drop.records
            got[1] += drop.bytes
            got[3] = drop.last_seq
            self._drain_cond.notify_all()

    def _messages_in(self, record: memoryview) -> int:
        """Messages one spool record holds (the spool counts what it drops)."""
        if bytes(record[:1]) == _KIND_BATCH:
            return self._known(decode_batch(record[1:]))
        return len(decode_messages(record))

    def _announce_drops(self) -> None:
        """Publish the spool drops noted since the last announcement, one QoS 1 alert per reason (drain
        thread, without ``_cond``: paho's publish takes its own locks, which its network thread holds
        while calling back into ours)."""
        with self._cond:
            if not (self._connected and self._unannounced):
                return
            drops, self._unannounced = self._unannounced, {}
        for reason, (records, size, first, last) in drops.items():
            payload = json.dumps(
                {
                    "kind": "spool_drop",
                    "spool": self.name,
                    "reason": reason,
                    "records": records,
                    "bytes": size,
                    "first_seq": first,
                    "last_seq": last,
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
            # QoS 1: should the connection drop now, paho keeps it and sends it after the reconnect
            self._client.publish(f"$nexus/alerts/spool/{self.name}", payload, qos=1)
            with self._cond:
                self.alerts += 1

    # ---------------------------------------------------------------- API

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self._outstanding_locked()

    def _outstanding_locked(self) -> int:
        if self._blobs:
            self._sweep_blobs()
        return self.published - self.acked - self.lost

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
        """Publish one message per point of a known tag (or spool them); returns the number published now."""
        return self.publish_batches([batch])

    def publish_batches(self, batches: Sequence[PointBatch]) -> int:
        """:meth:`publish_batch` for several batches (a sink's ``write_batch``), in order; returns the
        number published now. At QoS 0 the batches' packets are handed to paho as one write."""
        if self._closed:
            raise MqttPublishError("the UNS publisher is closed")
        if self._must_spool():
            self._spool_records(
                [_KIND_BATCH + encode_batch(b) for b in batches], sum(self._known(b) for b in batches)
            )
            return 0
        if self.config.qos == 0 and self._fast_path:
            return self._publish_batches_qos0(batches)
        sent = 0
        for batch in batches:
            sent += self._publish_general(batch)
        return sent

    def _publish_general(self, batch: PointBatch) -> int:
        messages, unknown = format_batch(batch, self._encoded)
        if unknown:
            self._count_unknown(unknown, batch.device_id)
        return self.publish_messages(messages)

    def _publish_batches_qos0(self, batches: Sequence[PointBatch]) -> int:
        """QoS 0: each batch's packets written by one compiled call (:class:`PackTable`), the packets of
        consecutive batches queued as one write; what cannot be handed over goes to the spool as whole
        batches. A batch the compiled packer leaves out (text points, a tag it does not know but the
        general path does) takes the general path, in order: what was packed before it is handed over
        first."""
        sent = 0
        blobs: list[bytes] = []
        kept: list[PointBatch] = []
        count = size = 0

        def hand_over() -> int:
            if not count:
                return 0
            packet = self._buffers.fill(blobs, size)
            if self._queue_qos0_blob(packet, count, self.config.max_queue):
                return count
            self._buffers.release(packet)
            self._spool_records([_KIND_BATCH + encode_batch(b) for b in kept], count)
            return 0

        encoded = self._encoded
        table = self._packed
        for batch in batches:
            packed = table.pack(batch, self.config.retain)
            if packed is None or (packed[2] and any(t in encoded for t in packed[2])):
                sent += hand_over()
                blobs, kept, count, size = [], [], 0, 0
                sent += self._publish_general(batch)
                continue
            blob, n, unknown = packed
            if unknown:
                self._count_unknown(unknown, batch.device_id)
            if n:
                blobs.append(blob)
                kept.append(batch)
                count += n
                size += len(blob)
        return sent + hand_over()

    def _known(self, batch: PointBatch) -> int:
        encoded = self._encoded
        return sum(1 for t in batch.tag_ids.tolist() if t in encoded)

    def publish_messages(self, messages: Iterable[tuple[str, str | bytes]]) -> int:
        """Publish ready ``(topic, payload)`` pairs (or spool them); returns the number published now.

        QoS 0 takes a fast path when the installed paho offers it: the batch's PUBLISH packets are
        packed into one buffer and handed to paho's network thread as a single write, instead of one
        queue entry, one wake-up and one ``send()`` per message (see BENCHMARKS.md). QoS 1 is packed the
        same way with the publisher's own table of message ids awaiting their PUBACK
        (:meth:`_publish_qos1`; at most ``_QOS1_WINDOW`` outstanding). QoS 2 goes through
        ``paho.publish`` one by one (paho keeps each message for its handshake and redelivery).
        Whatever does not fit (disconnected, ``max_queue`` outstanding) goes to the spool.
        """
        if self._closed:
            raise MqttPublishError("the UNS publisher is closed")
        messages = list(messages)
        if not messages:
            return 0
        if self._must_spool():
            self._spool_records([encode_messages(messages)], len(messages))
            return 0
        sent = self._publish_now(messages, self.config.max_queue)
        if sent < len(messages):
            rest = messages[sent:]
            self._spool_records([encode_messages(rest)], len(rest))
        return sent

    def _must_spool(self) -> bool:
        if not self._connected:
            return True
        if self.config.policy == "in_order" and self.spool.pending_records:
            return True
        limit = self.config.max_queue
        if self.config.qos == 1 and self._fast_path:
            limit = min(limit, _QOS1_WINDOW)
        return self.outstanding >= limit

    def _spool_records(self, records: list[bytes], messages: int) -> None:
        self.spool.append_many(records)
        with self._cond:
            self.spooled += messages
            self._drain_cond.notify_all()

    def _publish_now(self, messages: Sequence[tuple[str, str | bytes]], limit: int, offset: int = -1) -> int:
        """Hand messages to paho while connected and fewer than ``limit`` are outstanding; how many went.

        ``offset``: the drain's list offset of ``messages[0]`` (-1: live messages).
        """
        cfg = self.config
        if cfg.qos == 0 and self._fast_path:
            return self._publish_packed(messages, limit, offset)
        if cfg.qos == 1 and self._fast_path:
            return self._publish_qos1(messages, min(limit, _QOS1_WINDOW), offset)
        publish = self._client.publish
        sent = 0
        with self._cond:
            room = limit - self._outstanding_locked()
        for topic, payload in messages:
            if room <= 0 or not self._connected:
                with self._cond:
                    room = limit - self._outstanding_locked()
                if room <= 0 or not self._connected:
                    break
            info = publish(topic, payload, cfg.qos, cfg.retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and cfg.qos == 0:
                break  # paho did not keep it: spool it and the rest
            # QoS 1/2 with NO_CONN: paho keeps the message and sends it after the reconnect
            with self._cond:
                self.published += 1
            room -= 1
            sent += 1
        return sent

    @property
    def _fast_path(self) -> bool:
        client = self._client
        return (
            hasattr(client, "_packet_queue")
            and hasattr(client, "_mid_generate_mutex")
            and hasattr(client, "_last_mid")
            and hasattr(client, "_sock")
        )

    def _publish_packed(
        self, messages: Sequence[tuple[str, str | bytes]], limit: int, offset: int = -1
    ) -> int:
        cfg = self.config
        sent = 0
        for blob, count in pack_publish_qos0(messages, cfg.retain):
            if not self._queue_qos0_blob(blob, count, limit, offset + sent if offset >= 0 else -1):
                break
            sent += count
        return sent

    def _queue_qos0_blob(
        self, blob: bytes | bytearray | memoryview, count: int, limit: int, offset: int = -1
    ) -> bool:
        """Hand one packed blob to paho's network thread; False (nothing queued) when disconnected or
        ``limit`` messages are outstanding. ``offset``: the drain's list offset of the blob's first
        message (-1: live messages)."""
        client: Any = self._client
        with self._cond:
            # registered and queued under the lock that on_disconnect takes: a blob is either queued
            # before the disconnect (then swept as lost) or not at all (spooled)
            if client._sock is None:
                self._sweep_blobs(gone=True)  # the disconnect is under way: settle before spooling
                return False
            if not self._connected or self._outstanding_locked() >= limit:
                return False
            mid = client._mid_generate()
            info = mqtt.MQTTMessageInfo(mid)
            self._blobs[mid] = (count, info, blob, offset)
            self.published += count
            client._packet_queue(_PUBLISH, blob, mid, 0, info)
        return True

    def _publish_qos1(self, messages: Sequence[tuple[str, str | bytes]], limit: int, offset: int = -1) -> int:
        """QoS 1 without paho's per-message bookkeeping: the PUBLISH packets of up to ``_QOS1_CHUNK``
        messages get message ids from paho's counter, are packed into one buffer and queued as one
        write; the publisher keeps each message by id until its PUBACK comes back (batched by
        :class:`BatchAckClient`). A connection that drops sends again what was not acknowledged
        (:meth:`_sweep_inflight`)."""
        client: Any = self._client
        retain = self.config.retain
        sent, total = 0, len(messages)
        while sent < total:
            with self._cond:
                room = limit - self._outstanding_locked()
            if room <= 0 or not self._connected:
                break
            chunk = messages[sent : sent + min(room, _QOS1_CHUNK)]
            mids = _take_mids(client, len(chunk))
            blob = pack_publish_qos1(chunk, mids, retain)
            with self._cond:
                # as for QoS 0: queued before a disconnect (then swept) or not at all
                if client._sock is None:
                    self._sweep_inflight()  # the disconnect is under way: settle before spooling
                    self._sweep_blobs(gone=True)
                    break
                if not self._connected:
                    break
                first = offset + sent if offset >= 0 else -1
                self._inflight.update(
                    (mid, (t, p, first + i if first >= 0 else -1))
                    for i, (mid, (t, p)) in enumerate(zip(mids, chunk, strict=True))
                )
                self.published += len(chunk)
                client._packet_queue(_PUBLISH, blob, 0, 1, None)
            sent += len(chunk)
        return sent

    def wait_for_room(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` more messages fit under ``max_queue`` (or the QoS 1 window) without going
        to the spool; for callers that prefer waiting to spooling (benchmarks, bulk loads)."""
        limit = self.config.max_queue
        if self.config.qos == 1 and self._fast_path:
            limit = min(limit, _QOS1_WINDOW)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._outstanding_locked() + n > limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True

    def _count_unknown(self, tag_ids: list[int], device_id: str) -> None:
        with self._cond:
            self.unknown_tags += len(tag_ids)
            new = set(tag_ids) - self._warned
            self._warned |= new
        for tid in sorted(new):
            log.warning("UNS publisher: skipping points of unknown tag id %d (device %r)", tid, device_id)

    # ---------------------------------------------------------------- the spool's drain (own thread)

    def _drain_loop(self) -> None:
        cfg = self.config
        limit = max(1, cfg.max_queue // 2)
        while not self._closed:
            self._announce_drops()
            with self._cond:
                if not (self._connected and self.spool.pending_records):
                    self._drain_cond.wait(5.0)
                    continue
            records = self.spool.read(max_records=64, max_bytes=4 << 20)
            if not records:
                time.sleep(0.05)
                continue
            started = time.monotonic()
            messages: list[tuple[str, bytes]] = []
            for seq, rec in records:
                try:
                    if bytes(rec[:1]) == _KIND_BATCH:
                        msgs, _unknown = format_batch(decode_batch(rec[1:]), self._encoded)
                    else:
                        msgs = decode_messages(rec)
                except (ValueError, UnicodeDecodeError) as exc:
                    log.error("UNS spool %s: record %d unreadable (%s); skipped", self.name, seq, exc)
                    continue
                messages += [(t, mark_historical(p)) for t, p in msgs]
            if not self._replay(messages, limit):
                continue  # closing: the records stay in the spool for the next start
            done = len(messages)
            self.spool.ack(records[-1][0])
            spare = done / cfg.drain_messages_per_s - (time.monotonic() - started)
            if spare > 0:
                time.sleep(spare)

    def _replay(self, messages: list[tuple[str, bytes]], limit: int) -> bool:
        """Publish the drain's messages until the broker has them all; ``False`` if closed first.

        Only what a disconnect discarded is published again — from the first replayed message paho
        dropped (the rewind point), in order — not the whole read, so a reconnect during the drain
        neither reorders nor re-sends what the broker already took.
        """
        done = 0
        while not self._closed:
            if done < len(messages):
                done += self._publish_now(messages[done:], limit, offset=done)
                if done < len(messages):
                    with self._cond:
                        self._cond.wait(0.05)  # room or the connection comes back
            else:
                with self._cond:
                    target = self.published
                acked = self._wait_acked(target, self.config.publish_timeout_s)
                if acked and self._rewind is None:
                    with self._cond:
                        self.replayed += done
                    return True
            with self._cond:
                if self._rewind is not None:
                    done, self._rewind = min(done, self._rewind), None
        return False

    def _wait_acked(self, target: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked + self.lost < target:
                self._outstanding_locked()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True

    # ---------------------------------------------------------------- shutdown and stats

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message handed to paho so far is sent (QoS 0) or acknowledged (QoS 1/2).

        Spooled messages are not waited for: they are on disk and replayed when the broker is back.
        """
        timeout = self.config.publish_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self.published
            while self.acked + self.lost < target:
                self._outstanding_locked()
                if self.acked + self.lost >= target:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PublishTimeout(
                        f"MQTT broker {self._where}: {target - self.acked - self.lost} messages not "
                        f"acknowledged within {timeout:g} s"
                    )
                self._cond.wait(min(remaining, 0.2))

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything replayed and acknowledged); for tests and shutdown."""
        deadline = time.monotonic() + timeout
        while self.spool.pending_records:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush, then disconnect and stop the network thread (also when the flush times out).

        Spooled messages stay in the spool folder for the next start (with a temporary spool folder,
        used when ``spool_dir`` is not set, they are lost and logged).
        """
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            with self._cond:
                self._cond.notify_all()
                self._drain_cond.notify_all()
            self._drainer.join(timeout=5)
            self._client.disconnect()
            self._client.loop_stop()
            with self._cond:
                self._sweep_inflight()  # QoS 1 never acknowledged: kept for the next start
            pending = self.spool.pending_records
            self.spool.close()
            if pending:
                where = "lost (temporary spool)" if self.spool.temporary else f"kept in {self.spool.dir}"
                log.warning("UNS publisher closed with %d spooled records not replayed: %s", pending, where)

    def stats(self) -> dict[str, int]:
        spool = self.spool.stats()
        with self._cond:
            return {
                "published": self.published,
                "acked": self.acked,
                "lost": self.lost,
                "respooled": self.respooled,
                "rewound": self.rewound,
                "dropped": self.lost - self.respooled - self.rewound,
                "spooled": self.spooled,
                "replayed": self.replayed,
                "unknown_tags": self.unknown_tags,
                "spool_drop_alerts": self.alerts,
                "spool_dropped_messages": self.dropped_messages,
                "outstanding": self._outstanding_locked(),
                **spool,
            }

    def __enter__(self) -> UnsPublisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
