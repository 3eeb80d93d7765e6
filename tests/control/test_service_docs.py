"""The document helpers of control.service: masking secrets, restoring them on write, merge patches, parsing."""

from __future__ import annotations

import pytest

from control.errors import InvalidError
from control.service import MASK, merge_patch, parse_text, redact, restore_secrets

DOC = {
    "devices": [
        {"id": "oven", "connection": {"endpoint": "opc.tcp://h:4840", "username": "op", "password": "pw1"}},
        {"id": "meter", "connection": {"url": "mqtt://edge:pw2@broker:1883"}},
    ]
}


def test_redact_masks_passwords_and_url_credentials() -> None:
    shown = redact(DOC)
    assert shown["devices"][0]["connection"]["password"] == MASK
    assert shown["devices"][0]["connection"]["username"] == "op"
    assert shown["devices"][1]["connection"]["url"] == f"mqtt://edge:{MASK}@broker:1883"
    assert "pw1" not in str(shown) and "pw2" not in str(shown)
    assert DOC["devices"][0]["connection"]["password"] == "pw1"  # a copy


def test_restore_takes_masked_secrets_from_the_stored_document_by_id() -> None:
    shown = redact(DOC)
    shown["devices"].reverse()  # matched by id, not position
    shown["devices"][1]["connection"]["username"] = "op2"
    back = restore_secrets(shown, DOC)
    by_id = {d["id"]: d for d in back["devices"]}
    assert by_id["oven"]["connection"] == {
        "endpoint": "opc.tcp://h:4840",
        "username": "op2",
        "password": "pw1",
    }
    assert by_id["meter"]["connection"]["url"] == "mqtt://edge:pw2@broker:1883"
    # a new secret is taken as given; a mask with nothing stored behind it stays (and fails validation)
    fresh = restore_secrets({"devices": [{"id": "x", "connection": {"password": MASK}}]}, DOC)
    assert fresh["devices"][0]["connection"]["password"] == MASK
    changed_host = restore_secrets(
        {"url": f"mqtt://edge:{MASK}@other:1883"}, {"url": "mqtt://edge:pw2@broker:1883"}
    )
    assert (
        changed_host["url"] == f"mqtt://edge:{MASK}@other:1883"
    )  # another broker does not get the old password


def test_merge_patch_rfc7396() -> None:
    tag = {"name": "t", "scale": 1, "deadband": {"absolute": 1, "heartbeat_s": 30}}
    assert merge_patch(tag, {"scale": 2, "deadband": {"heartbeat_s": None}}) == {
        "name": "t",
        "scale": 2,
        "deadband": {"absolute": 1},
    }
    assert merge_patch(tag, {"deadband": None}) == {"name": "t", "scale": 1}


def test_parse_text_guesses_the_format_and_names_bad_text() -> None:
    assert parse_text('{"id": "a"}') == ({"id": "a"}, "json")
    assert parse_text("id: a\n") == ({"id": "a"}, "yaml")
    with pytest.raises(InvalidError, match="not valid YAML"):
        parse_text("id: [a\n", source="f.yaml")
    with pytest.raises(InvalidError, match="a spec is a mapping"):
        parse_text("- 1\n")
