"""Alembic environment of the config store: runs on the connection ``ConfigStore.migrate`` hands over.

The version table lives in the store's own schema, so other Alembic users of the same database
(and the historian's tables) are never touched.
"""

from __future__ import annotations

from alembic import context

from control.store import SCHEMA, include_name, load_models, metadata

load_models()

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the store runs these migrations
    raise RuntimeError("run the config store migrations through control.store.ConfigStore.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=SCHEMA,
    include_schemas=True,
    include_name=include_name,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
