"""Signed commands (pure): canonical form, the replay window on a fake clock, the generated key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from core.settings import Settings
from core.signing import CommandVerifier, SignatureRefused, canonical, ensure_command_key, sign_command

KEY = b"unit-test-key"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def refused(v: CommandVerifier, doc: dict[str, object], device: str = "d", tag: str = "t") -> str:
    with pytest.raises(SignatureRefused) as err:
        v.verify(device, tag, doc)
    return err.value.code


def test_canonical_form_is_independent_of_key_order_and_whitespace() -> None:
    signed = sign_command(KEY, "d", "t", {"b": 1, "a": [1.5, "é"]}, request_id="r", now_ms=5)
    reparsed = json.loads(json.dumps(signed, indent=4, sort_keys=False))
    CommandVerifier(KEY, clock=lambda: 0.005).verify("d", "t", reparsed)
    assert canonical("d", "t", {"b": 1, "a": 2}, "r", 5) == canonical("d", "t", {"a": 2, "b": 1}, "r", 5)
    assert "é".encode() in canonical("d", "t", "é", "r", 5)  # UTF-8, not \\u escapes


def test_the_replay_window_on_both_sides_and_request_ids() -> None:
    clock = Clock()
    v = CommandVerifier(KEY, clock=clock)
    ms = int(T0 * 1000)
    v.verify("d", "t", sign_command(KEY, "d", "t", 1, request_id="edge-old", now_ms=ms - 30_000))
    v.verify("d", "t", sign_command(KEY, "d", "t", 1, request_id="edge-new", now_ms=ms + 30_000))
    assert refused(v, sign_command(KEY, "d", "t", 1, request_id="old", now_ms=ms - 30_001)) == "stale"
    assert refused(v, sign_command(KEY, "d", "t", 1, request_id="new", now_ms=ms + 30_001)) == "stale"
    fresh = sign_command(KEY, "d", "t", 1, request_id="r", now_ms=ms)
    v.verify("d", "t", fresh)
    assert refused(v, fresh) == "replayed"
    assert refused(v, sign_command(KEY, "d", "t", 2, request_id="r", now_ms=ms)) == "replayed"  # same id
    clock.now += 31  # past the window the same message is stale, never accepted again
    assert refused(v, fresh) == "stale"


def test_what_a_signature_covers() -> None:
    v = CommandVerifier(KEY, clock=lambda: T0)
    good = sign_command(KEY, "d", "t", 1, request_id="r", now_ms=int(T0 * 1000))
    assert refused(v, good, device="other") == "bad_signature"
    assert refused(v, good, tag="other") == "bad_signature"
    for field, value in (("value", 2), ("ts", good["ts"] + 1), ("request_id", "r2"), ("sig", "0" * 64)):
        assert refused(v, {**good, field: value}) == "bad_signature", field
    assert refused(v, {"value": 1}) == "unsigned"
    assert refused(v, {**good, "ts": 1.5}) == "unsigned"
    assert refused(v, {**good, "request_id": None}) == "unsigned"
    assert refused(CommandVerifier(None), good) == "no_key"
    assert refused(v, {**good, "value": float("nan")}) == "bad_signature"


def test_the_generated_key_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "command-key"
    key = ensure_command_key(path)
    assert len(key) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_command_key(path) == key


def test_settings_never_show_the_key() -> None:
    s = Settings.from_env({"NEXUS_COMMAND_KEY": "top-secret-key"})
    assert s.command_key == "top-secret-key"
    assert "top-secret-key" not in repr(s) and "top-secret-key" not in str(s)
