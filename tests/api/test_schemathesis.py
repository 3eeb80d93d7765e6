"""Schemathesis against the OpenAPI document (a CI-sized run): no 5xx, every response fits its schema.

Runs in-process over ASGI against a real PostgreSQL config store that holds one flow, authenticated
as admin (every operation is allowed, so every one is reached). The three
operations that reach out to devices or the broker (device test read, OPC UA browse, tag write) are
left out: generated connections would point at arbitrary hosts. They have their own tests against
the real pymodbus and asyncua servers and a real broker (tests/api/test_device_io.py).
"""

from __future__ import annotations

import os
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
from api.auth.guard import auth_of
from control.accounts import Accounts
from control.errors import NotFoundError
from control.store import ConfigStore
from core.settings import Settings
from tests.auth_helpers import make_users

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
    make_users(store)
    yield schemathesis.openapi.from_asgi("/schema/openapi.json", app).exclude(path_regex=NETWORK), store, app
    store.close()


def admin_headers(app: Any, store: ConfigStore) -> dict[str, str]:
    """A new admin session (its bearer header)."""
    user = Accounts(store.engine).get_user("admin")
    assert user is not None
    grant = Accounts(store.engine).start_session(user)
    return {"Authorization": f"Bearer {auth_of(app).tokens.access_token('admin', grant.family)}"}


EXAMPLES = int(os.environ.get("NEXUS_FUZZ_EXAMPLES", "4"))
"""Generated requests per operation and mode: CI-sized; ``NEXUS_FUZZ_EXAMPLES=30`` for a deeper hunt."""

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


EXISTING = {"flow_id": "line1", "device_id": "press-01", "tag": "temp", "number": 1}
"""Path parameters of the seeded flow, so generated bodies and headers also reach real resources."""


def _on_existing(case: Any) -> Any:
    if case.path_parameters:
        for name in case.path_parameters:
            if name in EXISTING:
                case.path_parameters[name] = EXISTING[name]
    return case


def _reseed(store: ConfigStore) -> None:
    """Put the seeded flow back when a generated DELETE removed it (or a PUT rewrote its devices)."""
    try:
        store.set_desired_state("line1", "stopped")
        store.delete_flow("line1")
    except NotFoundError:
        pass
    store.create_flow(SPEC, author="seed")


@pytest.mark.timeout(3600)  # ~45 operations, each generated request through the auth guard
def test_api_conforms_to_its_openapi_document(api_schema: Any) -> None:
    """Every operation: positive and negative cases, and positive ones on the seeded flow (schemathesis's
    pytest plugin does not run on pytest 9, so the operations are driven here, one hypothesis run each)."""
    failures: list[str] = []
    statuses: list[int] = []
    operations = 0
    schema, store, app = api_schema
    session = admin_headers(app, store)
    for result in schema.get_all_operations():
        operation = result.ok()
        _reseed(store)
        operations += 1
        strategies = {
            "positive": operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            "negative": operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        }
        if "{" in operation.path:
            strategies["positive on line1"] = strategies["positive"].map(_on_existing)
        for mode, strategy in strategies.items():

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
            )
            def run(case: Any) -> None:
                # one session for the run; a generated log-out ends only a fresh session of its own
                headers = admin_headers(app, store) if case.path.endswith("/logout") else session
                statuses.append(case.call_and_validate(headers=headers, checks=CHECKS).status_code)

            try:
                run()
            except Unsatisfiable:
                continue  # no negative case exists for an operation without inputs
            except Exception as exc:
                failures.append(f"{operation.label} ({mode}): {str(exc)[:1500]}")
    assert operations >= 25, f"only {operations} operations in the OpenAPI document"
    assert not failures, "\n\n".join(failures)
    ok = sum(200 <= code < 300 for code in statuses)
    assert ok >= 20, (
        f"only {ok} of {len(statuses)} generated requests succeeded: the run barely reached the store"
    )
