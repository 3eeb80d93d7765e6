"""Shared fixtures: a real PostgreSQL server and a real MQTT broker for the whole session.

``NEXUS_TEST_DATABASE_URL`` / ``NEXUS_TEST_MQTT_URL`` point the tests at existing services; otherwise an
embedded PostgreSQL (in a temporary folder, on a free port) and Mosquitto (when installed) or the
embedded amqtt broker are started once and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings
from psycopg.conninfo import make_conninfo

from nexus.embedded import EmbeddedBroker, EmbeddedPostgres, MosquittoBroker, free_port

# Hypothesis fails an example that takes longer than 200 ms by default: a timing assert in disguise
# on a shared 2-core machine (a property test failed under load with DeadlineExceeded, not a bug).
settings.register_profile("nexus", deadline=None)
settings.load_profile("nexus")


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or predicate!r}")
        time.sleep(interval)


@pytest.fixture(name="wait_for", scope="session")
def wait_for_fixture() -> Callable[..., Any]:
    return wait_for


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL database on a server that lives for the session."""
    url = os.environ.get("NEXUS_TEST_DATABASE_URL", "").strip()
    if url:
        yield url
        return
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to mode 0700 whenever a pytest
    # session starts, and as root the server runs as another user who must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="nexus-test-pg-"))
    pg = EmbeddedPostgres(folder, port=free_port())
    pg.start()
    try:
        yield pg.url
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def db(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server (its conninfo), dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """URL of an MQTT broker that lives for the session."""
    url = os.environ.get("NEXUS_TEST_MQTT_URL", "").strip()
    if url:
        yield url
        return
    broker: MosquittoBroker | EmbeddedBroker
    broker = MosquittoBroker(free_port()) if MosquittoBroker.available() else EmbeddedBroker(port=free_port())
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()
