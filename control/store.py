"""The config store: flows and their immutable, numbered spec versions in PostgreSQL (schema ``nexus_config``).

A flow is a series of **versions** of its spec document; each version records its author, time,
message and the version it was based on (``parent_number``), and is never changed afterwards. One
version is *deployed*; rollback writes an old version's document again as a new version and
deploys that, so history only grows. Every write is checked by ``dataflows.spec`` first: what the
store holds will run.

Optimistic concurrency: a write names the version it was based on (``base``, from the API's
``If-Match``); when another write got in first the store raises :class:`ConflictError`. The flow
row is locked for the duration of a write and ``(flow_id, number)`` is the primary key, so two
writers can never both win.

Each version keeps the text it came from (``source_text``: the imported file byte for byte, or a
YAML rendering of a document written through the API), so ``nexus flows export`` gives back exactly
what ``nexus flows import`` read. Changes that the supervisor must act on (deploy, start, stop,
delete) send ``NOTIFY nexus_config, '<flow id>'`` in the same transaction.

Table models stay in here; callers get the frozen :class:`FlowInfo` and :class:`VersionInfo`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
import yaml
from sqlalchemy import Column, DateTime, ForeignKeyConstraint, Text, create_engine, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, select

from control.errors import ConflictError, InvalidError, NotFoundError, UnavailableError
from control.types import DesiredFlow, DesiredState
from dataflows.spec import FlowSpec, SpecError, parse_spec

__all__ = [
    "NOTIFY_CHANNEL",
    "SCHEMA",
    "ConfigStore",
    "FlowInfo",
    "FlowRow",
    "FlowVersionRow",
    "VersionInfo",
    "metadata",
    "render_yaml",
    "validate_document",
]

log = logging.getLogger(__name__)

SCHEMA = "nexus_config"
NOTIFY_CHANNEL = "nexus_config"
MIGRATIONS = Path(__file__).parent / "migrations"

SourceFormat = Literal["yaml", "json"]
MIGRATION_LOCK = 0x6E657875_73636667  # "nexuscfg"
"""Advisory lock key held while migrating."""
MAX_VERSION = 2**31 - 1
"""Version numbers are PostgreSQL ``integer``s."""


def _now() -> datetime:
    return datetime.now(UTC)


class FlowRow(SQLModel, table=True):
    """One flow: what should run (``desired_state``, ``deployed_version``) and its newest version."""

    __tablename__ = "flow"
    __table_args__ = {"schema": SCHEMA}

    id: str = Field(primary_key=True, max_length=63)
    name: str = Field(max_length=200)
    desired_state: str = Field(default="stopped", max_length=16)
    deployed_version: int | None = Field(default=None)
    latest_version: int = Field(default=0)
    processes: int = Field(default=1)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class FlowVersionRow(SQLModel, table=True):
    """One immutable version of a flow's spec document."""

    __tablename__ = "flow_version"
    __table_args__ = (
        ForeignKeyConstraint(["flow_id"], [f"{SCHEMA}.flow.id"], ondelete="CASCADE"),
        {"schema": SCHEMA},
    )

    flow_id: str = Field(primary_key=True, max_length=63)
    number: int = Field(primary_key=True)
    parent_number: int | None = Field(default=None)
    spec: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    layout: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    source_text: str = Field(sa_column=Column(Text, nullable=False))
    source_format: str = Field(default="yaml", max_length=8)
    author: str = Field(max_length=200)
    message: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


metadata = SQLModel.metadata
"""The tables of the config store (what the migrations must produce; a test compares them)."""

MODEL_MODULES = ("control.audit", "control.accounts")
"""Modules whose table models live in this schema too (imported before comparing with the database)."""


def load_models() -> None:
    """Register every table model of the schema on :data:`metadata` (they import this module, so
    they are loaded late rather than at the top)."""
    import importlib

    for name in MODEL_MODULES:
        importlib.import_module(name)


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """A flow as callers see it."""

    flow_id: str
    name: str
    description: str
    desired_state: DesiredState
    deployed_version: int | None
    latest_version: int
    processes: int
    created_at: datetime
    updated_at: datetime

    @property
    def etag(self) -> str:
        """The ETag of the flow's documents: its newest version number."""
        return f'"{self.latest_version}"'


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a flow's spec, with where it came from."""

    flow_id: str
    number: int
    parent_number: int | None
    author: str
    message: str
    created_at: datetime
    spec: dict[str, Any]
    layout: dict[str, Any] | None
    source_text: str
    source_format: SourceFormat

    @property
    def etag(self) -> str:
        return f'"{self.number}"'


def validate_document(doc: Any, source: str | None = None) -> FlowSpec:
    """``parse_spec`` with the control plane's error: :class:`InvalidError` carrying every field path."""
    try:
        return parse_spec(doc, source)
    except SpecError as exc:
        raise InvalidError(str(exc).splitlines()[0].rstrip(":"), exc.problems) from None


def render_yaml(doc: Mapping[str, Any]) -> str:
    """A spec document as YAML in its own key order (what a version written through the API keeps as text)."""
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, default_flow_style=False)


def include_name(name: str | None, type_: str, _parent: Any) -> bool:
    """What Alembic compares: the store's schema and tables only (not Alembic's own version table)."""
    if type_ == "schema":
        return name == SCHEMA
    return not (type_ == "table" and name == "alembic_version")


def _flow_info(row: FlowRow, description: str = "") -> FlowInfo:
    return FlowInfo(
        flow_id=row.id,
        name=row.name,
        description=description,
        desired_state="running" if row.desired_state == "running" else "stopped",
        deployed_version=row.deployed_version,
        latest_version=row.latest_version,
        processes=row.processes,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _version_info(row: FlowVersionRow) -> VersionInfo:
    return VersionInfo(
        flow_id=row.flow_id,
        number=row.number,
        parent_number=row.parent_number,
        author=row.author,
        message=row.message,
        created_at=row.created_at,
        spec=dict(row.spec),
        layout=dict(row.layout) if row.layout is not None else None,
        source_text=row.source_text,
        source_format="json" if row.source_format == "json" else "yaml",
    )


class ConfigStore:
    """Flows and versions in PostgreSQL; implements :class:`control.types.DesiredStateSource`.

    ``database_url`` is a ``postgresql://`` URL or a libpq conninfo string (what psycopg accepts).
    Synchronous (SQLAlchemy over psycopg 3); the API calls it from worker threads.
    """

    def __init__(self, database_url: str, *, pool_size: int = 5) -> None:
        self._conninfo = database_url
        self.engine: Engine = create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(database_url),
            pool_size=pool_size,
            pool_pre_ping=True,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (the newest by default); run at start, idempotent."""
        from alembic import command

        cfg = self._alembic_config()
        with self.engine.begin() as conn:
            # several processes may start at once (API, supervisor, CLI): one migrates, the others wait
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=MIGRATION_LOCK))
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def downgrade(self, revision: str = "base") -> None:
        """Take the schema back to ``revision`` (tests and operators undoing an upgrade)."""
        from alembic import command

        cfg = self._alembic_config()
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)

    def schema_drift(self) -> list[Any]:
        """Differences between the table models and the migrated database (empty when they agree).

        CI runs this after upgrading an empty database: a model changed without a migration fails it.
        """
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        load_models()

        with self.engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"include_schemas": True, "include_name": include_name, "compare_type": True}
            )
            return list(compare_metadata(ctx, metadata))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except OperationalError as exc:
            raise UnavailableError(f"config store unavailable: {type(exc.orig).__name__}") from None
        except DataError as exc:  # a value PostgreSQL cannot hold (out of range, NUL in text): bad input
            raise InvalidError("a value cannot be stored", [("", type(exc.orig).__name__)]) from None

    # -- reads -------------------------------------------------------------------------------------

    def _flow_row(self, session: Session, flow_id: str, *, lock: bool = False) -> FlowRow:
        stmt = select(FlowRow).where(FlowRow.id == flow_id)
        if lock:
            stmt = stmt.with_for_update()
        row = session.exec(stmt).first()
        if row is None:
            raise NotFoundError(f"flow {flow_id!r} does not exist")
        return row

    def _version_row(self, session: Session, flow_id: str, number: int) -> FlowVersionRow:
        if not 1 <= number <= MAX_VERSION:
            raise NotFoundError(f"flow {flow_id!r} has no version {number}")
        row = session.get(FlowVersionRow, (flow_id, number))
        if row is None:
            raise NotFoundError(f"flow {flow_id!r} has no version {number}")
        return row

    def _description(self, session: Session, row: FlowRow) -> str:
        if row.latest_version < 1:
            return ""
        version = session.get(FlowVersionRow, (row.id, row.latest_version))
        return str(version.spec.get("description", "")) if version is not None else ""

    def list_flows(self) -> list[FlowInfo]:
        with self._session() as s:
            rows = s.exec(select(FlowRow).order_by(col(FlowRow.id))).all()
            return [_flow_info(r, self._description(s, r)) for r in rows]

    def get_flow(self, flow_id: str) -> FlowInfo:
        with self._session() as s:
            row = self._flow_row(s, flow_id)
            return _flow_info(row, self._description(s, row))

    def list_versions(self, flow_id: str) -> list[VersionInfo]:
        """Every version of a flow, newest first."""
        with self._session() as s:
            self._flow_row(s, flow_id)
            rows = s.exec(
                select(FlowVersionRow)
                .where(FlowVersionRow.flow_id == flow_id)
                .order_by(col(FlowVersionRow.number).desc())
            ).all()
            return [_version_info(r) for r in rows]

    def get_version(self, flow_id: str, number: int | None = None) -> VersionInfo:
        """Version ``number`` of a flow; ``None``: the newest."""
        with self._session() as s:
            flow = self._flow_row(s, flow_id)
            return _version_info(
                self._version_row(s, flow_id, flow.latest_version if number is None else number)
            )

    def deployed_version(self, flow_id: str) -> VersionInfo | None:
        with self._session() as s:
            flow = self._flow_row(s, flow_id)
            if flow.deployed_version is None:
                return None
            return _version_info(self._version_row(s, flow_id, flow.deployed_version))

    def desired_flows(self) -> list[DesiredFlow]:
        """What should run: every flow with its deployed version's document (the supervisor's input)."""
        with self._session() as s:
            rows = s.exec(
                select(FlowRow, FlowVersionRow)
                .join(
                    FlowVersionRow,
                    (col(FlowVersionRow.flow_id) == col(FlowRow.id))
                    & (col(FlowVersionRow.number) == col(FlowRow.deployed_version)),
                    isouter=True,
                )
                .order_by(col(FlowRow.id))
            ).all()
            return [
                DesiredFlow(
                    flow_id=flow.id,
                    desired_state="running" if flow.desired_state == "running" else "stopped",
                    version=flow.deployed_version,
                    spec=dict(version.spec) if version is not None else None,
                    processes=flow.processes,
                )
                for flow, version in rows
            ]

    # -- writes ------------------------------------------------------------------------------------

    @staticmethod
    def _check_base(flow: FlowRow, base: int | None) -> None:
        if base is not None and base != flow.latest_version:
            raise ConflictError(
                f"flow {flow.id!r} is at version {flow.latest_version}; this change was based on "
                f"version {base} (reload and apply it again)"
            )

    @staticmethod
    def _notify(session: Session, flow_id: str) -> None:
        session.exec(
            text("SELECT pg_notify(:channel, :payload)").bindparams(channel=NOTIFY_CHANNEL, payload=flow_id)
        )  # type: ignore[call-overload]

    def create_flow(
        self,
        doc: Mapping[str, Any],
        *,
        author: str,
        message: str = "",
        source_text: str | None = None,
        source_format: SourceFormat = "yaml",
        layout: Mapping[str, Any] | None = None,
        processes: int = 1,
    ) -> VersionInfo:
        """A new flow (its id is the spec's ``id``) with ``doc`` as version 1; 409 when the id is taken."""
        spec = validate_document(doc)
        if not 1 <= processes <= 64:
            raise InvalidError("processes out of range", [("processes", f"must be 1..64, got {processes}")])
        now = _now()
        try:
            with self._session() as s:
                if s.get(FlowRow, spec.id) is not None:
                    raise ConflictError(f"flow {spec.id!r} already exists")
                s.add(
                    FlowRow(
                        id=spec.id,
                        name=spec.id,
                        latest_version=1,
                        processes=processes,
                        created_at=now,
                        updated_at=now,
                    )
                )
                s.flush()
                row = self._add_version(
                    s, spec.id, 1, None, doc, author, message, source_text, source_format, layout, now
                )
                return _version_info(row)
        except IntegrityError:
            raise ConflictError(f"flow {spec.id!r} already exists") from None

    @staticmethod
    def _add_version(  # noqa: PLR0917 - private, called in three places with the same shape
        session: Session,
        flow_id: str,
        number: int,
        parent: int | None,
        doc: Mapping[str, Any],
        author: str,
        message: str,
        source_text: str | None,
        source_format: SourceFormat,
        layout: Mapping[str, Any] | None,
        now: datetime,
    ) -> FlowVersionRow:
        row = FlowVersionRow(
            flow_id=flow_id,
            number=number,
            parent_number=parent,
            spec=dict(doc),
            layout=dict(layout) if layout is not None else None,
            source_text=source_text if source_text is not None else render_yaml(doc),
            source_format=source_format if source_text is not None else "yaml",
            author=author,
            message=message,
            created_at=now,
        )
        session.add(row)
        session.flush()
        return row

    def commit(
        self,
        flow_id: str,
        doc: Mapping[str, Any],
        *,
        base: int | None,
        author: str,
        message: str = "",
        source_text: str | None = None,
        source_format: SourceFormat = "yaml",
        layout: Mapping[str, Any] | None = None,
    ) -> VersionInfo:
        """Write ``doc`` as the flow's next version; ``base`` is the version it was based on (``None``: no check).

        The layout of the base version is carried over when ``layout`` is ``None``.
        """
        spec = validate_document(doc)
        if spec.id != flow_id:
            raise InvalidError(
                "the spec's id is not the flow's",
                [("id", f"must be {flow_id!r} (the flow's id), got {spec.id!r}")],
            )
        try:
            with self._session() as s:
                flow = self._flow_row(s, flow_id, lock=True)
                self._check_base(flow, base)
                parent = flow.latest_version
                if layout is None and parent >= 1:
                    layout = self._version_row(s, flow_id, parent).layout
                now = _now()
                row = self._add_version(
                    s,
                    flow_id,
                    parent + 1,
                    parent,
                    doc,
                    author,
                    message,
                    source_text,
                    source_format,
                    layout,
                    now,
                )
                flow.latest_version = parent + 1
                flow.updated_at = now
                s.add(flow)
                return _version_info(row)
        except IntegrityError:
            raise ConflictError(f"flow {flow_id!r} changed while this version was written; retry") from None

    def deploy(
        self, flow_id: str, number: int | None = None, *, base: int | None = None
    ) -> tuple[FlowInfo, int | None]:
        """Deploy version ``number`` (default: the newest) and want it running; returns (flow, previously deployed)."""
        with self._session() as s:
            flow = self._flow_row(s, flow_id, lock=True)
            self._check_base(flow, base)
            number = flow.latest_version if number is None else number
            self._version_row(s, flow_id, number)
            previous = flow.deployed_version
            flow.deployed_version = number
            flow.desired_state = "running"
            flow.updated_at = _now()
            s.add(flow)
            self._notify(s, flow_id)
            return _flow_info(flow, self._description(s, flow)), previous

    def rollback(
        self, flow_id: str, number: int, *, base: int | None, author: str, message: str | None = None
    ) -> VersionInfo:
        """Write version ``number``'s document again as the newest version and deploy it (history only grows)."""
        with self._session() as s:
            flow = self._flow_row(s, flow_id, lock=True)
            self._check_base(flow, base)
            old = self._version_row(s, flow_id, number)
            parent = flow.latest_version
            now = _now()
            row = self._add_version(
                s,
                flow_id,
                parent + 1,
                parent,
                old.spec,
                author,
                message or f"rollback to version {number}",
                old.source_text,
                "json" if old.source_format == "json" else "yaml",
                old.layout,
                now,
            )
            flow.latest_version = parent + 1
            flow.deployed_version = parent + 1
            flow.desired_state = "running"
            flow.updated_at = now
            s.add(flow)
            self._notify(s, flow_id)
            return _version_info(row)

    def set_desired_state(self, flow_id: str, state: DesiredState) -> FlowInfo:
        """Want the flow running or stopped; starting needs a deployed version (409 otherwise)."""
        with self._session() as s:
            flow = self._flow_row(s, flow_id, lock=True)
            if state == "running" and flow.deployed_version is None:
                raise ConflictError(f"flow {flow_id!r} has no deployed version; deploy one first")
            flow.desired_state = state
            flow.updated_at = _now()
            s.add(flow)
            self._notify(s, flow_id)
            return _flow_info(flow, self._description(s, flow))

    def set_processes(self, flow_id: str, processes: int, *, base: int | None = None) -> FlowInfo:
        """How many Bytewax processes run the flow (applied at its next start)."""
        if not 1 <= processes <= 64:
            raise InvalidError("processes out of range", [("processes", f"must be 1..64, got {processes}")])
        with self._session() as s:
            flow = self._flow_row(s, flow_id, lock=True)
            self._check_base(flow, base)
            flow.processes = processes
            flow.updated_at = _now()
            s.add(flow)
            self._notify(s, flow_id)
            return _flow_info(flow, self._description(s, flow))

    def delete_flow(self, flow_id: str, *, base: int | None = None) -> None:
        """Delete a flow and its history; refused (409) while it is wanted running."""
        with self._session() as s:
            flow = self._flow_row(s, flow_id, lock=True)
            self._check_base(flow, base)
            if flow.desired_state == "running":
                raise ConflictError(f"flow {flow_id!r} is running; stop it before deleting it")
            s.delete(flow)
            s.flush()
            self._notify(s, flow_id)
