"""A paho client that reads the socket in large chunks and hands PUBACKs over in batches.

paho reads every packet with several small ``recv`` calls (1 byte of type, 1-4 of length, then the
body) and dispatches each PUBACK through its locks and ``on_publish``: about 7-8 k acknowledgements/s
on this project's 2-core box, which bounds QoS 1 publishing (BENCHMARKS.md). This subclass replaces
only ``_packet_read``: one ``recv`` of up to 64 KiB, every complete packet in it parsed; PUBACKs
(4 bytes each) are collected and given to ``on_pubacks`` once per read, every other packet goes through
paho's own handler unchanged (CONNACK, PINGRESP, SUBACK, PUBLISH, ...). Connection handling, keepalive,
TLS and reconnects stay paho's.

``on_pubacks(mids) -> mids not mine`` is the owner's hook: it settles the message ids it published
itself and returns the others, which go to paho's PUBACK handler (messages published with
``client.publish``).

>>> c = BatchAckClient(mqtt.CallbackAPIVersion.VERSION2)
>>> c._split(bytearray(b"\\x40\\x02\\x00\\x07\\x40\\x02\\x01\\x00\\xd0\\x00\\x40\\x02"))
([[7, 256], (208, b'')], 10)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from connectors.mqtt.client import QuietClient

__all__ = ["BatchAckClient"]

log = logging.getLogger(__name__)

_PUBACK = 0x40
_READ_SIZE = 1 << 16


class BatchAckClient(QuietClient):
    """paho's client with a chunked read path and batched PUBACK delivery (see the module doc)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.on_pubacks: Callable[[list[int]], list[int]] | None = None
        self._rbuf = bytearray()
        self._rsock: object = None

    @staticmethod
    def _split(buf: bytearray) -> tuple[list[list[int] | tuple[int, bytes]], int]:
        """The complete packets at the start of ``buf`` in arrival order — runs of PUBACKs as lists of
        message ids, any other packet as ``(command, body)`` — and how many bytes they used; an
        incomplete packet at the end stays for the next read."""
        out: list[list[int] | tuple[int, bytes]] = []
        acks: list[int] = []
        pos, end = 0, len(buf)
        while pos < end:
            cmd = buf[pos]
            if cmd == _PUBACK and pos + 4 <= end and buf[pos + 1] == 2:
                acks.append((buf[pos + 2] << 8) | buf[pos + 3])
                pos += 4
                continue
            length, mult, i, complete = 0, 1, pos + 1, False
            while i < end:
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                if not byte & 0x80:
                    complete = True
                    break
                mult *= 128
                if i - pos > 4:
                    raise MalformedPacket("remaining length longer than 4 bytes")
            if not complete or i + length > end:
                break  # incomplete: the rest comes with the next read
            if acks:
                out.append(acks)
                acks = []
            out.append((cmd, bytes(buf[i : i + length])))
            pos = i + length
        if acks:
            out.append(acks)
        return out, pos

    def _packet_read(self) -> MQTTErrorCode:  # paho's hook for "the socket is readable"
        if self._sock is not self._rsock:  # a new connection: nothing of the old one's bytes is valid
            self._rbuf.clear()
            self._rsock = self._sock
        try:
            data = self._sock_recv(_READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        buf = self._rbuf
        buf += data
        try:
            packets, used = self._split(buf)
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        del buf[:used]
        hook = self.on_pubacks
        for item in packets:
            if isinstance(item, list):
                for mid in hook(item) if hook is not None else item:
                    rc = self._handle_one(_PUBACK, mid.to_bytes(2, "big"))
                    if rc:
                        return rc
            else:
                rc = self._handle_one(*item)
                if rc:
                    return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_one(self, cmd: int, body: bytes) -> MQTTErrorCode:
        """One packet through paho's own dispatch, shaped as its byte-wise reader leaves it."""
        self._in_packet = {
            "command": cmd,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return rc
