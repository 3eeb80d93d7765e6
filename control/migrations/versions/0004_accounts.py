"""Users, API keys and refresh tokens (see control/accounts.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "nexus_config"


def upgrade() -> None:
    op.create_table(
        "app_user",
        sa.Column("username", sqlmodel.AutoString(length=64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sqlmodel.AutoString(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username"),
        schema=SCHEMA,
    )
    op.create_table(
        "api_key",
        sa.Column("id", sqlmodel.AutoString(length=32), nullable=False),
        sa.Column("name", sqlmodel.AutoString(length=200), nullable=False),
        sa.Column("key_hash", sqlmodel.AutoString(length=64), nullable=False),
        sa.Column("role", sqlmodel.AutoString(length=16), nullable=False),
        sa.Column("created_by", sqlmodel.AutoString(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_table(
        "refresh_token",
        sa.Column("token_hash", sqlmodel.AutoString(length=64), nullable=False),
        sa.Column("family", sqlmodel.AutoString(length=64), nullable=False),
        sa.Column("username", sqlmodel.AutoString(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
        schema=SCHEMA,
    )
    op.create_index("ix_refresh_token_family", "refresh_token", ["family"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("ix_refresh_token_family", table_name="refresh_token", schema=SCHEMA)
    op.drop_table("refresh_token", schema=SCHEMA)
    op.drop_table("api_key", schema=SCHEMA)
    op.drop_table("app_user", schema=SCHEMA)
