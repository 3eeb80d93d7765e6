"""The flow process's config listener: which notifications it accepts, refuses or ignores, and
how an accepted one reaches the device's partition (over a real broker)."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from typing import Any

import pytest

from connectors.commands import CommandRouter
from connectors.modbus.config import ModbusDevicePlan
from connectors.polling import DeviceChange
from control.hot import publish_device_configs
from core.batch import tag_id_for
from core.device_config import DeviceConfig
from dataflows.compiler import writable_tags
from dataflows.hot import ChangeRefused, ConfigListener, start_version
from dataflows.spec import FlowSpec, parse_spec
from dataflows.status import FlowStatus
from tests.conftest import wait_for

LOC = {"enterprise": "e", "site": "s", "area": "a", "line": "l"}


def spec_doc() -> dict[str, Any]:
    return {
        "version": 1,
        "id": "f1",
        "devices": [
            {
                "id": "press-01",
                "connection": {"host": "127.0.0.1", "port": 5020},
                "poll_interval_s": 1.0,
                "location": LOC,
                "tags": [
                    {"name": "temp", "table": "holding", "address": 0, "scale": 0.1},
                    {"name": "sp", "table": "holding", "address": 1, "access": "read_write"},
                ],
            },
            {
                "id": "gw-01",
                "protocol": "mqtt",
                "location": LOC,
                "tags": [{"name": "amb", "topic": "x/amb"}],
            },
        ],
        "operators": [{"id": "normalize", "type": "normalize"}],
        "machines": [
            {"id": "m1", "device": "press-01", "state_tag": "sp", "states": {1: "running"},
             "counter_tag": "temp", "ideal_cycle_s": 1.0},
        ],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}],
    }  # fmt: skip


def section(**changes: Any) -> dict[str, Any]:
    s = copy.deepcopy(spec_doc()["devices"][0])
    s.update(changes)
    return s


def payload(version: int, device: dict[str, Any]) -> bytes:
    return json.dumps({"version": version, "device": device}).encode()


@pytest.fixture
def spec() -> FlowSpec:
    return parse_spec(spec_doc())


def test_an_accepted_change_carries_the_new_plan_and_operator_parameters(spec: FlowSpec) -> None:
    listener = ConfigListener("mqtt://127.0.0.1:1", spec, version=3)
    tags = [*section()["tags"], {"name": "extra", "table": "holding", "address": 9, "scale": 2.0}]
    change = listener.accept("press-01", payload(4, section(tags=tags, poll_interval_s=0.5)))
    assert change is not None and change.version == 4
    assert change.device.poll_interval_s == 0.5 and change.device.protocol == "modbus"
    assert isinstance(change.plan, ModbusDevicePlan)
    assert [t for t, _ in change.plan.tags] == [tag_id_for("press-01", n) for n in ("temp", "sp", "extra")]
    item = change.item
    assert isinstance(item, DeviceConfig) and item.version == 4
    assert item.params["normalize"][tag_id_for("press-01", "extra")].scale == 2.0
    assert set(item.tags) == {tag_id_for("press-01", n) for n in ("temp", "sp", "extra")}
    assert [d.poll_interval_s for d in listener.spec.devices[:1]] == [0.5]  # the running spec moved on
    # Not newer than what runs: ignored.
    assert listener.accept("press-01", payload(4, section())) is None
    assert listener.accept("press-01", payload(2, section())) is None


@pytest.mark.parametrize(
    ("device", "body", "why"),
    [
        ("press-01", b"{not json", "not JSON"),
        ("press-01", b"[1]", "a notification is an object"),
        ("press-01", payload(0, section()) .replace(b'"version": 0', b'"version": "5"'), "version:"),
        ("press-01", payload(5, section(id="press-02")), "device.id"),
        ("press-09", payload(5, {"id": "press-09"}), "no such device"),
        ("gw-01", payload(5, {"id": "gw-01", "protocol": "mqtt", "location": LOC, "connection": {"qos": 0},
                              "tags": [{"name": "amb", "topic": "y"}]}), "broker session"),
        ("press-01", payload(5, section(poll_interval_s=-1)), "devices[0].poll_interval_s"),
        ("press-01", payload(5, section(tags=[{"name": "temp", "table": "holding", "address": 0}])),
         "machines[0].state_tag"),
        ("press-01", payload(5, {**section(), "protocol": "s7", "connection": {"host": "h"},
                                 "tags": [{"name": "temp", "address": "DB1.DBW0", "data_type": "INT"},
                                          {"name": "sp", "address": "DB1.DBW2", "data_type": "INT"}]}),
         "cannot change protocol"),
    ],
)  # fmt: skip
def test_refused_changes_name_what_is_wrong_and_leave_the_config(
    spec: FlowSpec, device: str, body: bytes, why: str
) -> None:
    listener = ConfigListener("mqtt://127.0.0.1:1", spec, version=1)
    with pytest.raises(ChangeRefused) as err:
        listener.accept(device, body)
    assert why in str(err.value)
    assert listener.spec is spec
    assert listener.accept("press-01", payload(5, section(poll_interval_s=2.0))) is not None  # still healthy


def test_an_mqtt_device_change_carries_its_new_subscriptions(spec: FlowSpec) -> None:
    listener = ConfigListener("mqtt://127.0.0.1:1", spec, version=1)
    gw = {"id": "gw-01", "protocol": "mqtt", "location": LOC,
          "tags": [{"name": "amb", "topic": "y/amb", "scale": 10.0}, {"name": "hum", "topic": "y/hum"}]}  # fmt: skip
    change = listener.accept("gw-01", payload(2, gw))
    assert change is not None and change.device is None  # subscribed, not polled
    assert sorted(s.topic_filter for s in change.plan) == ["y/amb", "y/hum"]
    assert change.item.params["normalize"][tag_id_for("gw-01", "amb")].scale == 10.0


def test_other_devices_keep_their_secrets_in_the_running_document() -> None:
    doc = spec_doc()
    doc["devices"].append({
        "id": "oven", "protocol": "opcua", "location": LOC,
        "connection": {"endpoint": "opc.tcp://127.0.0.1:4840", "username": "u", "password": "s3cret"},
        "tags": [{"name": "t", "node_id": "ns=2;s=T"}],
    })  # fmt: skip
    listener = ConfigListener("mqtt://127.0.0.1:1", parse_spec(doc), version=1)
    assert listener.accept("press-01", payload(2, section(poll_interval_s=2.0))) is not None
    oven = next(d for d in listener.spec.devices if d.id == "oven")
    assert oven.connection.password is not None
    assert oven.connection.password.get_secret_value() == "s3cret"


def test_a_refusal_never_echoes_a_secret() -> None:
    doc = spec_doc()
    oven = {
        "id": "oven", "protocol": "opcua", "location": LOC,
        "connection": {"endpoint": "opc.tcp://127.0.0.1:4840", "username": "u", "password": "s3cret"},
        "tags": [{"name": "t", "node_id": "ns=2;s=T"}],
    }  # fmt: skip
    doc["devices"].append(oven)
    listener = ConfigListener("mqtt://127.0.0.1:1", parse_spec(doc), version=1)
    bad = copy.deepcopy(oven)
    bad["connection"]["password"] = 987654321  # not a string
    with pytest.raises(ChangeRefused) as err:
        listener.accept("oven", payload(2, bad))
    assert "connection.password" in str(err.value) and "987654321" not in str(err.value)


def test_start_version_comes_from_the_environment() -> None:
    assert start_version({"NEXUS_FLOW_VERSION": " 12 "}) == 12
    with pytest.raises(ValueError, match="NEXUS_FLOW_VERSION"):
        start_version({"NEXUS_FLOW_VERSION": "v3"})


def test_over_the_broker_changes_reach_the_owner_even_before_it_registers(
    spec: FlowSpec, mqtt_url: str
) -> None:
    flow = f"f-{uuid.uuid4().hex[:8]}"
    status = FlowStatus(flow, mqtt_url, version=1)
    router = CommandRouter(mqtt_url, writable_tags(spec))
    listener = ConfigListener(mqtt_url, spec, flow_id=flow, version=1, status=status, router=router)
    listener.start(timeout=10)
    got: list[DeviceChange] = []
    seen = threading.Event()

    def apply(change: DeviceChange) -> None:
        got.append(change)
        seen.set()

    try:
        # Published while no partition owns the device: it waits, and is handed over at register.
        sp = {"name": "sp", "table": "holding", "address": 1, "access": "read_write", "scale": 0.5}
        publish_device_configs(mqtt_url, flow, 2, {"press-01": section(tags=[section()["tags"][0], sp])})
        wait_for(lambda: listener.counts["accepted"] == 1, timeout=10, what="the change accepted")
        assert router.tags[("press-01", "sp")].scale == 0.5  # commands convert with the new scale at once
        listener.register("press-01", apply)
        assert seen.wait(5) and got[0].version == 2
        assert status.snapshot()["devices"] == {"press-01": {"version": 1}}  # not applied yet
        assert got[0].on_applied is not None
        got[0].on_applied(2)
        assert status.snapshot()["devices"] == {"press-01": {"version": 2}}
        # Registered: handed over as it arrives; a refused one is counted and not handed over.
        publish_device_configs(mqtt_url, flow, 3, {"press-01": section(poll_interval_s=0)})
        wait_for(lambda: listener.counts["refused"] == 1, timeout=10, what="the bad change refused")
        publish_device_configs(mqtt_url, flow, 4, {"press-01": section(poll_interval_s=3.0)})
        wait_for(lambda: len(got) == 2, timeout=10, what="the second change")
        assert got[1].device.poll_interval_s == 3.0
        assert status.snapshot()["config_refused"] == 1
    finally:
        listener.close()
