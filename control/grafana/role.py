"""The read-only database role Grafana connects as (``nexus_grafana`` by default).

Grafana runs whatever SQL a dashboard editor types, so its role may only read the historian's tables
in ``public`` (points, tags, aggregates, alerts, OEE) — never the config store (``nexus_config``: users,
password hashes, API keys, audit) and never write. ``SELECT`` on the tables that exist now, plus
default privileges so tables a flow creates later (a new ``nexus_agg_5m``, a new partition) are
readable too; every session of the role is read-only, with a statement timeout so a wide dashboard
cannot tie up the database.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

GRAFANA_ROLE = "nexus_grafana"
HISTORIAN_SCHEMA = "public"
STATEMENT_TIMEOUT = "30s"


def ensure_readonly_role(
    conn: psycopg.Connection,
    password: str,
    *,
    role: str = GRAFANA_ROLE,
    schema: str = HISTORIAN_SCHEMA,
    statement_timeout: str = STATEMENT_TIMEOUT,
) -> None:
    """Create (or update) ``role`` with ``password``: LOGIN, SELECT on ``schema`` only, read-only sessions.

    Idempotent. Run it as the role that owns (and later creates) the historian tables, so the default
    privileges cover the tables that role creates from now on.
    """
    if not password:
        raise ValueError("the Grafana database role needs a password (NEXUS_GRAFANA_DB_PASSWORD)")
    ident = sql.Identifier(role)
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(
                "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT PASSWORD {}"
            ).format(sql.SQL(verb), ident, sql.Literal(password))
        )
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident))
        conn.execute(
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(ident, sql.Literal(statement_timeout))
        )
        db = conn.execute("SELECT current_database()").fetchone()
        assert db is not None
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db[0]), ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema), ident)
        )
        conn.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(
                sql.Identifier(schema), ident
            )
        )
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'nexus_config'").fetchone():
            conn.execute(sql.SQL("REVOKE ALL ON SCHEMA nexus_config FROM {}").format(ident))
            conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA nexus_config FROM {}").format(ident))
