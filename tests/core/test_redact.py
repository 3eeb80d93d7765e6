"""One place masks secrets: URLs and DSNs in every form, documents at any depth, and back."""

from __future__ import annotations

from core.redact import MASK, redact, redact_url, restore_secrets

PW = "pa:ss@w/rd"


def test_redact_url_masks_every_form() -> None:
    cases = {
        "postgresql://nexus:s3cret@db:5432/nexus": "postgresql://nexus:***@db:5432/nexus",
        "postgresql://db/nexus?sslmode=require&password=s3cret": "postgresql://db/nexus?sslmode=require&password=***",
        "mqtts://edge:s3cret@broker:8883?ca_file=/ca.pem": "mqtts://edge:***@broker:8883?ca_file=/ca.pem",
        "host=db user=u password=s3cret sslmode=verify-full": "host=db user=u password=*** sslmode=verify-full",
        "host=db password='s3 cret' user=u": "host=db password=*** user=u",
        "postgresql://u@db/n": "postgresql://u@db/n",
        "http://u:s3cret@h:notaport/x": "http://u:***@h:notaport/x",
    }
    for url, shown in cases.items():
        assert redact_url(url) == shown, url


def test_redact_and_restore_a_spec() -> None:
    spec = {
        "devices": [
            {
                "id": "oven",
                "connection": {"endpoint": "opc.tcp://plc:4840", "username": "op", "password": PW},
            },
            {
                "id": "gw",
                "connection": {"url": f"mqtt://edge:{PW.replace('@', '%40').replace('/', '%2F')}@b:1883"},
            },
        ],
        "sinks": [{"id": "uns", "type": "mqtt_uns", "token": "t0k"}],
    }
    shown = redact(spec)
    assert PW not in str(shown) and "t0k" not in str(shown)
    assert shown["devices"][0]["connection"]["password"] == MASK
    assert shown["devices"][1]["connection"]["url"] == "mqtt://edge:***@b:1883"
    assert restore_secrets(shown, spec) == spec
    # the devices reordered: matched by id, not position
    swapped = {**shown, "devices": shown["devices"][::-1]}
    assert restore_secrets(swapped, spec)["devices"][1]["connection"]["password"] == PW
    # a new password is kept as sent; the old ten-star mask still means "unchanged"
    changed = redact(spec)
    changed["devices"][0]["connection"]["password"] = "new-pw"
    assert restore_secrets(changed, spec)["devices"][0]["connection"]["password"] == "new-pw"
    legacy = redact(spec)
    legacy["devices"][0]["connection"]["password"] = "**********"
    assert restore_secrets(legacy, spec)["devices"][0]["connection"]["password"] == PW
    # a masked URL pointing elsewhere does not inherit the stored password
    moved = redact(spec)
    moved["devices"][1]["connection"]["url"] = "mqtt://edge:***@other:1883"
    assert restore_secrets(moved, spec)["devices"][1]["connection"]["url"] == "mqtt://edge:***@other:1883"
