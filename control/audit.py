"""The audit log: who did what, when, from where — an append-only table in ``nexus_config``.

Every config change (with a before/after diff), deploy, start/stop, tag write (value and result),
log-in (success and failure), denied request and user or key change is one row of
``nexus_config.audit_event``. The table is append-only *in the database*: a trigger refuses every
UPDATE, DELETE and TRUNCATE, whoever the client is (a superuser too, unless it drops the trigger),
so a compromised API process cannot rewrite history.

Retention is the one way rows leave: :meth:`AuditLog.prune` calls the ``SECURITY DEFINER`` function
``nexus_config.audit_prune(days)``, which disables the trigger inside its own transaction (holding
the table's exclusive lock, so no other session sees it disabled), deletes rows older than
``days`` and enables it again. Chosen over partition drops because retention is set in days and
the table stays one plain table that Alembic can compare with the model.

Action names (CONTRACT.md): ``auth.login``, ``auth.login_failed``, ``auth.denied``,
``user.create|update|delete``, ``key.create|revoke``, ``flow.create|update|delete|deploy|rollback|
start|stop``, ``device.*``, ``tag.*``, ``tag.write``, ``command.rejected``.

>>> changes({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4})
{'b.c': {'before': 2, 'after': 3}, 'd': {'before': None, 'after': 4}}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, create_engine, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, select

from control.errors import InvalidError, UnavailableError, aware_utc
from control.store import SCHEMA

__all__ = ["MAX_QUERY", "AuditEvent", "AuditEventRow", "AuditLog", "changes"]

log = logging.getLogger(__name__)

MAX_QUERY = 1000
"""Most rows one query answers."""
_MAX_TEXT = 200


class AuditEventRow(SQLModel, table=True):
    """One audited event (never updated, never deleted except by retention)."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_at", "at"),
        Index("ix_audit_event_actor_at", "actor", "at"),
        Index("ix_audit_event_action_at", "action", "at"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str = Field(max_length=200)
    source: str | None = Field(default=None, max_length=200)
    action: str = Field(max_length=64)
    target: str | None = Field(default=None, max_length=200)
    outcome: str = Field(max_length=32)
    detail: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit row as callers see it."""

    id: int
    at: datetime
    actor: str
    source: str | None
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]


def _visible(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL: an attempt with one (a log-in name) is recorded with
    it spelled out instead of failing the record."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def _clip(value: str | None) -> str | None:
    return None if value is None else _visible(value)[:_MAX_TEXT]


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _visible(value)
    if isinstance(value, dict):
        return {_visible(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def _jsonable(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """The detail as plain JSON (datetimes and other objects as text, NUL spelled out), so any mapping
    can be recorded."""
    if not detail:
        return {}
    return _no_nul(json.loads(json.dumps(dict(detail), default=str)))  # type: ignore[no-any-return]


def changes(before: Any, after: Any, path: str = "") -> dict[str, dict[str, Any]]:
    """What differs between two JSON documents, by dotted path (list items by index): the diff an
    audit entry of a config change carries. Missing on one side is ``None``."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: dict[str, dict[str, Any]] = {}
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}" if path else str(key)
            out.update(changes(before.get(key), after.get(key), sub))
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out = {}
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            out.update(changes(b, a, f"{path}[{i}]"))
        return out
    return {} if before == after else {path: {"before": before, "after": after}}


class AuditLog:
    """Writes and reads ``nexus_config.audit_event`` (migrated by :meth:`control.store.ConfigStore.migrate`).

    ``engine_or_url`` is the config store's engine (shared pool) or a ``postgresql://`` URL.
    Synchronous; async callers run it in a worker thread.
    """

    def __init__(self, engine_or_url: Engine | str) -> None:
        if isinstance(engine_or_url, str):
            url = engine_or_url
            self.engine = create_engine(
                "postgresql+psycopg://", creator=lambda: psycopg.connect(url), pool_size=2, pool_pre_ping=True
            )
            self._owns_engine = True
        else:
            self.engine = engine_or_url
            self._owns_engine = False

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def record(
        self,
        action: str,
        *,
        actor: str,
        source: str | None,
        target: str | None = None,
        detail: Mapping[str, Any] | None = None,
        outcome: str = "ok",
    ) -> None:
        """Append one event (its own transaction, so a failed request is still audited)."""
        row = AuditEventRow(
            at=datetime.now(UTC),
            actor=_clip(actor) or "?",
            source=_clip(source),
            action=_visible(action)[:64],
            target=_clip(target),
            outcome=_visible(outcome)[:32],
            detail=_jsonable(detail),
        )
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
        except SQLAlchemyError as exc:
            # never silently: the caller's request fails rather than acting without a record
            log.error("audit write failed: action=%s error=%s", action, type(exc).__name__)
            raise UnavailableError("the audit log is unavailable") from None

    def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Newest first. ``action`` ending in ``*`` matches a prefix (``flow.*``); times are inclusive
        and must carry a timezone."""
        if not 1 <= limit <= MAX_QUERY:
            raise InvalidError(
                "limit out of range", [("query:limit", f"must be 1..{MAX_QUERY}, got {limit}")]
            )
        since = None if since is None else aware_utc(since, "query:since")
        until = None if until is None else aware_utc(until, "query:until")
        stmt = select(AuditEventRow)
        if actor:
            stmt = stmt.where(col(AuditEventRow.actor) == actor)
        if action:
            if action.endswith("*"):
                prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                stmt = stmt.where(col(AuditEventRow.action).like(prefix + "%", escape="\\"))
            else:
                stmt = stmt.where(col(AuditEventRow.action) == action)
        if target:
            stmt = stmt.where(col(AuditEventRow.target) == target)
        if since is not None:
            stmt = stmt.where(col(AuditEventRow.at) >= since)
        if until is not None:
            stmt = stmt.where(col(AuditEventRow.at) <= until)
        stmt = stmt.order_by(col(AuditEventRow.at).desc(), col(AuditEventRow.id).desc()).limit(limit)
        try:
            with Session(self.engine) as session:
                rows = session.exec(stmt).all()
        except DataError as exc:  # a filter PostgreSQL cannot compare with: bad input, not an outage
            raise InvalidError("a filter cannot be queried", [("query", type(exc.orig).__name__)]) from None
        except SQLAlchemyError as exc:
            raise UnavailableError(f"the audit log is unavailable: {type(exc).__name__}") from None
        return [
            AuditEvent(
                id=r.id or 0,
                at=r.at,
                actor=r.actor,
                source=r.source,
                action=r.action,
                target=r.target,
                outcome=r.outcome,
                detail=dict(r.detail),
            )
            for r in rows
        ]

    def prune(self, retention_days: int) -> int:
        """Delete events older than ``retention_days`` through the privileged database function;
        answers how many went."""
        if retention_days < 1:
            raise InvalidError(
                "retention too short", [("audit_retention_days", f"must be >= 1, got {retention_days}")]
            )
        with self.engine.begin() as conn:
            deleted = conn.execute(
                text(f"SELECT {SCHEMA}.audit_prune(:days)"), {"days": retention_days}
            ).scalar_one()
        if deleted:
            log.info("audit retention: %d events older than %d days removed", deleted, retention_days)
        return int(deleted)
