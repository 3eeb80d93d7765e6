"""The change planner: a table of cases, and the property that a hot plan's patches turn running into new."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.planner import apply_patches, plan, spec_json
from dataflows.spec import DEMO_SPEC, load_spec, parse_spec

LOC = {"enterprise": "e", "site": "s", "area": "a", "line": "l"}


def base() -> dict[str, Any]:
    return {
        "version": 1,
        "id": "line1",
        "description": "two presses",
        "devices": [
            {
                "id": "press-01",
                "connection": {"host": "127.0.0.1", "port": 1502, "timeout_s": 1.0},
                "poll_interval_s": 1.0,
                "location": LOC,
                "tags": [
                    {"name": "temp", "table": "holding", "address": 0, "scale": 0.1, "unit": "degC"},
                    {"name": "pressure", "table": "holding", "address": 1, "data_type": "float32"},
                ],
            },
            {
                "id": "oven-01",
                "protocol": "opcua",
                "connection": {"endpoint": "opc.tcp://127.0.0.1:4840", "username": "u", "password": "secret"},
                "location": LOC,
                "tags": [{"name": "zone1", "node_id": "ns=2;s=zone1"}],
            },
            {
                "id": "meter-01",
                "protocol": "mqtt",
                "connection": {"url": "mqtt://u:pw@127.0.0.1:1883"},
                "location": LOC,
                "tags": [{"name": "kwh", "topic": "meters/1/kwh"}],
            },
        ],
        "operators": [{"id": "norm", "type": "normalize"}, {"id": "db", "type": "deadband"}],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}, {"id": "hist", "type": "historian"}],
    }


def dev(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    device: dict[str, Any] = doc["devices"][i]
    return device


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        elif isinstance(node, list) and last == "+":
            node.append(value)
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()
NEW_TAG = {"name": "speed", "table": "input", "address": 4, "unit": "rpm"}
NEW_DEVICE = {
    "id": "press-02",
    "connection": {"host": "127.0.0.1", "port": 1503},
    "location": LOC,
    "tags": [{"name": "t", "table": "holding", "address": 0}],
}

CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # (case, change, expected kind, a reason fragment)
    ("nothing", lambda d: None, "noop", "equal"),
    ("description only", _set("description", "other"), "noop", "description"),
    ("tag scale", _set("devices/0/tags/0/scale", 0.2), "hot", "press-01: tags[temp].scale changed"),
    ("tag unit", _set("devices/0/tags/0/unit", "K"), "hot", "tags[temp].unit changed"),
    ("tag clamp", _set("devices/0/tags/0/clamp", {"low": 0, "high": 100}), "hot", "tags[temp].clamp"),
    ("tag deadband", _set("devices/0/tags/1/deadband", {"absolute": 0.5}), "hot", "tags[pressure].deadband"),
    ("tag compression", _set("devices/0/tags/1/compression", {"deviation": 0.5}), "hot", "compression"),
    ("tag alarms", _set("devices/0/tags/0/alarms", {"high": 80}), "hot", "tags[temp].alarms"),
    ("tag access", _set("devices/0/tags/0/access", "read_write"), "hot", "tags[temp].access"),
    ("tag address", _set("devices/0/tags/0/address", 10), "hot", "tags[temp].address"),
    ("tag data type", _set("devices/0/tags/0/data_type", "int16"), "hot", "tags[temp].data_type"),
    ("tag added", _set("devices/0/tags/+", NEW_TAG), "hot", "tags[speed] added"),
    ("tag removed", _set("devices/0/tags/1", _DELETE), "hot", "tags[pressure] removed"),
    ("poll interval", _set("devices/0/poll_interval_s", 0.5), "hot", "poll_interval_s changed"),
    (
        "adaptive polling",
        _set("devices/0/adaptive", {"min_interval_s": 0.5, "max_interval_s": 5}),
        "hot",
        "adaptive",
    ),
    ("connection timeout", _set("devices/0/connection/timeout_s", 2.0), "hot", "connection.timeout_s"),
    ("breaker", _set("devices/0/connection/breaker_failures", 9), "hot", "connection.breaker_failures"),
    ("opcua tag", _set("devices/1/tags/0/node_id", "ns=2;s=zone2"), "hot", "oven-01: tags[zone1].node_id"),
    (
        "calculated tag",
        _set("devices/0/calculated", [{"name": "c", "expression": "temp * 2"}]),
        "hot",
        "calculated",
    ),
    ("mqtt tag topic", _set("devices/2/tags/0/topic", "meters/1/energy"), "hot", "meter-01: tags[kwh].topic"),
    ("mqtt tag added", _set("devices/2/tags/+", {"name": "kw", "topic": "m/kw"}), "hot", "tags[kw] added"),
    ("mqtt broker", _set("devices/2/connection/url", "mqtt://h:1883"), "redeploy", "connection.url changed"),
    ("host", _set("devices/0/connection/host", "10.0.0.2"), "redeploy", "connection.host changed"),
    ("port", _set("devices/0/connection/port", 1503), "redeploy", "connection.port changed"),
    ("unit id", _set("devices/0/connection/unit_id", 3), "redeploy", "connection.unit_id"),
    (
        "opcua endpoint",
        _set("devices/1/connection/endpoint", "opc.tcp://h:1"),
        "redeploy",
        "connection.endpoint",
    ),
    ("opcua password", _set("devices/1/connection/password", "new"), "redeploy", "connection.password"),
    ("location", _set("devices/0/location", {**LOC, "line": "l2"}), "redeploy", "location changed"),
    ("device added", _set("devices/+", NEW_DEVICE), "redeploy", "device press-02 added"),
    ("device removed", _set("devices/1", _DELETE), "redeploy", "device oven-01 removed"),
    ("devices reordered", lambda d: d["devices"].reverse(), "redeploy", "devices reordered"),
    (
        "window added",
        _set("operators/+", {"id": "win", "type": "window", "windows": ["1m"]}),
        "redeploy",
        "operators: node win (window) added",
    ),
    ("operator removed", _set("operators/1", _DELETE), "redeploy", "node db (deadband) removed"),
    (
        # deadband may come before normalize only when no tag needs normalizing (no scale left)
        "operators reordered",
        lambda d: (dev(d)["tags"][0].pop("scale"), d["operators"].reverse()),
        "redeploy",
        "operators reordered",
    ),
    (
        "sink parameter",
        _set("sinks/1/batch_rows", 10),
        "redeploy",
        "sinks: node hist (historian).batch_rows changed",
    ),
    ("sink removed", _set("sinks/0", _DELETE), "redeploy", "node uns (mqtt_uns) removed"),
    ("shift timezone", _set("shift_timezone", "Europe/Paris"), "redeploy", "shift_timezone changed"),
    (
        "command signing off",
        _set("commands", {"require_signature": False}),
        "redeploy",
        "commands.require_signature changed",
    ),
    (
        "hot and cold together",
        lambda d: (_set("devices/0/tags/0/scale", 2)(d), _set("devices/0/connection/host", "h")(d)),
        "redeploy",
        "connection.host",
    ),
]


@pytest.mark.parametrize(("case", "change", "kind", "reason"), CASES, ids=[c[0] for c in CASES])
def test_plan_table(case: str, change: Callable[[dict[str, Any]], None], kind: str, reason: str) -> None:
    doc = base()
    change(doc)
    running, new = parse_spec(base()), parse_spec(doc)
    result = plan(running, new)
    assert result.kind == kind, result.reasons
    assert any(reason in r for r in result.reasons), result.reasons
    if kind == "hot":
        patched = apply_patches(spec_json(running), result.device_patches)
        assert patched == spec_json(new)
        assert parse_spec(patched) == new  # a patch is a valid device section, secrets in clear
    else:
        assert result.device_patches == {}


def test_the_json_form_of_the_demo_spec_parses_back_to_the_same_spec() -> None:
    demo = load_spec(DEMO_SPEC)
    assert parse_spec(spec_json(demo)) == demo


def test_hot_patches_carry_only_changed_devices_and_secrets_in_clear() -> None:
    doc = base()
    dev(doc, 1)["tags"][0]["unit"] = "degC"
    result = plan(parse_spec(base()), parse_spec(doc))
    assert result.kind == "hot"
    assert list(result.device_patches) == ["oven-01"]
    patch = result.device_patches["oven-01"]
    assert patch["connection"]["password"] == "secret"  # the flow needs it; the patch is the spec's section
    assert parse_spec({**base(), "devices": [dev(base()), patch]}).devices[1].id == "oven-01"


def test_apply_patches_refuses_unknown_devices() -> None:
    with pytest.raises(KeyError, match="ghost"):
        apply_patches(spec_json(parse_spec(base())), {"ghost": {"id": "ghost"}})


# -- the property ------------------------------------------------------------------------------------

HOT_EDITS = st.sampled_from([c for c in CASES if c[2] == "hot"])
ANY_EDITS = st.sampled_from(CASES)


@settings(max_examples=150, deadline=None)
@given(st.lists(ANY_EDITS, min_size=1, max_size=4))
def test_applying_a_hot_plans_patches_to_running_gives_new(edits: list[Any]) -> None:
    running_doc, new_doc = base(), base()
    for _case, change, _kind, _reason in edits:
        try:
            change(new_doc)
        except (IndexError, KeyError):
            continue  # an earlier edit removed what this one changes
    try:
        new = parse_spec(new_doc)
    except ValueError:
        return  # an invalid combination (e.g. two edits conflicting); the store refuses it anyway
    running = parse_spec(running_doc)
    result = plan(running, new)
    # ``description`` is documentation: the flow picks it up with the version number, no patch needed
    if result.kind == "hot":
        patched = apply_patches(spec_json(running), result.device_patches)
        assert {**patched, "description": ""} == {**spec_json(new), "description": ""}
    elif result.kind == "noop":
        assert {**spec_json(running), "description": ""} == {**spec_json(new), "description": ""}
    else:
        assert result.reasons and not result.device_patches
    only_hot = all(kind in ("hot", "noop") for _c, _ch, kind, _r in edits)
    if only_hot:
        assert result.kind in ("hot", "noop"), result.reasons


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["scale", "offset"]),
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda x: x != 0),
        ),
        max_size=5,
    ),
    st.floats(min_value=0.01, max_value=100),
    st.integers(min_value=0, max_value=2),
)
def test_random_tag_edits_plan_hot_and_patch_exactly(
    edits: list[tuple[str, float]], poll: float, drop: int
) -> None:
    doc = base()
    for key, value in edits:
        dev(doc)["tags"][0][key] = value
    dev(doc)["poll_interval_s"] = poll
    if drop == 1:
        dev(doc)["tags"].pop()
    elif drop == 2:
        dev(doc)["tags"].append(copy.deepcopy(NEW_TAG))
    running, new = parse_spec(base()), parse_spec(doc)
    result = plan(running, new)
    assert result.kind in ("hot", "noop")
    assert apply_patches(spec_json(running), result.device_patches) == spec_json(new)
