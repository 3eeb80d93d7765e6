from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from connectors.modbus.config import (
    ModbusConnection,
    ModbusConnectionConfig,
    ModbusDevicePlan,
    ModbusSerialConnection,
    ModbusTagAddress,
    register_count,
)


def _error(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[tuple[object, ...], str]:
    err = exc.value.errors()[0]
    return tuple(err["loc"]), err["msg"]


def test_defaults() -> None:
    a = ModbusTagAddress(table="holding", address=0)
    assert (a.data_type, a.byte_order, a.word_order, a.register_count) == ("uint16", "ABCD", None, 1)
    c = ModbusConnection(host="plc.local")
    assert (c.port, c.unit_id, c.timeout_s, c.max_gap, c.max_registers, c.max_bits) == (
        502,
        1,
        1.0,
        8,
        125,
        2000,
    )


@pytest.mark.parametrize(
    ("data_type", "count"),
    [
        ("bool", 1),
        ("bit", 1),
        ("int16", 1),
        ("uint16", 1),
        ("int32", 2),
        ("uint32", 2),
        ("float32", 2),
        ("int64", 4),
        ("uint64", 4),
        ("float64", 4),
    ],
)
def test_register_count(data_type: str, count: int) -> None:
    assert register_count(data_type) == count  # type: ignore[arg-type]


def test_coil_with_float32_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        ModbusTagAddress(table="coil", address=1, data_type="float32")
    assert "data_type 'float32'" in str(exc.value) and "'coil'" in str(exc.value)


def test_bool_on_a_register_table_is_refused() -> None:
    with pytest.raises(ValidationError, match="data_type 'bool' needs table 'coil' or 'discrete'"):
        ModbusTagAddress(table="holding", address=1, data_type="bool")


def test_discrete_bool_is_fine() -> None:
    assert ModbusTagAddress(table="discrete", address=65535, data_type="bool").address == 65535


def test_value_must_fit_the_address_space() -> None:
    ModbusTagAddress(table="holding", address=65534, data_type="uint32")
    with pytest.raises(ValidationError, match="ends at register 65536"):
        ModbusTagAddress(table="holding", address=65535, data_type="float32")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"table": "holding", "address": -1}, "address"),
        ({"table": "holding", "address": 70000}, "address"),
        ({"table": "holdings", "address": 0}, "table"),
        ({"table": "holding", "address": 0, "data_type": "float128"}, "data_type"),
        ({"table": "holding", "address": 0, "byte_order": "ACBD"}, "byte_order"),
        ({"table": "holding", "address": 0, "data_type": "bit", "bit": 16}, "bit"),
        ({"table": "holding", "address": 0, "data_type": "string", "length": 0}, "length"),
        ({"table": "holding", "address": 0, "word_order": "middle"}, "word_order"),
        ({"table": "holding", "address": 0, "scale": 2}, "scale"),
    ],
)
def test_tag_field_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ModbusTagAddress(**kwargs)  # type: ignore[arg-type]
    assert _error(exc)[0] == (field,)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_s": -1}, "timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"unit_id": 248}, "unit_id"),
        ({"max_registers": 126}, "max_registers"),
        ({"max_registers": 0}, "max_registers"),
        ({"max_bits": 2001}, "max_bits"),
        ({"max_gap": -1}, "max_gap"),
        ({"reconnect_min_s": 0}, "reconnect_min_s"),
        ({"password": "x"}, "password"),
    ],
)
def test_connection_field_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ModbusConnection(host="plc", **kwargs)  # type: ignore[arg-type]
    loc, msg = _error(exc)
    assert loc == (field,), msg


def test_backoff_bounds_are_ordered() -> None:
    with pytest.raises(ValidationError, match=r"reconnect_max_s \(1.0\) must be >= reconnect_min_s \(2.0\)"):
        ModbusConnection(host="plc", reconnect_min_s=2.0, reconnect_max_s=1.0)


def test_models_are_frozen() -> None:
    c = ModbusConnection(host="plc")
    with pytest.raises(ValidationError):
        c.port = 1502  # type: ignore[misc]


@pytest.mark.parametrize("interval", [-5, 0, float("nan")])
def test_plan_refuses_bad_poll_interval(interval: float) -> None:
    with pytest.raises(ValueError, match=r"`poll_interval_s` must be > 0, got"):
        ModbusDevicePlan("d", ModbusConnection(host="plc"), interval, ())


def test_plan_refuses_duplicate_tag_ids_and_oversized_tags() -> None:
    t = ModbusTagAddress(table="holding", address=0, data_type="float32")
    with pytest.raises(ValueError, match="tag id 7 appears twice"):
        ModbusDevicePlan("d", ModbusConnection(host="plc"), 1.0, ((7, t), (7, t)))
    with pytest.raises(ValueError, match="needs 2 registers but `max_registers` is 1"):
        ModbusDevicePlan("d", ModbusConnection(host="plc", max_registers=1), 1.0, ((7, t),))


def test_word_order_is_an_alias_of_byte_order() -> None:
    assert ModbusTagAddress(table="holding", address=0, word_order="big").byte_order == "ABCD"
    assert (
        ModbusTagAddress(table="holding", address=0, word_order="little", byte_order="CDAB").byte_order
        == "CDAB"
    )
    with pytest.raises(
        ValidationError, match="word_order 'little' means byte_order 'CDAB' but byte_order is 'BADC'"
    ):
        ModbusTagAddress(table="holding", address=0, word_order="little", byte_order="BADC")
    assert ModbusTagAddress(table="holding", address=0, byte_order="HGFEDCBA").byte_order == "DCBA"


@pytest.mark.parametrize("word", [["big"], {"a": 1}, 3])
def test_a_word_order_that_is_not_a_name_is_a_field_error(word: object) -> None:
    """An unhashable or non-string ``word_order`` is a validation error on that field, not a crash."""
    with pytest.raises(ValidationError) as exc:
        ModbusTagAddress(table="holding", address=0, word_order=word)  # type: ignore[arg-type]
    assert _error(exc)[0] == ("word_order",)


def test_bit_and_string_need_their_fields() -> None:
    assert ModbusTagAddress(table="input", address=3, data_type="bit", bit=15).register_count == 1
    with pytest.raises(ValidationError, match="data_type 'bit' needs `bit`"):
        ModbusTagAddress(table="holding", address=0, data_type="bit")
    with pytest.raises(ValidationError, match="`bit` is only for data_type 'bit'"):
        ModbusTagAddress(table="holding", address=0, data_type="int16", bit=1)
    with pytest.raises(ValidationError, match="data_type 'string' needs `length`"):
        ModbusTagAddress(table="holding", address=0, data_type="string")
    with pytest.raises(ValidationError, match="`length` is only for data_type 'string'"):
        ModbusTagAddress(table="holding", address=0, length=2)
    with pytest.raises(ValidationError, match="ends at register 65539"):
        ModbusTagAddress(table="holding", address=65530, data_type="string", length=10)
    with pytest.raises(ValidationError, match="coils and discrete inputs hold only 'bool'"):
        ModbusTagAddress(table="coil", address=0, data_type="bit", bit=0)


def test_connection_union_defaults_to_tcp_and_checks_serial_fields() -> None:
    ta: TypeAdapter[ModbusConnection | ModbusSerialConnection] = TypeAdapter(ModbusConnectionConfig)
    tcp = ta.validate_python({"host": "plc"})
    assert isinstance(tcp, ModbusConnection) and tcp.transport == "tcp"
    gw = ta.validate_python({"transport": "rtu_over_tcp", "host": "gw", "port": 4001, "unit_id": 7})
    assert isinstance(gw, ModbusConnection) and (gw.transport, gw.port) == ("rtu_over_tcp", 4001)
    rtu = ta.validate_python(
        {"transport": "rtu", "port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E", "stopbits": 2}
    )
    assert isinstance(rtu, ModbusSerialConnection)
    assert (rtu.baudrate, rtu.parity, rtu.stopbits, rtu.bytesize) == (9600, "E", 2, 8)
    with pytest.raises(ValidationError) as exc:
        ta.validate_python({"transport": "rtu", "port": "/dev/ttyUSB0", "parity": "X"})
    assert exc.value.errors()[0]["loc"][-1] == "parity"
    with pytest.raises(ValidationError):
        ta.validate_python({"transport": "rtu", "host": "plc"})  # serial needs a port path, not a host
    with pytest.raises(ValidationError):
        ta.validate_python({"transport": "udp", "host": "plc"})


def test_address_base_1_moves_wire_addresses_and_refuses_address_0() -> None:
    conn = ModbusConnection(host="plc", address_base=1)
    t = ModbusTagAddress(table="holding", address=1, data_type="float32")
    plan = ModbusDevicePlan("d", conn, 1.0, ((7, t),))
    assert plan.tags[0][1].address == 1 and plan.wire_tags[0][1].address == 0
    assert plan.wire_tags[0][1].data_type == "float32"
    with pytest.raises(ValueError, match="has address 0 but the device's address_base is 1"):
        ModbusDevicePlan("d", conn, 1.0, ((7, ModbusTagAddress(table="coil", address=0, data_type="bool")),))
    with pytest.raises(ValidationError):
        ModbusConnection(host="plc", address_base=2)  # type: ignore[arg-type]
