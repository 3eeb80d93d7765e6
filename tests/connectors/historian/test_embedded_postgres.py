"""The embedded PostgreSQL: first start (initdb), stop, restart in the same folder, reuse, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from nexus.embedded import EmbeddedPostgres, EmbeddedServiceError, free_port

pytestmark = pytest.mark.integration


def test_start_stop_restart_reuses_folder(tmp_path: Path) -> None:
    port = free_port()
    pg = EmbeddedPostgres(tmp_path, port=port)
    assert pg.url == f"postgresql://postgres@127.0.0.1:{port}/nexus"
    with pg:
        pg.start()  # idempotent
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        # a second handle on the same running folder reuses the server
        other = EmbeddedPostgres(tmp_path, port=port)
        other.start()
        assert other.running
    assert not pg.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.url, connect_timeout=2)
    # a new port: the folder is reused (no initdb), data kept
    pg2 = EmbeddedPostgres(tmp_path, port=free_port())
    with pg2:
        with psycopg.connect(pg2.url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
        # a server still running with another port is restarted on ours
        pg3 = EmbeddedPostgres(tmp_path, port=free_port())
        pg3.start()
        with psycopg.connect(pg3.url) as conn3:
            assert conn3.execute("SELECT x FROM kept").fetchone() == (42,)
        pg3.stop()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmbeddedServiceError, match=f"port {port} .* in use"):
            EmbeddedPostgres(tmp_path, port=port).start()
