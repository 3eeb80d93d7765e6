"""Write-back commands: validation (pure), then end to end through a real broker into a Modbus simulator.

End to end: a command published on the broker → :class:`CommandRouter` → the real
``ModbusSource`` partition's ``submit_write`` → ``ModbusDeviceClient.write`` → pymodbus's server in
:class:`ModbusSimulator`; the device memory is read back with a separate pymodbus client.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from connectors.commands import (
    CommandRefused,
    CommandRouter,
    WritableTag,
    WriteFailed,
    WriteRejected,
    check_value,
    parse_command,
)
from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.modbus.source import ModbusSource
from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from core.batch import tag_id_for
from tests.conftest import wait_for

DEV = "press-01"


# -- validation (pure) -----------------------------------------------------------------------------


def tag(data_type: Any = "int16", **kw: Any) -> WritableTag:
    kw.setdefault("writable", True)
    return WritableTag(DEV, "t", 1, data_type, **kw)


def test_check_value_types_limits_and_scaling() -> None:
    assert check_value(tag(), 42) == 42
    assert check_value(tag(), 42.0) == 42
    assert check_value(tag(scale=0.1), 42.5) == 425
    assert check_value(tag(scale=0.5, offset=10), 11) == 2
    assert check_value(tag("uint64"), 2**64 - 1) == 2**64 - 1  # exact beyond 2**53
    assert check_value(tag("float32"), 1.5) == 1.5
    assert check_value(tag("bool"), True) is True
    assert check_value(tag("bool"), 0) is False
    assert check_value(tag("string", max_length=4), "auto") == "auto"
    refusals = [
        (tag(), 70000, "value 70000 out of range for int16 after scaling"),
        (tag("uint16"), -1, "out of range for uint16"),
        (tag(scale=0.1), 4000, "raw 40000; int16 holds"),
        (tag(), 1.5, "not a whole number for int16 after scaling (raw 1.5)"),
        (tag(low=0, high=100), 101, "above the high limit 100"),
        (tag(low=0, high=100), -0.5, "below the low limit 0"),
        (tag(), "12", "takes a number (int16), got string"),
        (tag(), True, "takes a number (int16), got boolean"),
        (tag(), None, "got null"),
        (tag(), float("nan"), "not a finite number"),
        (tag("float32"), 1e39, "out of range for float32"),
        (tag("bool"), 2, "takes a boolean"),
        (tag("bool"), "true", "takes a boolean"),
        (tag("string"), 5, "takes a string"),
        (tag("string", max_length=3), "auto", "longer than the 3"),
    ]
    for t, value, message in refusals:
        with pytest.raises(CommandRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_value(t, value)


def test_parse_command() -> None:
    assert parse_command(b'{"value": 3, "request_id": "a"}') == (3, "a")
    assert parse_command(b'{"value": "x", "request_id": 7}') == ("x", 7)
    assert parse_command(b"21.5") == (21.5, None)
    assert parse_command(b'"auto"') == ("auto", None)
    for payload, message in [
        (b"{value: 1}", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff", "malformed JSON"),
        (b'{"request_id": "a"}', 'no "value"'),
        (b"[1]", "not an array"),
        (b'{"value": 1, "request_id": {"a": 1}}', "request_id must be a string"),
    ]:
        with pytest.raises(CommandRefused, match=message):
            parse_command(payload)


def test_writable_tag_checks_itself() -> None:
    with pytest.raises(ValueError, match="`scale` of tag 't' must be finite and not 0"):
        tag(scale=0)
    with pytest.raises(ValueError, match="must be <= `high`"):
        tag(low=5, high=1)


# -- end to end: broker + router + a real Modbus write ---------------------------------------------

ADDR = {
    "setpoint": ModbusTagAddress(table="holding", address=0, data_type="int16"),
    "speed": ModbusTagAddress(table="holding", address=1, data_type="uint16"),
    "count": ModbusTagAddress(table="holding", address=2, data_type="int16"),
    "run": ModbusTagAddress(table="coil", address=0, data_type="bool"),
    "ghost": ModbusTagAddress(table="holding", address=40, data_type="int16"),  # not on the device
}
TAGS = {
    (DEV, "setpoint"): WritableTag(DEV, "setpoint", tag_id_for(DEV, "setpoint"), "int16", writable=True,
                                   low=-10, high=100, scale=0.1),
    (DEV, "speed"): WritableTag(DEV, "speed", tag_id_for(DEV, "speed"), "uint16", writable=False),
    (DEV, "count"): WritableTag(DEV, "count", tag_id_for(DEV, "count"), "int16", writable=True),
    (DEV, "run"): WritableTag(DEV, "run", tag_id_for(DEV, "run"), "bool", writable=True),
    (DEV, "ghost"): WritableTag(DEV, "ghost", tag_id_for(DEV, "ghost"), "int16", writable=True),
    ("press-02", "x"): WritableTag("press-02", "x", tag_id_for("press-02", "x"), "int16", writable=True),
}  # fmt: skip


class ModbusWriter:
    """The real write path: a Modbus source partition's ``submit_write``, with the calls recorded.

    ``read()`` reads the device memory back through a separate pymodbus client.
    """

    def __init__(self, port: int) -> None:
        plan = ModbusDevicePlan(
            DEV,
            ModbusConnection(host="127.0.0.1", port=port, unit_id=1),
            60.0,
            tuple((tag_id_for(DEV, name), a) for name, a in ADDR.items()),
        )
        self.source = ModbusSource([plan])
        self.part = self.source.build_part("in", f"modbus:{DEV}", None)
        self.reader = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert self.reader.connect()
        self.calls: list[tuple[int, object]] = []

    def __call__(self, tag_id: int, raw: Any) -> concurrent.futures.Future[None]:
        self.calls.append((tag_id, raw))
        return self.part.submit_write(tag_id, raw)

    def read(self) -> tuple[list[int], bool]:
        regs = self.reader.read_holding_registers(0, count=3, device_id=1).registers
        coil = self.reader.read_coils(0, count=1, device_id=1).bits[0]
        return [r - 65536 if r >= 32768 else r for r in regs], bool(coil)

    def close(self) -> None:
        self.part.close()
        self.reader.close()


class Commander:
    """Sends commands and collects the acks."""

    def __init__(self, url: str) -> None:
        u = parse_mqtt_url(url)
        self.acks: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = make_client(u, unique_client_id("test-cmd"))
        self.client.on_connect = lambda c, *_: c.subscribe("$nexus/cmd/+/+/ack", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(u.host, u.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        with self.cond:
            self.acks.append((msg.topic, json.loads(msg.payload)))
            self.cond.notify_all()

    def send(self, device: str, tag: str, payload: str | bytes, *, retain: bool = False) -> None:
        self.client.publish(f"$nexus/cmd/{device}/{tag}/set", payload, qos=1, retain=retain).wait_for_publish(
            5
        )

    def ack_for(self, request_id: str, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [a for a in self.acks if a[1].get("request_id") == request_id]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no ack for request {request_id!r}; acks: {self.acks}")
                self.cond.wait(remaining)

    def call(self, device: str, tag: str, value: Any, timeout: float = 5.0) -> dict[str, Any]:
        rid = uuid.uuid4().hex
        self.send(device, tag, json.dumps({"value": value, "request_id": rid}))
        topic, ack = self.ack_for(rid, timeout)
        assert topic == f"$nexus/cmd/{device}/{tag}/ack"
        return ack

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def sim() -> Iterator[ModbusSimulator]:
    device = SimulatedDevice(DEV, unit_id=1, tags=[SimTag(a) for n, a in ADDR.items() if n != "ghost"])
    with ModbusSimulator(devices=[device]) as s:
        s.set_value(DEV, ADDR["speed"], 1500)
        s.set_value(DEV, ADDR["count"], 7)
        yield s


@pytest.fixture
def writer(sim: ModbusSimulator) -> Iterator[ModbusWriter]:
    w = ModbusWriter(sim.port)
    yield w
    w.close()


@pytest.fixture
def router(mqtt_url: str, writer: ModbusWriter) -> Iterator[CommandRouter]:
    r = CommandRouter(mqtt_url, TAGS, timeout_s=2.0, require_signature=False).start()
    r.register(DEV, writer)
    yield r
    r.close()


@pytest.fixture
def cmd(mqtt_url: str) -> Iterator[Commander]:
    c = Commander(mqtt_url)
    yield c
    c.close()


@pytest.mark.integration
def test_valid_writes_change_the_device(router: CommandRouter, writer: ModbusWriter, cmd: Commander) -> None:
    assert writer.read() == ([0, 1500, 7], False)
    rid = "req-1"
    cmd.send(DEV, "setpoint", json.dumps({"value": 42.5, "request_id": rid}))
    topic, ack = cmd.ack_for(rid)
    assert topic == f"$nexus/cmd/{DEV}/setpoint/ack"
    assert ack["ok"] is True and ack["error"] is None and ack["value"] == 42.5
    assert ack["timestamp"].endswith("Z")
    assert writer.read() == ([425, 1500, 7], False)  # raw = 42.5 / 0.1
    assert cmd.call(DEV, "run", True)["ok"] is True
    assert cmd.call(DEV, "setpoint", -10)["ok"] is True  # the low limit itself is allowed
    assert writer.read() == ([-100, 1500, 7], True)
    cmd.send(DEV, "count", b"-3")  # a bare value, no request id
    with cmd.cond:
        assert cmd.cond.wait_for(lambda: any(a[0].endswith("/count/ack") for a in cmd.acks), 5)
    assert writer.read()[0] == [-100, 1500, -3]
    assert router.stats().written == 4
    ack = cmd.call(DEV, "ghost", 1)  # valid for the spec, refused by the device: exception 2
    assert ack["ok"] is False
    assert (
        ack["error"] == f"write to {DEV}/ghost failed: device answered exception code 2 (device error code 2)"
    )


@pytest.mark.integration
def test_refused_commands_never_reach_the_device(
    router: CommandRouter, writer: ModbusWriter, cmd: Commander
) -> None:
    before = writer.read()
    cases = [
        ("setpoint", 150, "value 150 is above the high limit 100 of tag 'setpoint' of device 'press-01'"),
        ("count", 70000, "value 70000 out of range for int16 after scaling"),
        ("speed", 1, "tag 'speed' of device 'press-01' is read-only"),
        ("nope", 1, "unknown tag 'nope' of device 'press-01'"),
        ("count", "12", "takes a number (int16), got string"),
        ("run", 3, "takes a boolean"),
    ]
    for tag_name, value, message in cases:
        ack = cmd.call(DEV, tag_name, value)
        assert ack["ok"] is False and message in ack["error"], ack
        assert ack["value"] == value
    cmd.send(DEV, "setpoint", '{"value": 5, "request_id": "bad-json"')
    cmd.send(DEV, "setpoint", b"{value: 5}")  # malformed: no request id to echo
    with cmd.cond:
        assert cmd.cond.wait_for(
            lambda: sum("malformed JSON" in (a[1]["error"] or "") for a in cmd.acks) == 2, 5
        )
    malformed = [a for a in cmd.acks if "malformed JSON" in (a[1]["error"] or "")]
    assert all(a[1]["request_id"] is None and a[1]["ok"] is False for a in malformed)
    ack = cmd.call("press-99", "x", 1)
    assert ack == {**ack, "ok": False, "error": "unknown device 'press-99'"}
    assert writer.calls == [], "nothing was handed to the device"
    assert writer.read() == before
    assert router.stats().refused == len(cases) + 3


@pytest.mark.integration
def test_unowned_devices_are_left_to_their_owner(mqtt_url: str, cmd: Commander) -> None:
    """press-02 is in the spec but not registered here: a cluster router stays silent."""
    silent = CommandRouter(mqtt_url, TAGS, require_signature=False).start()
    single = CommandRouter(
        mqtt_url, TAGS, answer_unowned=True, answer_unknown=False, require_signature=False
    ).start()
    try:
        ack = cmd.call("press-02", "x", 1)
        assert ack["error"] == "device 'press-02' is not connected in this process"
        # `silent` answers an unknown device: once that answer is here, any answer it gave to
        # press-02 (sent earlier on the same connection) would be here too
        cmd.call("press-88", "x", 1)
        assert len([a for a in cmd.acks if a[0].startswith("$nexus/cmd/press-02/")]) == 1
        assert silent.stats().not_owned == 1
        cmd.call("press-77", "x", 1)  # unknown device: only `silent` answers
        cmd.call("press-02", "x", 1)  # `single` answers this one: its answers so far are all here
        assert len([a for a in cmd.acks if a[0].startswith("$nexus/cmd/press-77/")]) == 1
    finally:
        silent.close()
        single.close()


@pytest.mark.integration
def test_write_failures_and_timeouts_are_acked(mqtt_url: str, cmd: Commander) -> None:
    never: concurrent.futures.Future[None] = concurrent.futures.Future()
    rejected: concurrent.futures.Future[None] = concurrent.futures.Future()
    rejected.set_exception(WriteRejected(DEV, 1, "table 'input' is read-only"))
    failed: concurrent.futures.Future[None] = concurrent.futures.Future()
    failed.set_exception(WriteFailed(DEV, 1, "transport error", code=None))
    results = {
        tag_id_for(DEV, "setpoint"): never,
        tag_id_for(DEV, "count"): rejected,
        tag_id_for(DEV, "ghost"): failed,
    }

    def fake_writer(tag_id: int, raw: object) -> concurrent.futures.Future[None]:
        if tag_id == tag_id_for(DEV, "run"):
            raise ConnectionError("not connected")
        return results[tag_id]

    with CommandRouter(mqtt_url, TAGS, timeout_s=0.5, require_signature=False) as r:
        r.register(DEV, fake_writer)
        ack = cmd.call(DEV, "setpoint", 1)
        assert ack["ok"] is False
        assert ack["error"] == "no answer from device 'press-01' within 0.5 s; the write may still happen"
        assert never.cancelled()
        ack = cmd.call(DEV, "count", 1)
        assert ack["error"] == f"write to {DEV}/count rejected: table 'input' is read-only"
        ack = cmd.call(DEV, "ghost", 1)
        assert ack["error"] == f"write to {DEV}/ghost failed: transport error"
        ack = cmd.call(DEV, "run", True)  # the writer itself raised
        assert ack["error"] == f"write to {DEV}/run failed: not connected"
        s = r.stats()
        assert (s.timeouts, s.failed, s.pending) == (1, 3, 0)
        r.unregister(DEV, fake_writer)
        cmd.send(DEV, "count", b"1")
        wait_for(lambda: r.stats().not_owned == 1, what="the command for an unregistered device")


@pytest.mark.integration
def test_duplicate_request_ids_are_written_once(
    router: CommandRouter, writer: ModbusWriter, cmd: Commander
) -> None:
    cmd.send(DEV, "count", json.dumps({"value": 11, "request_id": "dup"}))
    cmd.ack_for("dup")
    cmd.send(DEV, "count", json.dumps({"value": 12, "request_id": "dup"}))  # as a QoS 1 redelivery
    wait_for(lambda: router.stats().ignored == 1, what="the duplicate to be ignored")
    cmd.call(DEV, "nope", 1)  # answered after the duplicate was handled: any ack of it is here now
    assert writer.calls == [(tag_id_for(DEV, "count"), 11)]
    assert writer.read()[0][2] == 11
    assert len([a for a in cmd.acks if a[1]["request_id"] == "dup"]) == 1
    assert router.stats().ignored == 1


@pytest.mark.integration
def test_retained_commands_are_not_written(mqtt_url: str, writer: ModbusWriter, cmd: Commander) -> None:
    """A retained command reaches every router that subscribes later: it must not be written again."""
    cmd.send(DEV, "count", json.dumps({"value": 13, "request_id": "ret"}), retain=True)
    try:
        late = CommandRouter(mqtt_url, TAGS, require_signature=False).start()
        late.register(DEV, writer)
        wait_for(lambda: late.stats().ignored >= 1, what="the retained command to be ignored")
        late.close()
        assert late.stats().ignored >= 1  # amqtt sometimes delivers a retained message twice
        assert writer.calls == []
        assert writer.read()[0][2] == 7
    finally:
        cmd.send(DEV, "count", b"", retain=True)  # clear the retained message


@pytest.mark.integration
def test_concurrent_commands_are_each_answered(
    router: CommandRouter, writer: ModbusWriter, cmd: Commander
) -> None:
    rids = [f"c{i}" for i in range(30)]
    for i, rid in enumerate(rids):
        cmd.send(DEV, "count", json.dumps({"value": i, "request_id": rid}))
    acks = [cmd.ack_for(rid)[1] for rid in rids]
    assert all(a["ok"] for a in acks)
    assert writer.read()[0][2] == 29  # one writer thread: in order
