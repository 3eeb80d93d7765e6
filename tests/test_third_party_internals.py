"""Private internals of third-party libraries that NEXUS relies on, checked for shape.

Each dependency below is pinned to the minor range these were read from (pyproject.toml). When a
new release changes one of them, the matching test fails here, with the reason and the code that
depends on it, instead of a connector failing in the field.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import pytest


def _params(fn: Any) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def _expect_shape(lib: str, owner: Any, name: str, params: list[str], used_by: str) -> None:
    fn = getattr(owner, name, None)
    why = (
        f"{lib} {version(lib)}: {owner.__name__}.{name} changed shape (expected parameters {params}); "
        f"{used_by} relies on it - adapt that code, then the pin in pyproject.toml"
    )
    assert callable(fn), why
    assert _params(fn)[: len(params)] == params, why + f"; found {_params(fn)}"


def test_paho_internals_of_the_qos0_fast_path() -> None:
    import paho.mqtt.client as mqtt

    from connectors.mqtt import publisher

    if "_packet_queue" not in inspect.getsource(publisher):
        pytest.skip("connectors/mqtt/publisher.py no longer uses paho's private publish queue")
    used_by = "connectors/mqtt/publisher.py (QoS 0 packed publishes)"
    _expect_shape(
        "paho-mqtt", mqtt.Client, "_packet_queue", ["command", "packet", "mid", "qos", "info"], used_by
    )
    _expect_shape("paho-mqtt", mqtt.Client, "_mid_generate", [], used_by)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    assert hasattr(client, "_sock") and client._sock is None, (
        f"paho-mqtt {version('paho-mqtt')}: Client._sock is gone or not None before connect; {used_by} "
        "reads it to tell whether the client is connected"
    )


def test_paho_internals_of_the_batched_puback_reader() -> None:
    import paho.mqtt.client as mqtt

    used_by = "connectors/mqtt/batch_ack.py and publisher.py (QoS 1 packed publishes, batched PUBACKs)"
    for name, params in (
        ("_packet_read", []),
        ("_packet_handle", []),
        ("_sock_recv", ["bufsize"]),
        ("_handle_pubackcomp", ["cmd"]),
        ("_easy_log", ["level", "fmt"]),
    ):
        _expect_shape("paho-mqtt", mqtt.Client, name, params, used_by)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    why = f"paho-mqtt {version('paho-mqtt')}: a private attribute {used_by} relies on is gone"
    assert set(client._in_packet) == {
        "command", "have_remaining", "remaining_count", "remaining_mult", "remaining_length", "packet",
        "to_process", "pos",
    }, why  # fmt: skip
    assert isinstance(client._last_mid, int) and hasattr(client._mid_generate_mutex, "__enter__"), why
    assert hasattr(client._msgtime_mutex, "__enter__") and hasattr(client, "_last_bytes_received"), why
    assert callable(getattr(mqtt, "time_func", None)), why


def test_snap7_client_internals_of_the_packed_read() -> None:
    import snap7.client
    from snap7.s7protocol import S7Protocol

    used_by = "connectors/s7/client.py (_exchange: multi-variable reads keeping every item's code)"
    _expect_shape("python-snap7", snap7.client.Client, "_send_receive", ["request"], used_by)
    _expect_shape("python-snap7", S7Protocol, "build_multi_read_request", ["items"], used_by)


def test_snap7_server_internals_of_the_simulators_bit_writes() -> None:
    import struct

    from snap7.datatypes import S7Area, S7WordLen
    from snap7.server import Server

    used_by = "connectors/s7/simulator.py (BitWriteServer: bit-level writes as a CPU does them)"
    _expect_shape("python-snap7", Server, "_parse_address_specification", ["addr_spec"], used_by)
    _expect_shape("python-snap7", Server, "_parse_write_address", ["request"], used_by)
    _expect_shape(
        "python-snap7", Server, "_write_to_memory_area", ["area", "db_number", "start", "write_data"], used_by
    )
    server = Server(log=False)
    assert isinstance(getattr(server, "memory_areas", None), dict), used_by
    assert isinstance(getattr(server, "area_locks", None), dict), used_by
    # DB1.DBX3.5 as a BIT item: the parsed start is its byte, the bit is in the spec's last byte
    spec = struct.pack(">BBBBHHB", 0x12, 0x0A, 0x10, S7WordLen.BIT, 1, 1, S7Area.DB) + (3 * 8 + 5).to_bytes(
        3, "big"
    )
    parsed = server._parse_address_specification(spec)
    assert (parsed.get("area"), parsed.get("db_number"), parsed.get("start"), parsed.get("word_len")) == (
        S7Area.DB,
        1,
        3,
        S7WordLen.BIT,
    ), f"python-snap7 {version('python-snap7')}: address parsing changed ({parsed}); {used_by}"


def test_river_half_space_trees_internals_of_the_compact_snapshot() -> None:
    from river import anomaly

    used_by = "operators/anomaly.py (_hst_compact/_hst_restore: small HalfSpaceTrees snapshots)"
    hst = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=10, limits={"x": (0.0, 1.0)}, seed=7)
    hst.learn_one({"x": 0.5})
    nodes = getattr(hst, "_tree_nodes", None)
    why = f"river {version('river')}: HalfSpaceTrees internals changed; {used_by}"
    assert isinstance(nodes, list) and len(nodes) == 3 and isinstance(nodes[0], list), why
    assert all(hasattr(n, "l_mass") and hasattr(n, "r_mass") for n in nodes[0]), why
    assert isinstance(getattr(hst, "_first_window", None), bool) and isinstance(hst.counter, int), why


def test_river_compact_snapshot_restores_the_same_scores() -> None:
    from river import anomaly, preprocessing

    from operators.anomaly import _HST_FEATURE, _HST_LIMITS, _hst_compact, _hst_restore

    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
        n_trees=5, height=5, window_size=20, limits={_HST_FEATURE: _HST_LIMITS}, seed=3
    )
    for i in range(100):
        model.learn_one({_HST_FEATURE: (i % 17) / 17})
    blob = _hst_compact(model)
    assert isinstance(blob, tuple) and blob[0] == "hst-v1", (
        f"river {version('river')}: the compact form was not used"
    )
    restored = _hst_restore(blob)
    probes = [{_HST_FEATURE: v} for v in (0.0, 0.3, 0.9, 5.0)]
    assert [restored.score_one(p) for p in probes] == [model.score_one(p) for p in probes]


def test_amqtt_internals_of_the_embedded_broker() -> None:
    from amqtt.broker import Broker

    used_by = "nexus/embedded.py (NexusBroker: $nexus topics, retained messages only on SUBSCRIBE)"
    _expect_shape(
        "amqtt", Broker, "_handle_message_delivery", ["client_session", "handler", "wait_deliver"], used_by
    )
    _expect_shape(
        "amqtt", Broker, "_handle_subscription", ["client_session", "handler", "subscribe_waiter"], used_by
    )
    _expect_shape(
        "amqtt", Broker, "_publish_retained_messages_for_subscription", ["subscription", "session"], used_by
    )
    _expect_shape("amqtt", Broker, "_broadcast_message", ["session", "topic", "data"], used_by)
    _expect_shape("amqtt", Broker, "retain_message", ["source_session", "topic_name", "data", "qos"], used_by)


def test_pymodbus_internals_of_the_modbus_read_path() -> None:
    """connectors/modbus/transaction.py does TransactionManager.execute's steps itself; it needs
    these members, and ``callback_data`` to resolve ``response_future`` with the decoded response."""
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.transaction import TransactionManager

    used_by = "connectors/modbus/transaction.py (reads without wait_for)"
    _expect_shape("pymodbus", TransactionManager, "pdu_send", ["pdu", "addr"], used_by)
    _expect_shape("pymodbus", TransactionManager, "getNextTID", [], used_by)
    _expect_shape("pymodbus", TransactionManager, "callback_data", ["data", "addr"], used_by)
    source = inspect.getsource(TransactionManager.callback_data)
    assert "self.response_future.set_result(" in source, (
        f"pymodbus {version('pymodbus')}: TransactionManager.callback_data no longer resolves "
        f"response_future; {used_by} awaits it"
    )
    import asyncio

    async def made() -> Any:
        return AsyncModbusTcpClient("127.0.0.1", port=1).ctx  # the transport wants a running loop

    ctx = asyncio.run(made())
    assert isinstance(ctx, TransactionManager), f"pymodbus {version('pymodbus')}: client.ctx; {used_by}"
    for name in ("transport", "recv_buffer", "response_future"):
        assert hasattr(ctx, name), (
            f"pymodbus {version('pymodbus')}: TransactionManager.{name} is gone; {used_by}"
        )


@pytest.mark.parametrize("lib", ["paho-mqtt", "python-snap7", "river", "amqtt", "pymodbus"])
def test_libraries_used_through_internals_are_pinned_to_the_tested_minor(lib: str) -> None:
    """A loose pin (``<3``, ``<1``) would let a new minor release in unchecked."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    reqs = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    spec = reqs[lib].specifier
    installed = Version(version(lib))
    assert installed in spec
    next_minor = Version(f"{installed.major}.{installed.minor + 1}.0")
    assert next_minor not in spec, f"{lib}: pin {spec} admits {next_minor}; pin it below the next minor"
