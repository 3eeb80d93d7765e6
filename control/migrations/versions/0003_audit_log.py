"""The audit log: append-only ``audit_event`` (a trigger refuses UPDATE, DELETE and TRUNCATE).

Retention goes through ``audit_prune(days)``, a ``SECURITY DEFINER`` function owned by the
migrating role: it disables the trigger inside its own transaction (the ALTER TABLE holds an
exclusive lock until commit, so no other session can slip a change through), deletes the old rows
and enables the trigger again. ``UPDATE``/``DELETE``/``TRUNCATE`` are also revoked from ``PUBLIC``;
a deployment that runs the API as its own non-owner role grants it only ``SELECT, INSERT`` (and
``EXECUTE`` on ``audit_prune``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "nexus_config"


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sqlmodel.AutoString(length=200), nullable=False),
        sa.Column("source", sqlmodel.AutoString(length=200), nullable=True),
        sa.Column("action", sqlmodel.AutoString(length=64), nullable=False),
        sa.Column("target", sqlmodel.AutoString(length=200), nullable=True),
        sa.Column("outcome", sqlmodel.AutoString(length=32), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"], schema=SCHEMA)
    op.create_index("ix_audit_event_actor_at", "audit_event", ["actor", "at"], schema=SCHEMA)
    op.create_index("ix_audit_event_action_at", "audit_event", ["action", "at"], schema=SCHEMA)
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.audit_event
        FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.audit_event_append_only()
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON {SCHEMA}.audit_event
        FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.audit_event_append_only()
        """
    )
    op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {SCHEMA}.audit_event FROM PUBLIC")
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.audit_prune(retention_days integer) RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            deleted bigint;
        BEGIN
            IF retention_days IS NULL OR retention_days < 1 THEN
                RAISE EXCEPTION 'audit retention must be at least 1 day, got %', retention_days
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            ALTER TABLE {SCHEMA}.audit_event DISABLE TRIGGER audit_event_append_only;
            DELETE FROM {SCHEMA}.audit_event WHERE at < now() - make_interval(days => retention_days);
            GET DIAGNOSTICS deleted = ROW_COUNT;
            ALTER TABLE {SCHEMA}.audit_event ENABLE TRIGGER audit_event_append_only;
            RETURN deleted;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {SCHEMA}.audit_prune(integer)")
    op.drop_table("audit_event", schema=SCHEMA)
    op.execute(f"DROP FUNCTION IF EXISTS {SCHEMA}.audit_event_append_only()")
