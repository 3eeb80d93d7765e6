"""Issue 12.4-12.6: what the validator refused too late (at start, with a traceback) or never."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataflows.compiler import Runtime, compile_flow
from dataflows.spec import DEMO_SPEC, MAX_DEPTH, SpecError, load_spec, parse_spec

DEMO: dict[str, Any] = yaml.safe_load(DEMO_SPEC.read_text())
RUNTIME = Runtime(database_url="postgresql://127.0.0.1:9/none", mqtt_url="mqtt://127.0.0.1:9")


def demo_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    doc = copy.deepcopy(DEMO)
    change(doc)
    return doc


def node(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(n for n in doc["operators"] if n["type"] == kind)


MQTT_DEVICE = {
    "id": "m1",
    "protocol": "mqtt",
    "connection": {"url": "http://broker.example:1883"},
    "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
    "tags": [{"name": "t", "topic": "a/b"}],
}

# (what, change, field path, words of the message) - each compiled to a traceback before
REFUSED_FIRST = [
    ("scale NaN", lambda d: d["devices"][0]["tags"][0].update(scale=float("nan")), "devices[0].tags[0].scale", "finite"),
    ("scale NaN on a read-only tag", lambda d: d["devices"][0]["tags"][1].update(scale=float("nan"), access="read"),
     "devices[0].tags[1].scale", "finite"),
    ("window 0s", lambda d: node(d, "window").update(windows=["0s"]), "operators[2].windows[0]", "positive"),
    ("same window twice", lambda d: node(d, "window").update(windows=["60s", "1m"]), "operators[2].windows", "same length"),
    ("OEE window 0m", lambda d: node(d, "oee").update(window="0m"), "operators[4].window", "positive"),
    ("shift start 25:00", lambda d: d["shifts"][0].update(start="25:00"), "shifts[0].start", "pattern"),
    ("shift end 29:00", lambda d: d["shifts"][0].update(end="29:00"), "shifts[0].end", "pattern"),
    ("MQTT url http://", lambda d: d["devices"].append(MQTT_DEVICE), "devices[3].connection.url", "mqtt://"),
    ("deadband absolute inf", lambda d: d["devices"][0]["tags"][0].update(deadband={"absolute": float("inf")}),
     "devices[0].tags[0].deadband.absolute", "finite"),
    ("clamp -inf", lambda d: d["devices"][0]["tags"][0].update(clamp={"low": -float("inf")}),
     "devices[0].tags[0].clamp.low", "finite"),
    ("node id with a period", lambda d: node(d, "window").update(id="agg.1"), "operators[2].id", "pattern"),
    ("seed beyond 32 bits", lambda d: d["devices"][0]["tags"][0].update(alarms={"ml": {"seed": 2**70}}),
     "devices[0].tags[0].alarms.ml.seed", "less than or equal"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "change", "path", "words"), REFUSED_FIRST, ids=[r[0] for r in REFUSED_FIRST]
)
def test_what_the_compiler_refuses_the_validator_refuses_first(
    what: str, change: Callable[[dict[str, Any]], object], path: str, words: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(demo_with(change))
    assert [p for p, _ in info.value.problems] == [path], info.value
    assert words in info.value.problems[0][1]


def test_the_demo_spec_still_compiles() -> None:
    compile_flow(parse_spec(DEMO), RUNTIME)


def test_duplicate_yaml_keys_are_refused_with_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("version: 1\nid: a\nid: b\ndevices: []\n")
    with pytest.raises(SpecError) as info:
        load_spec(f)
    text = str(info.value)
    assert str(f) in text and "duplicate key 'id' (first on line 2)" in text and "line 3" in text


def test_duplicate_json_keys_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "dup.json"
    f.write_text('{"version": 1, "id": "a", "id": "b"}')
    with pytest.raises(SpecError, match="duplicate key 'id'"):
        load_spec(f)


def test_duplicate_keys_deep_in_the_demo_spec_are_refused(tmp_path: Path) -> None:
    text = DEMO_SPEC.read_text().replace("scale: 0.1,", "scale: 0.1, scale: 10,", 1)
    f = tmp_path / "demo.yaml"
    f.write_text(text)
    with pytest.raises(SpecError, match="duplicate key 'scale'"):
        load_spec(f)


# -- operator order (12.5) ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["window", "anomaly", "deadband"])
def test_unit_sensitive_operators_before_normalize_are_refused(kind: str) -> None:
    def move_first(d: dict[str, Any]) -> None:
        n = node(d, kind)
        d["operators"].remove(n)
        d["operators"].insert(0, n)

    with pytest.raises(SpecError) as info:
        parse_spec(demo_with(move_first))
    (problem,) = info.value.problems
    assert problem[1].startswith(f"operators[0]: {kind} node") and "before the `normalize` node" in problem[1]


def test_no_normalize_at_all_is_refused_when_tags_are_scaled() -> None:
    doc = demo_with(lambda d: d.update(operators=[n for n in d["operators"] if n["type"] != "normalize"]))
    with pytest.raises(SpecError, match="has no `normalize` node before it"):
        parse_spec(doc)


def test_order_does_not_matter_when_no_tag_needs_normalizing() -> None:
    doc = {
        "version": 1,
        "id": "raw",
        "devices": [
            {
                "id": "d1",
                "connection": {"host": "127.0.0.1"},
                "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
                "tags": [
                    {
                        "name": "t",
                        "table": "holding",
                        "address": 0,
                        "data_type": "int16",
                        "alarms": {"high": 5},
                    }
                ],
            }
        ],
        "operators": [{"id": "alarms", "type": "anomaly"}, {"id": "norm", "type": "normalize"}],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}],
    }
    compile_flow(parse_spec(doc), RUNTIME)


# -- hostile documents (12.6) ---------------------------------------------------------------------

BILLION_LAUGHS = """\
version: 1
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
id: *i
"""


def test_billion_laughs_is_refused_before_it_expands(tmp_path: Path) -> None:
    f = tmp_path / "lol.yaml"
    f.write_text(BILLION_LAUGHS)
    with pytest.raises(SpecError) as info:
        load_spec(f)
    assert "once YAML aliases are expanded" in str(info.value) and len(str(info.value)) < 500


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "loop.yaml"
    f.write_text("version: 1\nid: &x [*x]\n")
    with pytest.raises(SpecError, match="nested deeper than"):
        load_spec(f)


@pytest.mark.parametrize(
    ("suffix", "text"), [(".yaml", "[" * 20_000), (".json", "[" * 20_000 + "]" * 20_000)]
)
def test_deep_nesting_is_refused_without_a_traceback(tmp_path: Path, suffix: str, text: str) -> None:
    f = tmp_path / f"deep{suffix}"
    f.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(f)
    assert str(f) in str(info.value) and "nest" in str(info.value)


def test_nesting_just_beyond_the_limit_is_refused_by_parse_spec() -> None:
    doc: Any = {"leaf": 1}
    for _ in range(MAX_DEPTH):
        doc = {"x": doc}
    with pytest.raises(SpecError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_spec({"version": 1, "id": "f", "description": doc})


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("version: 1\ndescription: '" + "x" * (5 * 1024 * 1024) + "'\n")
    with pytest.raises(SpecError, match="the limit is"):
        load_spec(f)


def test_binary_garbage_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "garbage.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SpecError) as info:
        load_spec(f)
    assert str(f) in str(info.value) and "not UTF-8" in str(info.value)


def test_huge_integers_name_the_file_and_the_field(tmp_path: Path) -> None:
    doc = copy.deepcopy(DEMO)
    doc["devices"][0]["tags"][0]["address"] = 10**40
    f = tmp_path / "huge.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(SpecError) as info:
        load_spec(f)
    assert str(f) in str(info.value)
    assert [p for p, _ in info.value.problems] == ["devices[0].tags[0].address"]


def test_an_integer_too_long_to_convert_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "digits.yaml"
    f.write_text("version: 1\nid: f\ndescription: x\npoll: " + "9" * 5000 + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(f)
    assert str(f) in str(info.value) and len(str(info.value)) < 1000


def test_the_echo_of_a_refused_value_is_capped() -> None:
    doc = copy.deepcopy(DEMO)
    doc["devices"][0]["tags"][0]["data_type"] = "x" * 100_000
    doc["devices"][0]["poll_interval_s"] = [list(range(100))] * 100
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    assert len(info.value.problems) == 2
    assert all(len(message) < 500 for _, message in info.value.problems), info.value


# -- the timestamp window reaches every source (12.1) ----------------------------------------------


def test_the_flow_timestamp_window_reaches_every_source() -> None:
    from connectors.opcua.config import OpcUaDevicePlan
    from core.timestamps import TimestampWindow
    from dataflows.compiler import device_plans, mqtt_source_config

    doc = copy.deepcopy(DEMO)
    doc["timestamps"] = {"max_past_s": 3600, "max_future_s": 5}
    doc["devices"].append({**MQTT_DEVICE, "connection": {"url": "mqtt://127.0.0.1"}})
    doc["devices"].append(
        {
            "id": "ua1",
            "protocol": "opcua",
            "connection": {"endpoint": "opc.tcp://127.0.0.1:4840"},
            "location": MQTT_DEVICE["location"],
            "tags": [{"name": "t", "node_id": "ns=2;s=T"}],
        }
    )
    spec = parse_spec(doc)
    mqtt = mqtt_source_config(spec, None)
    assert mqtt is not None and (mqtt.max_past_s, mqtt.max_clock_skew_s) == (3600, 5)
    (ua,) = [p for p in device_plans(spec) if isinstance(p, OpcUaDevicePlan)]
    assert ua.timestamps == TimestampWindow(max_past_s=3600, max_future_s=5)
    compile_flow(spec, RUNTIME)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), 10**9])
def test_the_timestamp_window_is_checked(bad: float) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(demo_with(lambda d: d.update(timestamps={"max_past_s": bad})))
    assert [p for p, _ in info.value.problems] == ["timestamps.max_past_s"]


def test_echo_of_an_alias_bomb_is_bounded_even_without_the_limits() -> None:
    """The 80 s / 5 GB MemoryError came from repr() of the expanded document in the message."""
    from dataflows.spec import MAX_ECHO_CHARS, echo

    bomb: Any = ["lol"] * 9
    for _ in range(9):
        bomb = [bomb] * 9  # 9**10 strings once expanded, a few hundred objects in memory
    text = echo(bomb)
    assert len(text) <= MAX_ECHO_CHARS and text.startswith("[[")
