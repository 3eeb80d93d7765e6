"""The config store against a real PostgreSQL: migrations, versions, concurrency, desired state."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from control.errors import ConflictError, InvalidError, NotFoundError
from control.store import SCHEMA, ConfigStore
from dataflows.spec import DEMO_SPEC

pytestmark = pytest.mark.integration


def small_spec(flow_id: str = "line1", scale: float = 1.0) -> dict[str, Any]:
    return {
        "version": 1,
        "id": flow_id,
        "devices": [
            {
                "id": "press-01",
                "connection": {"host": "127.0.0.1", "port": 1502},
                "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
                "tags": [{"name": "temp", "table": "holding", "address": 0, "scale": scale}],
            }
        ],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}],
    }


@pytest.fixture
def store(db: str) -> Any:
    s = ConfigStore(db)
    s.migrate()
    yield s
    s.close()


def _tables(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (SCHEMA,)
        ).fetchall()
    return {r[0] for r in rows}


def _drift(store: ConfigStore) -> list[Any]:
    return store.schema_drift()


def test_upgrade_from_empty_creates_the_tables_and_matches_the_models(db: str) -> None:
    store = ConfigStore(db)
    try:
        assert _tables(db) == set()
        store.migrate()
        assert _tables(db) == {
            "flow",
            "flow_version",
            "audit_event",
            "app_user",
            "api_key",
            "refresh_token",
            "alembic_version",
        }
        assert _drift(store) == [], "the models and the migrations disagree: write a migration"
        store.migrate()  # idempotent
    finally:
        store.close()


def test_the_drift_check_sees_a_schema_that_differs_from_the_models(store: ConfigStore, db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {SCHEMA}.flow ADD COLUMN stray integer")
        conn.execute(f"ALTER TABLE {SCHEMA}.flow_version ALTER COLUMN author TYPE text")
    drift = [str(d) for d in _drift(store)]
    assert any("stray" in d for d in drift), drift
    assert any("author" in d for d in drift), drift


def test_concurrent_migrations_from_empty_do_not_collide(db: str) -> None:
    stores = [ConfigStore(db) for _ in range(3)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def run(s: ConfigStore) -> None:
        barrier.wait()
        try:
            s.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert stores[0].schema_drift() == []
    finally:
        for s in stores:
            s.close()


def test_downgrade_upgrade_round_trip(db: str) -> None:
    store = ConfigStore(db)
    try:
        store.migrate()
        store.create_flow(small_spec(), author="t")
        store.downgrade("0001")
        store.downgrade("base")
        assert _tables(db) == {"alembic_version"}
        store.migrate()
        assert _tables(db) >= {"flow", "flow_version"}
        assert _drift(store) == []
        assert store.list_flows() == []
        store.create_flow(small_spec(), author="t")
        assert [f.flow_id for f in store.list_flows()] == ["line1"]
    finally:
        store.close()


def test_versions_are_immutable_and_numbered(store: ConfigStore) -> None:
    v1 = store.create_flow(small_spec(), author="alice", message="first")
    assert (v1.number, v1.parent_number, v1.author, v1.message) == (1, None, "alice", "first")
    assert v1.created_at.tzinfo is not None
    v2 = store.commit("line1", small_spec(scale=0.1), base=1, author="bob", message="scale")
    assert (v2.number, v2.parent_number) == (2, 1)
    assert store.get_version("line1", 1).spec == small_spec()
    assert store.get_version("line1").number == 2
    assert [v.number for v in store.list_versions("line1")] == [2, 1]
    flow = store.get_flow("line1")
    assert (flow.latest_version, flow.deployed_version, flow.desired_state) == (2, None, "stopped")
    assert flow.etag == '"2"'


def test_the_database_refuses_to_change_a_version(store: ConfigStore, db: str) -> None:
    store.create_flow(small_spec(), author="a")
    with (
        psycopg.connect(db) as conn,
        pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"),
    ):
        conn.execute(f"UPDATE {SCHEMA}.flow_version SET message = 'rewritten'")
    assert store.get_version("line1", 1).message == ""


def test_stale_base_conflicts(store: ConfigStore) -> None:
    store.create_flow(small_spec(), author="a")
    store.commit("line1", small_spec(scale=2), base=1, author="a")
    with pytest.raises(ConflictError, match="based on version 1"):
        store.commit("line1", small_spec(scale=3), base=1, author="b")
    assert store.get_version("line1").spec["devices"][0]["tags"][0]["scale"] == 2


def test_concurrent_writers_on_one_base_one_wins(store: ConfigStore) -> None:
    store.create_flow(small_spec(), author="a")
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.commit("line1", small_spec(scale=10 + i), base=1, author=f"w{i}")
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "ok"]
    assert store.get_flow("line1").latest_version == 2


def test_invalid_documents_are_refused_with_field_paths(store: ConfigStore) -> None:
    bad = small_spec()
    bad["devices"][0]["poll_interval_s"] = -1
    with pytest.raises(InvalidError) as err:
        store.create_flow(bad, author="a")
    assert ("devices[0].poll_interval_s", "Input should be greater than 0 (got -1)") in err.value.problems
    store.create_flow(small_spec(), author="a")
    with pytest.raises(InvalidError) as err:
        store.commit("line1", small_spec("other"), base=1, author="a")
    assert err.value.problems[0][0] == "id"
    with pytest.raises(ConflictError):
        store.create_flow(small_spec(), author="a")
    with pytest.raises(NotFoundError):
        store.get_version("line1", 7)
    with pytest.raises(NotFoundError):
        store.commit("nope", small_spec("nope"), base=None, author="a")


def test_deploy_rollback_and_desired_flows(store: ConfigStore, db: str) -> None:
    store.create_flow(small_spec(), author="a")
    assert store.desired_flows()[0].version is None
    with pytest.raises(ConflictError, match="deploy one first"):
        store.set_desired_state("line1", "running")
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("LISTEN nexus_config")
        flow, previous = store.deploy("line1")
        assert (flow.deployed_version, flow.desired_state, previous) == (1, "running", None)
        note = next(listener.notifies(timeout=10, stop_after=1))
        assert (note.channel, note.payload) == ("nexus_config", "line1")
    store.commit("line1", small_spec(scale=5), base=1, author="a")
    store.deploy("line1", 2)
    (desired,) = store.desired_flows()
    assert (desired.flow_id, desired.version, desired.desired_state) == ("line1", 2, "running")
    assert desired.spec is not None and desired.spec["devices"][0]["tags"][0]["scale"] == 5
    v3 = store.rollback("line1", 1, base=2, author="a")
    assert (v3.number, v3.parent_number, v3.message) == (3, 2, "rollback to version 1")
    assert v3.spec == small_spec()
    assert store.get_flow("line1").deployed_version == 3
    with pytest.raises(ConflictError):
        store.delete_flow("line1")
    store.set_desired_state("line1", "stopped")
    assert store.desired_flows()[0].desired_state == "stopped"
    store.delete_flow("line1")
    assert store.list_flows() == []
    with pytest.raises(NotFoundError):
        store.get_version("line1", 1)


def test_source_text_is_kept_byte_for_byte(store: ConfigStore, tmp_path: Path) -> None:
    text = DEMO_SPEC.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    v1 = store.create_flow(doc, author="a", source_text=text)
    assert store.get_version(v1.flow_id, 1).source_text == text
    changed = copy.deepcopy(doc)
    changed["description"] = "edited"
    v2 = store.commit(v1.flow_id, changed, base=1, author="a")
    assert yaml.safe_load(v2.source_text) == changed
    assert list(yaml.safe_load(v2.source_text)) == list(changed)  # the document's own key order
