"""Signed write commands: an HMAC-SHA256 the API adds and the command router checks.

Whoever can publish on ``$nexus/cmd/...`` could otherwise write to a PLC. The API and the flows
share a key (setting ``command_key``, env ``NEXUS_COMMAND_KEY``); the API signs every command it
sends and the router writes only what verifies, within a replay window. The signature covers the
canonical JSON (sorted keys, no spaces, UTF-8) of ``{device, tag, value, request_id, ts}`` where
``ts`` is the signing time in whole milliseconds since the Unix epoch (UTC):

>>> key = b"k3y"
>>> cmd = sign_command(key, "press-01", "setpoint", 42.5, request_id="r1", now_ms=1_700_000_000_000)
>>> sorted(cmd), len(cmd["sig"])
(['request_id', 'sig', 'ts', 'value'], 64)
>>> canonical("press-01", "setpoint", 42.5, "r1", 1_700_000_000_000)
b'{"device":"press-01","request_id":"r1","tag":"setpoint","ts":1700000000000,"value":42.5}'
>>> v = CommandVerifier(key, clock=lambda: 1_700_000_010.0)
>>> v.verify("press-01", "setpoint", cmd)
>>> v.verify("press-01", "setpoint", cmd)
Traceback (most recent call last):
...
core.signing.SignatureRefused: request_id 'r1' was already used within the 30 s replay window (replayed command)
>>> v.verify("press-01", "setpoint", {**cmd, "value": 99, "request_id": "r2"})
Traceback (most recent call last):
...
core.signing.SignatureRefused: bad signature: the command was not signed with this flow's command key, or was altered
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "REPLAY_WINDOW_S",
    "CommandVerifier",
    "SignatureRefused",
    "canonical",
    "ensure_command_key",
    "sign_command",
]

REPLAY_WINDOW_S = 30.0
"""A command is accepted when its ``ts`` is at most this far from the router's clock (either way)."""

MAX_REMEMBERED = 100_000
"""Request ids remembered for the replay check; beyond this the oldest go (they are long stale)."""

Code = Literal["unsigned", "bad_signature", "stale", "replayed", "no_key"]


class SignatureRefused(ValueError):  # noqa: N818 - the name says what happened
    """A command refused for its signature; ``code`` says which check failed (it goes in the ack)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


def canonical(device: str, tag: str, value: object, request_id: str, ts: int) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8, no NaN."""
    doc = {"device": device, "tag": tag, "value": value, "request_id": request_id, "ts": ts}
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_command(
    key: bytes,
    device: str,
    tag: str,
    value: object,
    *,
    request_id: str | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """The payload of a signed command: ``{"value", "request_id", "ts", "sig"}``."""
    rid = request_id or secrets.token_hex(16)
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    sig = _mac(key, canonical(device, tag, value, rid, ts))
    return {"value": value, "request_id": rid, "ts": ts, "sig": sig}


class CommandVerifier:
    """Checks a command's signature, its age and that its request id is new (thread-safe).

    ``key`` None refuses everything (code ``no_key``): a flow that requires signatures but was
    given no key writes nothing. ``clock`` returns seconds since the epoch (injected in tests).
    """

    def __init__(
        self,
        key: bytes | None,
        *,
        window_s: float = REPLAY_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"`window_s` must be > 0, got {window_s}")
        self._key = key
        self.window_s = window_s
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # request id -> when it stops mattering
        self._lock = threading.Lock()

    def verify(self, device: str, tag: str, doc: Mapping[str, Any]) -> None:
        """Return if ``doc`` (the parsed command object) is signed, fresh and new; else :class:`SignatureRefused`."""
        if self._key is None:
            raise SignatureRefused(
                "no_key", "this flow requires signed commands but has no command key (set NEXUS_COMMAND_KEY)"
            )
        sig, ts, rid = doc.get("sig"), doc.get("ts"), doc.get("request_id")
        if sig is None:
            raise SignatureRefused(
                "unsigned", "unsigned command: this flow accepts only signed commands (`sig`)"
            )
        if not isinstance(sig, str) or not isinstance(rid, str) or not rid:
            raise SignatureRefused("unsigned", "a signed command needs `sig` and `request_id` as strings")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise SignatureRefused(
                "unsigned", "a signed command needs `ts` as whole milliseconds since the epoch"
            )
        try:
            expected = _mac(self._key, canonical(device, tag, doc.get("value"), rid, ts))
        except ValueError:  # NaN / infinity in the value cannot be canonical
            raise SignatureRefused(
                "bad_signature", "bad signature: the value is not canonical JSON"
            ) from None
        if not hmac.compare_digest(expected, sig):
            raise SignatureRefused(
                "bad_signature",
                "bad signature: the command was not signed with this flow's command key, or was altered",
            )
        now = self._clock()
        age = now - ts / 1000
        if abs(age) > self.window_s:
            where = f"{age:.1f} s old" if age > 0 else f"{-age:.1f} s in the future"
            raise SignatureRefused(
                "stale",
                f"stale command: signed {where} (replay window {self.window_s:g} s; check the clocks)",
            )
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now:
                self._seen.popitem(last=False)
            if rid in self._seen:
                raise SignatureRefused(
                    "replayed",
                    f"request_id {rid!r} was already used within the {self.window_s:g} s replay window"
                    " (replayed command)",
                )
            self._seen[rid] = ts / 1000 + self.window_s
            if len(self._seen) > MAX_REMEMBERED:
                self._seen.popitem(last=False)


def ensure_command_key(path: Path) -> str:
    """The key stored at ``path``, or a new random one written there (0600) — for the demo, so tag
    writes work without configuring a key. Never logged."""
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(key + "\n", encoding="utf-8")
    tmp.replace(path)
    return key
