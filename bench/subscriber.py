"""A lean MQTT 3.1.1 subscriber for the benchmark, in its own process: ``python -m bench.subscriber``.

Counts every PUBLISH on ``TOPIC_FILTER`` straight off the socket (no per-message client machinery, so
it keeps up with the broker), and for every ``sample``-th message parses the payload's ``timestamp``
to record the source → subscriber latency. Counters go to ``STATS`` (JSON) twice a second; the
latency samples ``(receive time, latency s)`` are written there at exit (SIGTERM).

Usage: ``python -m bench.subscriber HOST PORT TOPIC_FILTER STATS [SAMPLE]``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

_TS = b'"timestamp":"'


def _connect_packet(client_id: bytes) -> bytes:
    var = b"\x00\x04MQTT\x04\x02\x00\x00"  # MQTT 3.1.1, clean session, keepalive 0 (off)
    body = var + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10]) + _varint(len(body)) + body


def _subscribe_packet(topic: bytes) -> bytes:
    body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x00"
    return bytes([0x82]) + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _write(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    host, port, topic, stats = argv[0], int(argv[1]), argv[2].encode(), Path(argv[3])
    sample = int(argv[4]) if len(argv) > 4 else 50
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(_connect_packet(f"bench-sub-{os.getpid()}".encode()))
    sock.sendall(_subscribe_packet(topic))
    sock.settimeout(0.5)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    count = 0
    first = last = 0.0
    samples: list[tuple[float, float]] = []
    buf = b""
    suback = False
    next_report = time.monotonic()
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            data = b""
        except OSError:
            break
        now = time.time()
        if data:
            buf += data
            pos, end = 0, len(buf)
            while pos + 2 <= end:
                header = buf[pos]
                # remaining length: 1..4 bytes
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
                    count += 1
                    if count % sample == 0:
                        body = buf[i : i + length]
                        at = body.find(_TS)
                        if at >= 0:
                            ts = body[at + len(_TS) : at + len(_TS) + 27].decode()
                            with_tz = ts.replace("Z", "+00:00")
                            samples.append((now, now - datetime.fromisoformat(with_tz).timestamp()))
                elif kind == 9:
                    suback = True
                pos = i + length
            buf = buf[pos:]
            if count:
                last = now
                if not first:
                    first = now
        elif not data and not stop.is_set() and sock.fileno() < 0:
            break
        if time.monotonic() >= next_report:
            next_report += 0.5
            _write(stats, {"subscribed": suback, "messages": count, "first": first, "last": last})
    _write(
        stats,
        {"subscribed": suback, "messages": count, "first": first, "last": last, "samples": samples},
    )
    sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
