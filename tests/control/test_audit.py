"""The audit log over a real PostgreSQL: append-only in the database, filterable, pruned only by retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from control.audit import AuditLog, changes
from control.errors import InvalidError
from control.store import SCHEMA, ConfigStore

pytestmark = pytest.mark.integration


@pytest.fixture
def audit(db: str) -> Iterator[AuditLog]:
    store = ConfigStore(db)
    store.migrate()
    log = AuditLog(store.engine)
    yield log
    store.close()


def test_record_and_filter(audit: AuditLog) -> None:
    audit.record("auth.login", actor="alice", source="10.0.0.1")
    audit.record("flow.update", actor="bob", source="10.0.0.2", target="line1", detail={"changes": {"a": 1}})
    audit.record("flow.deploy", actor="bob", source=None, target="line1", outcome="error")
    assert [e.action for e in audit.query()] == ["flow.deploy", "flow.update", "auth.login"]
    assert [e.action for e in audit.query(actor="bob", action="flow.*")] == ["flow.deploy", "flow.update"]
    (e,) = audit.query(action="flow.update")
    assert (e.actor, e.source, e.target, e.detail) == ("bob", "10.0.0.2", "line1", {"changes": {"a": 1}})
    assert e.at.tzinfo is not None
    assert audit.query(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(audit.query(until=datetime.now(UTC), limit=2)) == 2
    with pytest.raises(InvalidError):
        audit.query(since=datetime(2026, 1, 1))  # naive
    with pytest.raises(InvalidError):
        audit.query(limit=0)


def test_filters_postgresql_cannot_hold_are_bad_input_not_an_outage(audit: AuditLog) -> None:
    """NUL in a text filter and offsets beyond PostgreSQL's 15:59 (found by schemathesis: a NUL answered
    503, "the audit log is unavailable")."""
    audit.record("auth.login", actor="alice", source="10.0.0.1")
    for name in ("actor", "action", "target"):
        with pytest.raises(InvalidError) as info:
            audit.query(**{name: "ali\x00ce"})
        assert info.value.problems[0][0] == "query"  # (the API names the parameter)
    with pytest.raises(InvalidError) as info:
        audit.query(until=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))))
    assert info.value.problems[0][0] == "query:until"
    minus_18_09 = timezone(-timedelta(hours=18, minutes=9))
    (e,) = audit.query(
        actor="alice", since=(datetime.now(UTC) - timedelta(minutes=5)).astimezone(minus_18_09)
    )
    assert e.action == "auth.login"
    assert audit.query(since=(datetime.now(UTC) + timedelta(minutes=5)).astimezone(minus_18_09)) == []


def test_an_attempt_with_a_nul_character_is_recorded_spelled_out(audit: AuditLog) -> None:
    """A log-in name with a NUL (schemathesis: the record failed, so the log-in answered 503)."""
    audit.record("auth.login_failed", actor="ad\x00min", source="10.0.0.1", detail={"na\x00me": ["a\x00"]})
    (e,) = audit.query()
    assert (e.actor, e.detail) == ("ad\\x00min", {"na\\x00me": ["a\\x00"]})


@pytest.mark.parametrize(
    "statement",
    [
        f"UPDATE {SCHEMA}.audit_event SET actor = 'mallory'",
        f"DELETE FROM {SCHEMA}.audit_event",
        f"TRUNCATE {SCHEMA}.audit_event",
    ],
)
def test_the_database_refuses_to_change_the_log(audit: AuditLog, db: str, statement: str) -> None:
    """Even the superuser the tests connect as is refused (the trigger, not only missing grants)."""
    audit.record("auth.login", actor="alice", source="127.0.0.1")
    with (
        psycopg.connect(db) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
    ):
        conn.execute(statement)
    assert [e.actor for e in audit.query()] == ["alice"]


def test_retention_prunes_only_old_events_and_keeps_the_log_append_only(audit: AuditLog, db: str) -> None:
    audit.record("auth.login", actor="old", source=None)
    audit.record("auth.login", actor="new", source=None)
    with psycopg.connect(db) as conn:  # age one row: only possible with the trigger dropped by hand
        conn.execute(f"ALTER TABLE {SCHEMA}.audit_event DISABLE TRIGGER audit_event_append_only")
        conn.execute(f"UPDATE {SCHEMA}.audit_event SET at = now() - interval '40 days' WHERE actor = 'old'")
        conn.execute(f"ALTER TABLE {SCHEMA}.audit_event ENABLE TRIGGER audit_event_append_only")
    assert audit.prune(30) == 1
    assert [e.actor for e in audit.query()] == ["new"]
    assert audit.prune(30) == 0
    with psycopg.connect(db) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"DELETE FROM {SCHEMA}.audit_event")  # the trigger is back on
    with pytest.raises(InvalidError):
        audit.prune(0)


def test_changes_is_a_diff_by_path() -> None:
    before = {"devices": [{"id": "p1", "tags": [{"name": "t", "scale": 1}]}], "name": "x"}
    after = {"devices": [{"id": "p1", "tags": [{"name": "t", "scale": 2}]}]}
    assert changes(before, after) == {
        "devices[0].tags[0].scale": {"before": 1, "after": 2},
        "name": {"before": "x", "after": None},
    }
    assert changes([1], [1, 2], "l") == {"l": {"before": [1], "after": [1, 2]}}
