"""Write-back over MQTT: ``$nexus/cmd/{device}/{tag}/set`` commands, validated, written, acknowledged.

A command's payload is ``{"value": 42.5, "request_id": "abc"}`` or a bare JSON value (``42.5``,
``true``, ``"auto"``). Before anything reaches a device, the :class:`CommandRouter` checks that
the device and the tag exist, that the tag is writable, that the value fits the tag's data type
and its limits (in engineering units), and converts it to the raw value the device holds
(``raw = (eng - offset) / scale``; integer types must come out whole and within the type's
range). The raw value then goes to the writer registered for the device (the polling partition's
``submit_write``), and the result is answered on ``$nexus/cmd/{device}/{tag}/ack`` (QoS 1, not
retained)::

    {"request_id": "abc", "ok": false, "error": "tag 'temp' of device 'press-01' is read-only",
     "value": 42.5, "timestamp": "2024-05-01T12:00:00.123Z"}

The ack echoes the command's ``value`` only while its JSON stays within ``MAX_ACK_VALUE_BYTES``
(256); a larger one (a 1 MB string sent to a tag) is answered with ``"value": null`` and
``"value_omitted": "string of 1048576 characters"`` — an ack is a receipt, not a mirror.

The validation is a pure function, :func:`check_value`:

>>> t = WritableTag("press-01", "setpoint", 7, "int16", writable=True, low=0, high=500, scale=0.1)
>>> check_value(t, 42.5)
425
>>> check_value(t, 600)
Traceback (most recent call last):
...
connectors.commands.CommandRefused: value 600 is above the high limit 500 of tag 'setpoint' of device 'press-01'
>>> check_value(WritableTag("press-01", "n", 8, "int16", writable=True), 70000)
Traceback (most recent call last):
...
connectors.commands.CommandRefused: value 70000 out of range for int16 after scaling (raw 70000; int16 holds -32768..32767)
>>> parse_command(b'{"value": 1, "request_id": "r1"}'), parse_command(b"true")
((1, 'r1'), (True, None))

Processes and ownership. Each dataflow process runs one router; a process registers only the
devices whose partitions it owns (``register`` in the partition's constructor, ``unregister`` in
its ``close``). Every router receives every command, so:

- a device that is not in the spec at all is answered "unknown device" when ``answer_unknown``
  (set it on one process only, e.g. process 0, or every process answers);
- a device in the spec that this process does not own is left to its owner (silence), unless
  ``answer_unowned`` — right for a single-process deployment, where it means the device's
  partition is not running, and wrong for a cluster, where it would contradict the owner's ack.

A broker shared subscription (``$share/group/...``) is deliberately not used: it hands each
command to *one* process, which is only right if every process can write every device.

Signatures (:mod:`core.signing`): unless the flow turns signing off explicitly (spec
``commands: {require_signature: false}``), a command must carry ``request_id``, ``ts`` and ``sig``
(HMAC-SHA256 with the shared command key over the canonical JSON of device, tag, value, request id
and ts), be at most 30 s away from the router's clock, and use a request id not seen within that
window. Anything else writes nothing and is answered with ``ok: false``, the reason in ``error`` and
a ``code`` (``unsigned``, ``bad_signature``, ``stale``, ``replayed``, ``no_key``) — the API records
those acks in the audit log.

Other choices, for safety: retained ``set`` messages are ignored (a retained command would be
written again at every reconnect); the router's session is clean (a command sent while no router
listens is lost and never acked, rather than written minutes later); a repeated ``request_id``
for the same tag within the last 1024 commands is not written twice (QoS 1 may redeliver).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from connectors.mqtt.subscriber import DeviceSubscriber
from connectors.polling import WriteFailed, WriteRejected
from core.signing import CommandVerifier, SignatureRefused
from core.uns import CMD_PREFIX

__all__ = [
    "CommandRefused",
    "CommandRouter",
    "WritableTag",
    "WriteDataType",
    "WriteFailed",
    "WriteRejected",
    "Writer",
    "check_value",
    "parse_command",
]

log = logging.getLogger(__name__)

WriteDataType = Literal[
    "bool", "bit", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "string",
]  # fmt: skip

_INT_RANGE: dict[str, tuple[int, int]] = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38

Writer = Callable[[int, Any], "concurrent.futures.Future[None]"]
"""``writer(tag_id, raw_value)``: starts the write and returns at once with a future — the polling
partition's ``submit_write``. The future fails with :class:`~connectors.polling.WriteRejected`
(refused before any I/O) or :class:`~connectors.polling.WriteFailed` (device or link failed)."""


class CommandRefused(ValueError):  # noqa: N818 - the name says what happened
    """A command that is not sent to the device; the message is the ack's ``error``."""


@dataclass(frozen=True, slots=True)
class WritableTag:
    """What the router needs to know to accept a value for a tag.

    ``low``/``high`` are limits in engineering units; ``scale``/``offset`` are the tag's read
    conversion (``eng = raw * scale + offset``), inverted for writes. ``max_length`` bounds strings (characters).
    """

    device_id: str
    tag_name: str
    tag_id: int
    data_type: WriteDataType
    writable: bool = False
    low: float | None = None
    high: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"`scale` of tag {self.tag_name!r} must be finite and not 0, got {self.scale}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"`low` ({self.low}) of tag {self.tag_name!r} must be <= `high` ({self.high})")

    @property
    def where(self) -> str:
        return f"tag {self.tag_name!r} of device {self.device_id!r}"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fmt(x: float | int) -> str:
    """A number for a message: integers exactly, floats shortest (``1e+20``, ``0.1``)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _show(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_value(tag: WritableTag, value: object) -> object:
    """The raw value to write for the engineering ``value``, or :class:`CommandRefused` saying why not."""
    dt = tag.data_type
    if dt in ("bool", "bit"):
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise CommandRefused(
            f"{tag.where} takes a boolean (true/false, 0/1), got {_kind(value)} {_show(value)}"
        )
    if dt == "string":
        if not isinstance(value, str):
            raise CommandRefused(f"{tag.where} takes a string, got {_kind(value)} {_show(value)}")
        if tag.max_length is not None and len(value) > tag.max_length:
            raise CommandRefused(
                f"string of {len(value)} characters is longer than the {tag.max_length} {tag.where} holds"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandRefused(f"{tag.where} takes a number ({dt}), got {_kind(value)} {_show(value)}")
    if not math.isfinite(value):
        raise CommandRefused(f"value {value} for {tag.where} is not a finite number")
    if tag.low is not None and value < tag.low:
        raise CommandRefused(f"value {_fmt(value)} is below the low limit {_fmt(tag.low)} of {tag.where}")
    if tag.high is not None and value > tag.high:
        raise CommandRefused(f"value {_fmt(value)} is above the high limit {_fmt(tag.high)} of {tag.where}")
    if tag.scale == 1.0 and tag.offset == 0.0 and isinstance(value, int):
        raw: float | int = value  # exact, even beyond 2**53
    else:
        raw = (value - tag.offset) / tag.scale
    if dt in ("float32", "float64"):
        if dt == "float32" and abs(raw) > _FLOAT32_MAX:
            raise CommandRefused(
                f"value {_fmt(value)} out of range for float32 after scaling (raw {_fmt(raw)})"
            )
        return float(raw)
    low, high = _INT_RANGE[dt]
    if isinstance(raw, float):
        nearest = round(raw)
        if abs(raw - nearest) > 1e-9 * max(1.0, abs(raw)):
            raise CommandRefused(
                f"value {_fmt(value)} is not a whole number for {dt} after scaling (raw {_fmt(raw)}) for {tag.where}"
            )
        raw = int(nearest)
    if not low <= raw <= high:
        raise CommandRefused(
            f"value {_fmt(value)} out of range for {dt} after scaling (raw {raw}; {dt} holds {low}..{high})"
        )
    return raw


def parse_command(payload: bytes) -> tuple[object, str | int | None]:
    """``(value, request_id)`` of a command payload, or :class:`CommandRefused` saying what is wrong."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandRefused(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise CommandRefused("malformed JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        if isinstance(doc, list):
            raise CommandRefused('a command is a JSON object {"value": ...} or a bare value, not an array')
        return doc, None
    request_id = doc.get("request_id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, str | int)):
        raise CommandRefused(f"request_id must be a string, got {_kind(request_id)}")
    if isinstance(request_id, str) and len(request_id) > 200:
        raise CommandRefused("request_id is longer than 200 characters")
    if "value" not in doc:
        raise CommandRefused('command has no "value"')
    return doc["value"], request_id


def _request_id_of(payload: bytes) -> str | int | None:
    """The request id of a payload that is otherwise refused, if one can be found (for the ack)."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    rid = doc.get("request_id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None


MAX_ACK_VALUE_BYTES = 256
"""The largest command value (as JSON) an ack repeats; see the module docstring."""


def _ack_value(value: object) -> tuple[object, str | None]:
    """``(value to echo, why it was left out or None)``."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):  # NaN in a refused command, or too deep
        return None, None
    if len(text) <= MAX_ACK_VALUE_BYTES:
        return value, None
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} bytes of JSON"
    return None, f"{_kind(value)} of {size}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _Pending:
    device_id: str
    tag_name: str
    request_id: str | int | None
    value: object
    deadline: float
    future: concurrent.futures.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class RouterStats:
    received: int
    written: int
    """Commands the device confirmed (ok acks)."""
    refused: int
    """Commands refused before reaching a device (validation, unknown device or tag, busy)."""
    failed: int
    """Writes the device refused or that failed."""
    timeouts: int
    not_owned: int
    """Commands for devices of the spec that this process does not own (left to the owner)."""
    ignored: int
    """Retained commands, duplicates of a recent request id, malformed topics."""
    pending: int
    unsigned: int = 0
    """Of ``refused``: commands without a valid, fresh, new signature."""


class CommandRouter(DeviceSubscriber[Writer]):
    """Receives ``$nexus/cmd/+/+/set``, validates, dispatches to the registered writers, acks.

    ``tags`` holds every tag of the spec, writable or not, keyed by ``(device_id, tag_name)``.
    Never blocks paho's network thread: validation happens there (it is quick), writers are called
    from a small thread pool and their futures complete through callbacks; one reaper thread
    answers the writes that miss ``timeout_s`` (the write may still happen on the device).
    At most ``max_pending`` writes are in flight; more are refused as busy.

    ``require_signature`` (the default) writes only commands signed with ``command_key`` (see the
    module docstring); without a key every command is then refused. ``clock`` (seconds since the
    epoch) is the replay window's clock.
    """

    def __init__(
        self,
        mqtt_url: str,
        tags: Mapping[tuple[str, str], WritableTag],
        *,
        client_id: str | None = None,
        timeout_s: float = 5.0,
        max_pending: int = 100,
        answer_unknown: bool = True,
        answer_unowned: bool = False,
        connect_timeout_s: float = 10.0,
        command_key: bytes | None = None,
        require_signature: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"`timeout_s` must be > 0, got {timeout_s}")
        if max_pending < 1:
            raise ValueError(f"`max_pending` must be >= 1, got {max_pending}")
        for key, tag in tags.items():
            if key != (tag.device_id, tag.tag_name):
                raise ValueError(
                    f"`tags` key {key} does not match its tag ({tag.device_id!r}, {tag.tag_name!r})"
                )
        super().__init__(
            mqtt_url,
            f"{CMD_PREFIX}/+/+/set",
            client_id=client_id,
            client_prefix="nexus-cmd",
            connect_timeout_s=connect_timeout_s,
        )
        self.tags = dict(tags)
        self.devices = frozenset(d for d, _ in self.tags)
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.answer_unknown = answer_unknown
        self.answer_unowned = answer_unowned
        self._verifier = CommandVerifier(command_key, clock=clock) if require_signature else None
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._recent: OrderedDict[tuple[str, str, str | int], None] = OrderedDict()
        self._counts = dict.fromkeys(
            ("received", "written", "refused", "failed", "timeouts", "not_owned", "ignored", "unsigned"), 0
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="nexus-cmd")
        self._reaper = threading.Thread(target=self._reap, name="nexus-cmd-reaper", daemon=True)

    name = "command router"

    # -- lifecycle -----------------------------------------------------------------------------

    def _on_start(self) -> None:
        self._reaper.start()

    def start(self, timeout: float | None = None) -> CommandRouter:
        """Connect and wait until the subscription is granted; :class:`TimeoutError` after ``timeout``.

        paho keeps reconnecting in the background after a timeout; ``close()`` stops it.
        """
        super().start(timeout)
        return self

    def close(self) -> None:
        """Answer the writes still in flight as failed, disconnect, stop the threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            left = list(self._pending)
            self._cond.notify_all()
        for seq in left:
            self._finish(seq, False, "command router closed before the write completed")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._disconnect()
        if self._started:
            self._reaper.join(2.0)

    def __enter__(self) -> CommandRouter:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- writers -------------------------------------------------------------------------------

    def register(self, device_id: str, writer: Writer) -> None:
        """Route the device's commands to ``writer`` (this process owns the device)."""
        if device_id not in self.devices:
            raise ValueError(f"device {device_id!r} has no tags in the router's spec")
        super().register(device_id, writer)

    def set_device_tags(self, device_id: str, tags: Mapping[str, WritableTag]) -> None:
        """Replace what the router knows of a device's tags (a hot config change), by tag name."""
        if device_id not in self.devices:
            raise ValueError(f"device {device_id!r} has no tags in the router's spec")
        with self._cond:
            kept = {k: t for k, t in self.tags.items() if k[0] != device_id}
            kept.update(((device_id, name), t) for name, t in tags.items())
            self.tags = kept

    # -- messages (paho's network thread) --------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._cond:
            self._counts[name] += 1

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        self._count("received")
        levels = topic.split("/")
        if len(levels) != 5 or levels[4] != "set" or "/".join(levels[:2]) != CMD_PREFIX:
            self._count("ignored")
            return
        device_id, tag_name = levels[2], levels[3]
        if retained:
            self._count("ignored")
            log.warning(
                "command router: ignoring a retained command on %r (clear it: publish an empty retained message)",
                topic,
            )
            return
        if device_id not in self.devices:
            self._count("refused")
            if self.answer_unknown:
                self._ack(
                    device_id, tag_name, _request_id_of(payload), False, f"unknown device {device_id!r}", None
                )
            return
        writer = self.handler(device_id)
        if writer is None:
            self._count("not_owned")
            if self.answer_unowned:
                self._ack(
                    device_id, tag_name, _request_id_of(payload), False,
                    f"device {device_id!r} is not connected in this process", None,
                )  # fmt: skip
            return
        value: object = None
        request_id = _request_id_of(payload)
        try:
            value, request_id = parse_command(payload)
            if self._verifier is not None:
                doc = json.loads(payload)
                self._verifier.verify(device_id, tag_name, doc if isinstance(doc, dict) else {})
            with self._cond:
                tag = self.tags.get((device_id, tag_name))
            if tag is None:
                raise CommandRefused(f"unknown tag {tag_name!r} of device {device_id!r}")
            if not tag.writable:
                raise CommandRefused(f"{tag.where} is read-only")
            raw = check_value(tag, value)
        except SignatureRefused as exc:
            with self._cond:
                self._counts["refused"] += 1
                self._counts["unsigned"] += 1
            self._ack(device_id, tag_name, request_id, False, str(exc), value, code=exc.code)
            return
        except CommandRefused as exc:
            self._count("refused")
            self._ack(device_id, tag_name, request_id, False, str(exc), value)
            return
        with self._cond:
            if request_id is not None:
                key = (device_id, tag_name, request_id)
                if key in self._recent:
                    self._counts["ignored"] += 1
                    return
                self._recent[key] = None
                if len(self._recent) > 1024:
                    self._recent.popitem(last=False)
            busy = len(self._pending) >= self.max_pending or self._closed
            if not busy:
                self._seq += 1
                seq = self._seq
                self._pending[seq] = _Pending(
                    device_id, tag_name, request_id, value, time.monotonic() + self.timeout_s
                )
                self._cond.notify_all()  # the reaper learns the new deadline
        if busy:
            self._count("refused")
            self._ack(
                device_id, tag_name, request_id, False, f"busy: {self.max_pending} writes in flight", value
            )
            return
        try:
            self._pool.submit(self._dispatch, seq, writer, tag.tag_id, raw)
        except RuntimeError:  # the pool is shut down: closing
            self._finish(seq, False, "command router closed before the write completed")

    # -- writes (pool threads, writer callbacks, reaper) ---------------------------------------

    def _dispatch(self, seq: int, writer: Writer, tag_id: int, raw: object) -> None:
        try:
            fut = writer(tag_id, raw)
        except Exception as exc:
            self._finish(seq, False, self._write_error(seq, exc), count="failed")
            return
        with self._cond:
            pending = self._pending.get(seq)
            if pending is not None:
                pending.future = fut
        if pending is None:  # timed out before the writer even returned
            fut.cancel()
            return
        fut.add_done_callback(partial(self._on_done, seq))

    def _on_done(self, seq: int, fut: concurrent.futures.Future[None]) -> None:
        if fut.cancelled():
            self._finish(seq, False, "write cancelled", count="failed")
            return
        exc = fut.exception()
        if exc is None:
            self._finish(seq, True, None, count="written")
        else:
            self._finish(seq, False, self._write_error(seq, exc), count="failed")

    def _write_error(self, seq: int, exc: BaseException) -> str:
        with self._cond:
            p = self._pending.get(seq)
        where = f"{p.device_id}/{p.tag_name}" if p is not None else "?"
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        if isinstance(exc, WriteRejected):
            return f"write to {where} rejected: {reason}"
        if isinstance(exc, WriteFailed):
            code = f" (device error code {exc.code})" if exc.code is not None else ""
            return f"write to {where} failed: {reason}{code}"
        if isinstance(exc, ValueError):
            return f"write to {where} rejected: {reason}"
        return f"write to {where} failed: {reason}"

    def _reap(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                expired = [s for s, p in self._pending.items() if p.deadline <= now]
                if expired:
                    self._cond.release()
                    try:
                        for seq in expired:
                            self._expire(seq)
                    finally:
                        self._cond.acquire()
                    continue
                nearest = min((p.deadline for p in self._pending.values()), default=None)
                self._cond.wait(None if nearest is None else max(0.0, nearest - time.monotonic()))

    def _expire(self, seq: int) -> None:
        with self._cond:
            p = self._pending.get(seq)
        if p is None:
            return
        if self._finish(
            seq, False,
            f"no answer from device {p.device_id!r} within {self.timeout_s:g} s; the write may still happen",
            count="timeouts",
        ) and p.future is not None:  # fmt: skip
            p.future.cancel()

    def _finish(self, seq: int, ok: bool, error: str | None, *, count: str | None = None) -> bool:
        """Answer a pending write exactly once (False if it was already answered)."""
        with self._cond:
            p = self._pending.pop(seq, None)
            if p is None:
                return False
            if count is not None:
                self._counts[count] += 1
        self._ack(p.device_id, p.tag_name, p.request_id, ok, error, p.value)
        return True

    def _ack(  # noqa: PLR0917
        self,
        device_id: str,
        tag_name: str,
        request_id: str | int | None,
        ok: bool,
        error: str | None,
        value: object,
        *,
        code: str | None = None,
    ) -> None:
        echo, omitted = _ack_value(value)
        body = {"request_id": request_id, "ok": ok, "error": error, "value": echo, "timestamp": _now_iso()}
        if omitted is not None:
            body["value_omitted"] = omitted
        if code is not None:
            body["code"] = code
        payload = json.dumps(body)
        if not ok:
            log.info("command %s/%s refused or failed: %s", device_id, tag_name, error)
        self._client.publish(f"{CMD_PREFIX}/{device_id}/{tag_name}/ack", payload, qos=1, retain=False)

    def stats(self) -> RouterStats:
        with self._cond:
            return RouterStats(**self._counts, pending=len(self._pending))

    # -- other command front ends ------------------------------------------------------------

    def submit(self, device_id: str, tag_name: str, value: object) -> concurrent.futures.Future[None]:
        """Write ``value`` (engineering units) through the same checks as a ``$nexus/cmd`` command.

        For other command front ends (a Sparkplug DCMD), only when signatures are not required
        (a DCMD cannot carry one): the tag must exist and be ``read_write``,
        the value must fit its data type and clamp limits, and this process must own the device;
        otherwise :class:`CommandRefused` says why and nothing reaches the device. Returns the
        writer's future (it fails with ``WriteRejected``/``WriteFailed`` like a command's write).
        """
        if self._verifier is not None:
            raise CommandRefused(
                "this flow accepts only signed commands and a Sparkplug DCMD carries no signature;"
                " set `commands: {require_signature: false}` in the flow spec to accept DCMD writes"
            )
        tag = self.tags.get((device_id, tag_name))
        if tag is None:
            raise CommandRefused(f"unknown tag {tag_name!r} of device {device_id!r}")
        if not tag.writable:
            raise CommandRefused(f"{tag.where} is read-only")
        raw = check_value(tag, value)
        writer = self.handler(device_id)  # the owner's writer (registered by its partition)
        if writer is None:
            raise CommandRefused(f"device {device_id!r} is not connected in this process")
        try:
            return writer(tag.tag_id, raw)
        except Exception as exc:
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            failed.set_exception(exc)
            return failed
