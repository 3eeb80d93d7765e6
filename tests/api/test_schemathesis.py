"""Schemathesis against the OpenAPI document (a CI-sized run): no 5xx, every response fits its schema.

Runs in-process over ASGI against a real PostgreSQL config store that holds one flow. The three
operations that reach out to devices or the broker (device test read, OPC UA browse, tag write) are
left out: generated connections would point at arbitrary hosts. They have their own tests against
the real pymodbus and asyncua servers and a real broker (tests/api/test_device_io.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from control.store import ConfigStore
from core.settings import Settings

pytestmark = pytest.mark.integration

NETWORK = r"/(test|browse|value)$"

SPEC = {
    "version": 1,
    "id": "line1",
    "devices": [
        {
            "id": "press-01",
            "connection": {"host": "127.0.0.1", "port": 1502},
            "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
            "tags": [{"name": "temp", "table": "holding", "address": 0}],
        }
    ],
    "sinks": [{"id": "uns", "type": "mqtt_uns"}],
}


@pytest.fixture
def api_schema(db: str, mqtt_url: str) -> Iterator[Any]:
    store = ConfigStore(db)
    store.migrate()
    store.create_flow(SPEC, author="seed")
    # the historian routes read the same database (as under `nexus up`)
    app = create_app(Settings(mqtt_url=mqtt_url, database_url=db), store=store)
    yield schemathesis.openapi.from_asgi("/schema/openapi.json", app).exclude(path_regex=NETWORK)
    store.close()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_conforms_to_its_openapi_document(api_schema: Any) -> None:
    """Every operation, positive and negative cases (schemathesis's pytest plugin does not run on pytest 9,
    so the operations are driven here, one hypothesis run each)."""
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case: Any) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                continue  # no negative case exists for an operation without inputs
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    assert operations >= 25, f"only {operations} operations in the OpenAPI document"
    assert not failures, "\n\n".join(failures)
