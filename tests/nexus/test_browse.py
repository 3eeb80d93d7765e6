"""``nexus browse`` against asyncua's own server (the OPC UA simulator) on a loopback port."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from connectors.opcua.simulator import OpcUaSimulator, SimVariable
from dataflows.spec import parse_spec
from nexus.cli import main

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def sim() -> Iterator[OpcUaSimulator]:
    variables = [
        SimVariable("Temperature", "Double", 21.5),
        SimVariable("Setpoint", "Float", 20.0, writable=True),
        SimVariable("Parts", "Int32", 3),
        SimVariable("Recipe", "String", "A", node_id="ns=3;i=1001"),
    ]
    with OpcUaSimulator(variables, users={"operator": PASSWORD}) as s:
        yield s


def browse(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["browse", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lists_every_variable_with_type_and_access(
    sim: OpcUaSimulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_OPCUA_PW", PASSWORD)
    code, out, err = browse(
        capsys, sim.endpoint, "--username", "operator", "--password-env", "NEXUS_TEST_OPCUA_PW", "--json"
    )
    assert code == 0, err
    rows = {r["node_id"]: r for r in json.loads(out)}
    assert set(rows) == {sim.node_id(n) for n in sim.variables}
    assert rows[sim.node_id("Temperature")] == {
        "node_id": sim.node_id("Temperature"),
        "browse_path": "Simulator/Temperature",
        "data_type": "Double",
        "writable": False,
    }
    assert rows[sim.node_id("Setpoint")]["writable"] is True
    assert rows["ns=3;i=1001"]["data_type"] == "String"
    assert PASSWORD not in out + err


def test_table_and_yaml_snippet_that_a_spec_accepts(
    sim: OpcUaSimulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_OPCUA_PW", PASSWORD)
    auth = ["--username", "operator", "--password-env", "NEXUS_TEST_OPCUA_PW"]
    folder = sim.node_id("Temperature").replace("Temperature", sim.object_name)  # ns=2;s=Simulator
    code, out, err = browse(capsys, sim.endpoint, *auth, "--root", folder, "--depth", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "ID", "BROWSE", "PATH", "TYPE", "WRITABLE"]
    assert any(line.startswith(sim.node_id("Setpoint")) and line.endswith("yes") for line in lines)
    assert lines[-1].startswith("4 variables under")

    code, out, err = browse(capsys, sim.endpoint, *auth, "--yaml")
    assert code == 0, err
    tags = yaml.safe_load(out)["tags"]
    assert {t["name"] for t in tags} == {
        "Simulator.Temperature",
        "Simulator.Setpoint",
        "Simulator.Parts",
        "Simulator.Recipe",
    }
    device = {
        "id": "sim",
        "protocol": "opcua",
        "connection": {"endpoint": sim.endpoint},
        "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "tags": tags,
    }
    spec = parse_spec(
        {"version": 1, "id": "f", "devices": [device], "sinks": [{"id": "uns", "type": "mqtt_uns"}]}
    )
    by_name = {t.name: t for t in spec.devices[0].tags}
    assert by_name["Simulator.Setpoint"].access == "read_write"
    assert by_name["Simulator.Recipe"].node_id == "ns=3;i=1001"  # type: ignore[union-attr]
    assert PASSWORD not in out + err


def test_refused_login_and_missing_password_variable_never_print_the_password(
    sim: OpcUaSimulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_OPCUA_PW", PASSWORD + "-wrong")
    code, out, err = browse(
        capsys,
        sim.endpoint,
        "--username",
        "operator",
        "--password-env",
        "NEXUS_TEST_OPCUA_PW",
        "--timeout",
        "2",
    )
    assert code == 1
    assert "operator" in err and PASSWORD not in out + err
    monkeypatch.delenv("NEXUS_TEST_OPCUA_PW")
    code, _, err = browse(
        capsys, sim.endpoint, "--username", "operator", "--password-env", "NEXUS_TEST_OPCUA_PW"
    )
    assert code == 1 and "NEXUS_TEST_OPCUA_PW" in err and "is not set" in err
