"""Versions are immutable: the database refuses UPDATE on flow_version.

The store never updates a version; the trigger makes that hold for every other client of the
database too (a hand-written SQL fix must write a new version). Deleting a whole flow (cascade)
stays possible.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "nexus_config"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.flow_version_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'flow versions are immutable (flow %, version %): write a new version',
                OLD.flow_id, OLD.number USING ERRCODE = 'integrity_constraint_violation';
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER flow_version_immutable BEFORE UPDATE ON {SCHEMA}.flow_version
        FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.flow_version_immutable()
        """
    )


def downgrade() -> None:
    op.execute(f"DROP TRIGGER IF EXISTS flow_version_immutable ON {SCHEMA}.flow_version")
    op.execute(f"DROP FUNCTION IF EXISTS {SCHEMA}.flow_version_immutable()")
