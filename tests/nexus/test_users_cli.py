"""``nexus users`` and the first-start admin, against a real PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from control.accounts import Accounts
from control.audit import AuditLog
from control.store import ConfigStore
from core.settings import Settings
from nexus.cli import main
from nexus.users_cli import ensure_admin

pytestmark = pytest.mark.integration


def test_first_start_makes_one_admin_with_a_random_password_in_a_0600_file(
    db: str, tmp_path: Path, capsys: Any
) -> None:
    store = ConfigStore(db)
    try:
        store.migrate()
        settings = Settings(database_url=db, data_dir=tmp_path)
        assert ensure_admin(store, settings)
        printed = capsys.readouterr().out
        file = tmp_path / "admin-password"
        password = file.read_text().strip()
        assert file.stat().st_mode & 0o777 == 0o600 and password in printed
        assert Accounts(store.engine).authenticate("admin", password) is not None
        assert not ensure_admin(store, settings)  # once only
        assert capsys.readouterr().out == ""
    finally:
        store.close()


def test_the_admin_password_from_the_environment_is_used_and_not_printed(
    db: str, tmp_path: Path, capsys: Any
) -> None:
    store = ConfigStore(db)
    try:
        store.migrate()
        assert ensure_admin(store, Settings(data_dir=tmp_path, admin_password="from-the-env-0123"))
        assert "from-the-env-0123" not in capsys.readouterr().out
        assert not (tmp_path / "admin-password").exists()
        assert Accounts(store.engine).authenticate("admin", "from-the-env-0123") is not None
    finally:
        store.close()


def test_users_commands(db: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("NEXUS_DATABASE_URL", db)

    def run(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(["users", *argv])

    assert run("add", "olivia", "--role", "operator", "--password-stdin", stdin="olivias password\n") == 0
    assert run("add", "olivia", "--password-stdin", stdin="olivias password\n") == 1  # exists
    assert "exists already" in capsys.readouterr().err
    assert run("set-role", "olivia", "engineer") == 0
    assert run("set-password", "olivia", "--password-stdin", stdin="a new long password\n") == 0
    assert run("add", "bob", "--password-stdin", stdin="short\n") == 1
    assert "password" in capsys.readouterr().err
    assert run("list") == 0
    listed = capsys.readouterr().out
    assert "olivia" in listed and "engineer" in listed
    store = ConfigStore(db)
    try:
        accounts = Accounts(store.engine)
        assert accounts.authenticate("olivia", "a new long password") is not None
        assert accounts.get_user("olivia").role == "engineer"  # type: ignore[union-attr]
        assert run("delete", "olivia") == 0
        assert accounts.get_user("olivia") is None
        actions = [e.action for e in AuditLog(store.engine).query(actor=None)]
        assert actions == ["user.delete", "user.update", "user.update", "user.create"]
    finally:
        store.close()
