"""PostgreSQL ``sslmode`` reaches libpq unchanged from the database URL or conninfo: ``require``
against a server without TLS is refused (by libpq, naming SSL), ``disable`` connects."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.exc import OperationalError

from control.store import ConfigStore

pytestmark = pytest.mark.integration


def test_sslmode_in_the_dsn_is_passed_through(db: str) -> None:
    assert "sslmode" not in conninfo_to_dict(db)
    required = ConfigStore(make_conninfo(db, sslmode="require"))
    try:
        with pytest.raises(OperationalError, match="server does not support SSL, but SSL was required"):
            required.migrate()
    finally:
        required.close()
    plain = ConfigStore(make_conninfo(db, sslmode="disable"))
    try:
        plain.migrate()
        assert plain.list_flows() == []
    finally:
        plain.close()
