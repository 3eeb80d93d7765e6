"""Issue 12.4, as a property: any document the validator accepts compiles.

Two sources of documents: generated from the published JSON Schema (so every one passes the
schema's own constraints, and the cross-field rules decide), and mutations of the shipped demo spec
(one value replaced by a hostile one, a key deleted, a list element duplicated). For each,
``parse_spec`` either refuses it with a :class:`SpecError` or ``compile_flow`` builds the flow;
anything else (a traceback from the compiler, another exception type from the validator) fails.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dataflows.compiler import Runtime, compile_flow
from dataflows.spec import DEMO_SPEC, SpecError, json_schema, parse_spec
from tests.dataflows.schema_strategy import from_schema

RUNTIME = Runtime(database_url="postgresql://127.0.0.1:9/none", mqtt_url="mqtt://127.0.0.1:9")
"""Placeholders: compiling does no I/O (sources and sinks connect when the flow runs)."""

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def accepted_compiles(doc: Any) -> bool:
    """The property; returns whether the document was accepted (for the counters below)."""
    try:
        spec = parse_spec(doc)
    except SpecError:
        return False
    compile_flow(spec, RUNTIME)  # must not raise
    return True


def _schema_with_a_sink() -> dict[str, Any]:
    # bias only: a flow without sinks is refused by a cross-field rule 9 times in 10 otherwise
    schema = copy.deepcopy(json_schema())
    schema["properties"]["sinks"]["minItems"] = 1
    schema["required"].append("sinks")
    return schema


PLAUSIBLE = st.one_of(
    st.sampled_from(
        [
            "opc.tcp://127.0.0.1:4840",
            "mqtt://127.0.0.1:1883",
            "127.0.0.1",
            "degC",
            "degF",
            "kPa",
            "bar",
            "a/b",
            "a/+",
            "v",
            "data.temp",
            "ts",
            "DB1.DBW6",
            "M10.3",
            "ns=2;s=Temp",
            "/dev/ttyUSB0",
            "UTC",
        ]
    ),
    st.text(max_size=6),
)
"""Free-text fields (URLs, units, addresses, node ids) drawn mostly from values that can be valid."""

SCHEMA_DOCS = from_schema(_schema_with_a_sink(), strings=PLAUSIBLE)


@SETTINGS
@given(SCHEMA_DOCS)
def test_documents_from_the_schema_that_validate_compile(doc: dict[str, Any]) -> None:
    accepted_compiles(doc)


DEMO: dict[str, Any] = yaml.safe_load(DEMO_SPEC.read_text())


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


PATHS = _paths(DEMO)
HOSTILE = st.one_of(
    st.sampled_from(
        [
            float("nan"),
            float("inf"),
            -float("inf"),
            0,
            -1,
            0.0,
            -0.0,
            1e308,
            10**20,
            -(10**20),
            2**63,
            "",
            "0s",
            "0m",
            "25:00",
            "29:00",
            "24:00",
            "http://x",
            "mqtts://",
            "nan",
            "x" * 300,
            None,
            True,
            [],
            {},
            [None],
            {"": None},
        ]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
)


@st.composite
def mutated_demo(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(DEMO)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            key = path[-1]
            parent[key]
        except (KeyError, IndexError, TypeError):
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate"]))
        if action == "replace":
            parent[key] = draw(HOSTILE)
        elif action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return doc


@SETTINGS
@given(mutated_demo())
def test_mutations_of_the_demo_spec_that_validate_compile(doc: dict[str, Any]) -> None:
    accepted_compiles(doc)


def test_the_properties_reach_accepted_documents() -> None:
    """The properties above are only worth something if the generators produce accepted documents."""
    accepted = {"schema": 0, "mutation": 0}
    quick = settings(
        max_examples=60,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        # one fixed draw: a count is a statistic, and random draws of 60 mutations found none
        # accepted in about 1 of 8 runs (the fixed draw accepts 6 schema documents and 8 mutations)
        derandomize=True,
    )

    @quick
    @given(SCHEMA_DOCS, mutated_demo())
    def count(schema_doc: dict[str, Any], mutated: dict[str, Any]) -> None:
        accepted["schema"] += _accepted(schema_doc)
        accepted["mutation"] += _accepted(mutated)

    count()
    assert accepted["schema"] > 0, "no schema-generated document was accepted: the generator is too wild"
    assert accepted["mutation"] > 0, "no mutated demo spec was accepted"


def _accepted(doc: Any) -> bool:
    try:
        parse_spec(doc)
    except SpecError:
        return False
    return True
