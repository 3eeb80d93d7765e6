"""Issue 12.8: a write ack does not echo a large value back (a 1 MB value gave a 1 MB ack)."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.commands import MAX_ACK_VALUE_BYTES, CommandRouter, WritableTag, parse_command
from core.batch import tag_id_for
from tests.connectors.test_commands import Commander

pytestmark = pytest.mark.integration

DEV = f"ack-{uuid.uuid4().hex[:8]}"
TAGS = {
    (DEV, "recipe"): WritableTag(
        DEV, "recipe", tag_id_for(DEV, "recipe"), "string", writable=True, max_length=2000
    ),
    (DEV, "speed"): WritableTag(DEV, "speed", tag_id_for(DEV, "speed"), "float64", writable=True),
}


class RecordingWriter:
    """Stands in for the device's partition (not under test here): accepts every write."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, object]] = []

    def __call__(self, tag_id: int, raw: Any) -> concurrent.futures.Future[None]:
        self.calls.append((tag_id, raw))
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        return done


@pytest.fixture
def commander(mqtt_url: str) -> Iterator[tuple[Commander, RecordingWriter]]:
    writer = RecordingWriter()
    router = CommandRouter(mqtt_url, TAGS, timeout_s=5.0, require_signature=False).start()
    router.register(DEV, writer)
    c = Commander(mqtt_url)
    try:
        yield c, writer
    finally:
        c.client.disconnect()
        c.client.loop_stop()
        router.close()


def raw_ack(c: Commander, payload: str) -> tuple[dict[str, Any], int]:
    rid = uuid.uuid4().hex
    doc = json.loads(payload)
    doc["request_id"] = rid
    c.send(DEV, "recipe", json.dumps(doc))
    _, ack = c.ack_for(rid, timeout=10)
    return ack, len(json.dumps(ack))


def test_a_refused_megabyte_value_is_not_echoed(commander: tuple[Commander, RecordingWriter]) -> None:
    c, writer = commander
    ack, size = raw_ack(c, json.dumps({"value": "x" * 1_000_000}))
    assert ack["ok"] is False and "longer than the 2000" in ack["error"]
    assert ack["value"] is None and ack["value_omitted"] == "string of 1000000 characters"
    assert size < 1_000
    assert writer.calls == []


def test_a_written_long_value_is_not_echoed_but_a_short_one_is(
    commander: tuple[Commander, RecordingWriter],
) -> None:
    c, writer = commander
    ack, size = raw_ack(c, json.dumps({"value": "r" * 1500}))
    assert ack["ok"] is True and ack["value"] is None and ack["value_omitted"] == "string of 1500 characters"
    assert size < 1_000 and writer.calls == [(tag_id_for(DEV, "recipe"), "r" * 1500)]
    short, _ = raw_ack(c, json.dumps({"value": "PX-9"}))
    assert short["ok"] is True and short["value"] == "PX-9" and "value_omitted" not in short


def test_a_large_object_value_is_not_echoed(commander: tuple[Commander, RecordingWriter]) -> None:
    c, _ = commander
    ack, size = raw_ack(c, json.dumps({"value": {"k": list(range(10_000))}}))
    assert ack["ok"] is False and ack["value"] is None
    assert ack["value_omitted"].startswith("object of ") and size < 1_000


def test_a_value_at_the_limit_is_echoed(commander: tuple[Commander, RecordingWriter]) -> None:
    c, _ = commander
    value = "v" * (MAX_ACK_VALUE_BYTES - 2)  # with its quotes: exactly the limit
    ack, _ = raw_ack(c, json.dumps({"value": value}))
    assert ack["ok"] is True and ack["value"] == value


def test_a_deeply_nested_command_is_refused_not_crashed() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_command(b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
