"""S7 configuration models: addressing modes, TSAPs, field errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connectors.s7.config import S7Connection, S7DevicePlan, S7TagAddress, parse_tsap
from tests.connectors.s7.s7_testlib import T


def test_rack_slot_is_the_default_addressing() -> None:
    c = S7Connection(host="10.0.0.5")
    assert (c.rack, c.slot, c.local_tsap, c.remote_tsap) == (0, 1, None, None)
    assert (c.local_tsap_value, c.remote_tsap_value) == (0x0100, 0x0101)
    c = S7Connection(host="10.0.0.5", rack=0, slot=2)
    assert c.remote_tsap_value == 0x0102
    assert S7Connection(host="h", rack=1, slot=3).remote_tsap_value == 0x0100 | 1 << 5 | 3


def test_tsap_addressing_is_normalized() -> None:
    c = S7Connection(host="10.0.0.6", local_tsap="0x0100", remote_tsap="02.00")
    assert (c.rack, c.slot) == (None, None)
    assert (c.local_tsap, c.remote_tsap) == ("0x0100", "0x0200")
    assert (c.local_tsap_value, c.remote_tsap_value) == (0x0100, 0x0200)
    assert parse_tsap("4d57") == 0x4D57


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rack": 0, "slot": 1, "local_tsap": "0x0100", "remote_tsap": "0x0200"}, "not both"),
        ({"slot": 2, "remote_tsap": "0x0200"}, "not both"),
        ({"rack": 0}, "rack and slot go together"),
        ({"local_tsap": "0x0100"}, "local_tsap and remote_tsap go together"),
        (
            {"local_tsap": "xyz", "remote_tsap": "0x0200"},
            "TSAP must be hex like '0x0100' or '01.00', got 'xyz'",
        ),
        ({"rack": 9, "slot": 1}, "rack"),
        ({"rack": 0, "slot": 40}, "slot"),
        ({"port": 0}, "port"),
        ({"pdu_size": 100}, "pdu_size"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_max_s"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_connection_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        S7Connection(host="10.0.0.5", **kwargs)  # type: ignore[arg-type]


def test_tag_address_parses_and_reports_the_address() -> None:
    t = S7TagAddress(address="DB1.DBD20", data_type="REAL")
    assert (t.parsed.area, t.parsed.db, t.parsed.byte, t.parsed.data_type) == ("DB", 1, 20, "REAL")
    with pytest.raises(ValidationError, match=r"DB1\.DBX0\.9: bit must be 0\.\.7"):
        S7TagAddress(address="DB1.DBX0.9", data_type="BOOL")
    with pytest.raises(ValidationError, match="data_type"):
        S7TagAddress(address="DB1.DBD0", data_type="FLOAT")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        t.address = "MW0"  # type: ignore[misc]  # frozen


def test_device_plan_validation() -> None:
    c = S7Connection(host="h")
    with pytest.raises(ValueError, match="`poll_interval_s` must be > 0, got 0"):
        S7DevicePlan("d", c, 0, ())
    with pytest.raises(ValueError, match="tag id 1 appears twice"):
        S7DevicePlan("d", c, 1.0, ((1, T("MW0", "INT")), (1, T("MW2", "INT"))))
    with pytest.raises(ValueError, match="device_id must not be empty"):
        S7DevicePlan("", c, 1.0, ())
