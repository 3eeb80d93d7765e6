"""The chaos harness's independent subscriber, in its own process: ``python -m bench.chaos_sub``.

A raw-socket MQTT 3.1.1 client (no per-message client machinery, so it keeps up with 20,000
messages/s): a fixed client id with a persistent session (``clean session = 0``) and a QoS 1
subscription, so the broker keeps what arrives while the subscriber reconnects; every QoS 1
PUBLISH is acknowledged. It reconnects by itself when the broker goes away. It also subscribes to
the platform's alerts (``$nexus/alerts/#``, which ``#`` does not match) and counts the spool-drop
alerts and the records they report — the proof that a full spool is never a silent loss.

Per message it keeps a 64-bit key of ``(topic, timestamp)`` — to count distinct points and
duplicates at the end — and per topic the last timestamp of the live and of the replayed
(``"historical":true``) stream, to count messages that arrive out of order within a stream.
Counters go to ``STATS`` (JSON) twice a second; the distinct/duplicate counts are added at exit
(SIGTERM).

The keys are a stable 64-bit hash (:func:`message_key`), so the harness can look up points it knows
from elsewhere (the flow's spool at a ``kill -9``): with ``KEYS`` given, they are saved there
(``numpy.save``) at exit.

Usage: ``python -m bench.chaos_sub HOST PORT TOPIC_FILTER STATS CLIENT_ID [KEYS]``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import zlib
from array import array
from pathlib import Path

import numpy as np

_TS = b'"timestamp":"'
_ALERTS = b"$nexus/alerts/"
_HIST = b'{"historical":true'


def message_key(topic: bytes, timestamp: bytes) -> int:
    """The signed 64-bit key of one point's message: its topic and its ``"timestamp"`` text (27 bytes).

    >>> message_key(b"a/b", b"2026-12-01T00:00:00.000000Z") == message_key(b"a/b", b"2026-12-01T00:00:00.000000Z")
    True
    """
    high = zlib.crc32(topic)  # CRC-32s: ten times cheaper than a cryptographic digest at 60 k/s
    return (high - (high >> 31 << 32)) << 32 | zlib.crc32(timestamp)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect_packet(client_id: bytes) -> bytes:
    var = b"\x00\x04MQTT\x04\x00\x00\x3c"  # MQTT 3.1.1, persistent session, keepalive 60 s
    body = var + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10]) + _varint(len(body)) + body


def _subscribe_packet(topic: bytes) -> bytes:
    body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x01"
    return bytes([0x82]) + _varint(len(body)) + body


def _write(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.historical = 0
        self.keys = array("q")
        self.last_live: dict[bytes, bytes] = {}
        self.last_hist: dict[bytes, bytes] = {}
        self.out_of_order_live = 0
        self.out_of_order_hist = 0
        self.redelivered = 0
        """PUBLISHes with the DUP flag: the broker sending again what it had sent before (after its
        restart from its persistence file, which can be up to ``autosave_interval`` old)."""
        self.out_of_order_redelivered = 0
        """Of ``redelivered``: older than a message of the same tag received before — a broker's
        re-delivery, not counted in the streams' order (each was delivered in order the first time)."""
        self.connects = 0
        self.subscribed = False
        self.last_at = 0.0
        self.alerts = 0
        self.alerted_records = 0

    def on_publish(self, topic: bytes, payload: bytes, dup: bool = False) -> None:
        if topic.startswith(_ALERTS):
            self.alerts += 1
            if topic.startswith(_ALERTS + b"spool/"):
                self.alerted_records += int(json.loads(payload).get("records", 0))
            return
        self.messages += 1
        at = payload.find(_TS)
        ts = payload[at + len(_TS) : at + len(_TS) + 27] if at >= 0 else b""
        self.keys.append(message_key(topic, ts))
        hist = payload.startswith(_HIST)
        self.historical += hist
        last = self.last_hist if hist else self.last_live
        previous = last.get(topic, b"")
        if dup:
            self.redelivered += 1
            if ts < previous:
                self.out_of_order_redelivered += 1
                return  # the stream's position stays at the newest message
        elif ts < previous:
            if hist:
                self.out_of_order_hist += 1
            else:
                self.out_of_order_live += 1
        last[topic] = ts

    def report(self, final: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "subscribed": self.subscribed,
            "connects": self.connects,
            "messages": self.messages,
            "historical": self.historical,
            "out_of_order_live": self.out_of_order_live,
            "out_of_order_historical": self.out_of_order_hist,
            "redelivered": self.redelivered,
            "out_of_order_redelivered": self.out_of_order_redelivered,
            "topics": len(self.last_live.keys() | self.last_hist.keys()),
            "alerts": self.alerts,
            "alerted_records": self.alerted_records,
            "last_at": self.last_at,
            "final": final,
        }
        if final:
            keys = np.frombuffer(self.keys, dtype=np.int64) if len(self.keys) else np.empty(0, np.int64)
            distinct = len(np.unique(keys))
            out["distinct"] = distinct
            out["duplicates"] = self.messages - distinct
        return out


def run(  # noqa: PLR0917 - the command line's arguments, in order
    host: str, port: int, topic: bytes, stats: Path, client_id: bytes, stop: threading.Event
) -> Counter:
    c = Counter()
    next_report = time.monotonic()
    while not stop.is_set():
        try:
            sock = socket.create_connection((host, port), timeout=2)
        except OSError:
            stop.wait(0.2)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + 0.5
                _write(stats, c.report())
            continue
        c.connects += 1
        try:
            sock.sendall(_connect_packet(client_id))
            sock.sendall(_subscribe_packet(topic))
            sock.sendall(_subscribe_packet(_ALERTS + b"#"))
            sock.settimeout(0.5)
            buf = b""
            while not stop.is_set():
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    data = None
                if data == b"":
                    break  # the broker closed the connection
                acks = bytearray()
                if data:
                    buf += data
                    pos, end = 0, len(buf)
                    while pos + 2 <= end:
                        header = buf[pos]
                        mult, length, i = 1, 0, pos + 1
                        while i < end:
                            b = buf[i]
                            length += (b & 0x7F) * mult
                            mult *= 128
                            i += 1
                            if not b & 0x80:
                                break
                        else:
                            break
                        if i + length > end:
                            break
                        kind = header >> 4
                        if kind == 3:
                            qos = (header >> 1) & 3
                            tlen = int.from_bytes(buf[i : i + 2], "big")
                            t = buf[i + 2 : i + 2 + tlen]
                            p = i + 2 + tlen
                            if qos:
                                acks += b"\x40\x02" + buf[p : p + 2]
                                p += 2
                            c.on_publish(t, buf[p : i + length], bool(header & 0x08))
                        elif kind == 9:
                            c.subscribed = True
                        pos = i + length
                    buf = buf[pos:]
                    c.last_at = time.time()
                if acks:
                    sock.sendall(acks)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + 0.5
                    _write(stats, c.report())
        except OSError:
            pass
        finally:
            sock.close()
    return c


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    host, port, topic, stats, client_id = argv[0], int(argv[1]), argv[2].encode(), Path(argv[3]), argv[4]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    c = run(host, port, topic, stats, client_id.encode(), stop)
    if len(argv) > 5:
        np.save(argv[5], np.frombuffer(c.keys, dtype=np.int64) if len(c.keys) else np.empty(0, np.int64))
    _write(stats, c.report(final=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
