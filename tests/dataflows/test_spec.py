"""Flow spec v1: the demo spec loads, bad specs are refused with the field path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.batch import tag_id_for
from dataflows.spec import DEMO_SPEC, SCHEMA_FILE, SpecError, json_schema, load_spec, parse_spec


def base_spec() -> dict[str, Any]:
    return {
        "version": 1,
        "id": "t",
        "devices": [
            {
                "id": "d1",
                "connection": {"host": "127.0.0.1", "port": 5020},
                "poll_interval_s": 1,
                "location": {"enterprise": "acme", "site": "s1", "area": "a1", "line": "l1"},
                "tags": [
                    {"name": "temp", "table": "holding", "address": 0, "data_type": "int16", "scale": 0.1},
                    {"name": "pressure", "table": "holding", "address": 1, "data_type": "float32"},
                ],
            }
        ],
        "operators": [{"id": "norm", "type": "normalize"}, {"id": "db", "type": "deadband"}],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}, {"id": "hist", "type": "historian", "input": "norm"}],
    }


def refused(data: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value


def test_demo_spec_loads_and_names_every_tag() -> None:
    spec = load_spec(DEMO_SPEC)
    infos = spec.tag_infos()
    assert len(infos) == sum(len(d.all_tags()) for d in spec.devices)
    info = infos[tag_id_for("press-01", "oil_temperature")]
    assert info.topic == "acme/plant1/pressing/line1/press-01/oil_temperature"
    assert info.unit == "degC"
    # a converted tag publishes its target unit
    assert infos[tag_id_for("oven-01", "zone1_temperature")].unit == "degF"


def test_base_spec_is_valid() -> None:
    spec = parse_spec(base_spec())
    assert [n.id for n in spec.operators] == ["norm", "db"]


def test_unknown_data_type_names_the_field() -> None:
    data = base_spec()
    data["devices"][0]["tags"][1]["data_type"] = "float128"
    err = refused(data)
    assert err.problems[0][0] == "devices[0].tags[1].data_type"
    assert "float128" in str(err)


def test_negative_poll_interval_names_the_field() -> None:
    data = base_spec()
    data["devices"][0]["poll_interval_s"] = -5
    err = refused(data)
    assert err.problems == [("devices[0].poll_interval_s", "Input should be greater than 0 (got -5)")]


def test_two_tags_with_one_name_are_refused() -> None:
    data = base_spec()
    data["devices"][0]["tags"][1]["name"] = "temp"
    err = refused(data)
    path, message = err.problems[0]
    assert path == "devices[0]"
    assert "tags[1]: duplicate tag name 'temp' (first at tags[0])" in message


def test_duplicate_devices_and_nodes_are_refused() -> None:
    data = base_spec()
    data["devices"].append(copy.deepcopy(data["devices"][0]))
    assert "duplicate device id 'd1'" in str(refused(data))
    data = base_spec()
    data["sinks"][1]["id"] = "norm"
    assert "duplicate node id 'norm'" in str(refused(data))


def test_sink_input_must_be_an_operator() -> None:
    data = base_spec()
    data["sinks"][0]["input"] = "nope"
    assert "sinks[0].input: 'nope' is not an operator id" in str(refused(data))


def test_unknown_field_is_refused_with_its_path() -> None:
    data = base_spec()
    data["devices"][0]["pol_interval_s"] = 2
    err = refused(data)
    assert err.problems == [("devices[0].pol_interval_s", "Extra inputs are not permitted")]


def test_coil_cannot_hold_a_float() -> None:
    data = base_spec()
    data["devices"][0]["tags"][0].update(table="coil", data_type="float32")
    err = refused(data)
    assert err.problems[0][0] == "devices[0].tags[0]"
    assert "float32" in err.problems[0][1]


def test_unit_conversion_must_be_known() -> None:
    data = base_spec()
    data["devices"][0]["tags"][0].update(unit="degC", convert_to="bar")
    err = refused(data)
    assert err.problems[0][0] == "devices[0].tags[0]"
    assert "degC" in err.problems[0][1] and "bar" in err.problems[0][1]


def test_percent_deadband_needs_a_span() -> None:
    data = base_spec()
    data["devices"][0]["tags"][0]["deadband"] = {"percent": 1}
    assert "deadband.percent needs" in str(refused(data))
    data["devices"][0]["tags"][0]["clamp"] = {"low": 0, "high": 100}
    parse_spec(data)


def test_unsupported_version_is_refused() -> None:
    data = base_spec()
    data["version"] = 2
    assert refused(data).problems == [("version", "unsupported spec version 2; this build reads 1")]


def test_bad_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\ndevices: [\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_yaml_and_json_files_load_alike(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(base_spec()))
    (tmp_path / "f.json").write_text(json.dumps(base_spec()))
    assert load_spec(tmp_path / "f.yaml") == load_spec(tmp_path / "f.json")


def test_published_schema_is_current() -> None:
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == json_schema(), "run `just schema` to regenerate dataflows/schema/flow-spec-v1.json"


def test_a_flow_without_sinks_is_refused() -> None:
    data = base_spec()
    data["sinks"] = []
    assert "a flow needs at least one sink" in str(refused(data))
    data["operators"].append({"id": "agg", "type": "window", "windows": ["1m"]})
    parse_spec(data)  # a tap publishes and stores what it derives
