"""Config store: flows and their immutable spec versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "nexus_config"


def upgrade() -> None:
    op.create_table(
        "flow",
        sa.Column("id", sqlmodel.AutoString(length=63), nullable=False),
        sa.Column("name", sqlmodel.AutoString(length=200), nullable=False),
        sa.Column("desired_state", sqlmodel.AutoString(length=16), nullable=False),
        sa.Column("deployed_version", sa.Integer(), nullable=True),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("processes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_table(
        "flow_version",
        sa.Column("flow_id", sqlmodel.AutoString(length=63), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parent_number", sa.Integer(), nullable=True),
        sa.Column("spec", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("layout", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("source_text", sa.Text(), nullable=False),
        sa.Column("source_format", sqlmodel.AutoString(length=8), nullable=False),
        sa.Column("author", sqlmodel.AutoString(length=200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["flow_id"], [f"{SCHEMA}.flow.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("flow_id", "number"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("flow_version", schema=SCHEMA)
    op.drop_table("flow", schema=SCHEMA)
