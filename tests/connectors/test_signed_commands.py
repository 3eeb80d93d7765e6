"""Signed commands end to end: a real broker, the command router, a real pymodbus device, the audit log.

Whatever is published on ``$nexus/cmd`` without a valid, fresh, new signature writes nothing to
the device and is answered with the reason; the API's audit subscriber records each refusal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.commands import CommandRouter
from control.audit import AuditLog
from control.command_audit import CommandAudit
from control.store import ConfigStore
from core.batch import tag_id_for
from core.signing import sign_command
from tests.conftest import wait_for
from tests.connectors.test_commands import DEV, TAGS, Commander, ModbusWriter, cmd, sim, writer

__all__ = ["cmd", "sim", "writer"]  # fixtures shared with test_commands

pytestmark = pytest.mark.integration

KEY = b"router-test-command-key"


@pytest.fixture
def router(mqtt_url: str, writer: ModbusWriter) -> Iterator[CommandRouter]:
    r = CommandRouter(mqtt_url, TAGS, timeout_s=5.0, command_key=KEY).start()
    r.register(DEV, writer)
    yield r
    r.close()


def send(cmd: Commander, tag: str, payload: dict[str, Any] | str) -> dict[str, Any]:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    rid = json.loads(body)["request_id"]
    cmd.send(DEV, tag, body)
    return cmd.ack_for(rid)[1]


def test_unsigned_forged_altered_and_stale_commands_write_nothing(
    router: CommandRouter, writer: ModbusWriter, cmd: Commander
) -> None:
    count_before = writer.read()[0][2]
    now_ms = int(time.time() * 1000)
    altered = {**sign_command(KEY, DEV, "count", 5, request_id="altered"), "value": 99}
    refusals = [
        ({"value": 99, "request_id": "plain"}, "unsigned", "unsigned command"),
        (sign_command(b"other-key", DEV, "count", 99, request_id="forged"), "bad_signature", "bad signature"),
        (altered, "bad_signature", "bad signature"),
        (sign_command(KEY, DEV, "setpoint", 9, request_id="moved"), "bad_signature", "bad signature"),
        (sign_command(KEY, DEV, "count", 99, request_id="old", now_ms=now_ms - 31_000), "stale", "s old"),
        (
            sign_command(KEY, DEV, "count", 99, request_id="ahead", now_ms=now_ms + 60_000),
            "stale",
            "in the future",
        ),
        ({**sign_command(KEY, DEV, "count", 99, request_id="nots"), "ts": "soon"}, "unsigned", "`ts`"),
    ]
    for payload, code, reason in refusals:  # all sent to `count` ("moved" was signed for another tag)
        ack = send(cmd, "count", payload)
        assert ack["ok"] is False and ack["code"] == code and reason in ack["error"], (payload, ack)
    assert writer.calls == []
    assert writer.read()[0][2] == count_before
    stats = router.stats()
    assert stats.unsigned == len(refusals) and stats.written == 0


def test_a_signed_command_is_written_once_and_its_replay_refused(
    router: CommandRouter, writer: ModbusWriter, cmd: Commander
) -> None:
    signed = sign_command(KEY, DEV, "count", 21, request_id="once")
    ack = send(cmd, "count", signed)
    assert ack == {**ack, "ok": True, "error": None, "value": 21}
    assert writer.read()[0][2] == 21
    writer.reader.write_register(2, 3, device_id=1)  # changed on the device meanwhile
    cmd.acks.clear()
    replay = send(cmd, "count", signed)
    assert replay["ok"] is False and replay["code"] == "replayed", replay
    assert writer.read()[0][2] == 3  # the replay wrote nothing
    assert writer.calls == [(tag_id_for(DEV, "count"), 21)]


def test_without_a_key_nothing_is_written_and_with_signing_off_unsigned_commands_are(
    mqtt_url: str, writer: ModbusWriter, cmd: Commander
) -> None:
    with CommandRouter(mqtt_url, TAGS, timeout_s=5.0) as keyless:
        keyless.register(DEV, writer)
        ack = send(cmd, "count", sign_command(KEY, DEV, "count", 8, request_id="nokey"))
        assert ack["ok"] is False and ack["code"] == "no_key" and "NEXUS_COMMAND_KEY" in ack["error"]
        with pytest.raises(ValueError, match="DCMD carries no signature"):
            keyless.submit(DEV, "count", 8)  # a Sparkplug DCMD cannot be signed
    assert writer.calls == []
    with CommandRouter(mqtt_url, TAGS, timeout_s=5.0, require_signature=False) as open_router:
        open_router.register(DEV, writer)
        assert send(cmd, "count", {"value": 8, "request_id": "open"})["ok"] is True
    assert writer.read()[0][2] == 8


def test_refusals_are_recorded_in_the_audit_log(
    db: str, mqtt_url: str, router: CommandRouter, writer: ModbusWriter, cmd: Commander
) -> None:
    store = ConfigStore(db)
    store.migrate()
    audit = AuditLog(store.engine)
    listener = CommandAudit(mqtt_url, audit).start()
    try:
        send(cmd, "count", {"value": 1, "request_id": "audited"})
        assert send(cmd, "count", sign_command(KEY, DEV, "count", 2, request_id="fine"))["ok"] is True
        events = wait_for(
            lambda: audit.query(action="command.rejected"), timeout=10, what="the command.rejected entry"
        )
    finally:
        listener.close()
        audit.close()
        store.close()
    assert len(events) == 1  # the accepted command is not a rejection
    event = events[0]
    assert (event.actor, event.target, event.outcome) == ("mqtt", f"{DEV}/count", "refused")
    assert event.detail["request_id"] == "audited" and event.detail["code"] == "unsigned"
