"""``nexus users ...``: API users from the command line, and the first-start ``admin``.

``nexus up`` (and ``nexus demo``) call :func:`ensure_admin` after migrating: with no user at all, an
``admin`` is created with ``NEXUS_ADMIN_PASSWORD`` or, unset, a random password that is printed
once and written to ``<data dir>/admin-password`` (mode 0600). The commands work on the database of
``NEXUS_DATABASE_URL`` (or the embedded one, like ``nexus flows``); changes are audited with the
actor ``cli:<os user>``. Passwords are read from the terminal (or one line of standard input with
``--password-stdin``), never from the command line, where other users could see them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from core.settings import Settings
from nexus.flows_cli import open_store

PASSWORD_FILE = "admin-password"


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (created 0600, never world-readable meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its old mode on O_CREAT


def ensure_admin(store: Any, settings: Settings) -> bool:
    """Create ``admin`` when there is no user yet (see the module docstring); True when it did."""
    from control.accounts import Accounts
    from control.audit import AuditLog
    from control.errors import ConflictError

    accounts = Accounts(store.engine)
    if accounts.count_users() > 0:
        return False
    password = settings.admin_password or secrets.token_urlsafe(18)
    try:
        accounts.create_user("admin", password, "admin")
    except ConflictError:  # another process started at the same moment and made it
        return False
    AuditLog(store.engine).record(
        "user.create", actor="nexus up", source=None, target="admin", detail={"role": "admin"}
    )
    if settings.admin_password:
        print("created user 'admin' with the password from NEXUS_ADMIN_PASSWORD", flush=True)
    else:
        path = settings.data_dir / PASSWORD_FILE
        write_secret_file(path, password)
        print(
            f"created user 'admin' with password {password}\n"
            f"  (shown once; also in {path}, mode 0600 — change it: nexus users set-password admin)",
            flush=True,
        )
    return True


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        from control.errors import InvalidError

        raise InvalidError("the passwords differ", [("password", "type the same password twice")])
    return first


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from control.accounts import Accounts
    from control.audit import AuditLog

    with open_store(settings) as store:
        accounts, audit = Accounts(store.engine), AuditLog(store.engine)
        command = args.users_command
        if command == "list":
            for u in accounts.list_users():
                print(f"{u.username:<32} {u.role:<9} changed {u.updated_at:%Y-%m-%d %H:%M}Z")
            return 0
        if command == "add":
            user = accounts.create_user(args.username, _password(args), args.role)
            audit.record(
                "user.create", actor=_actor(), source="cli", target=user.username, detail={"role": user.role}
            )
            print(f"created {user.username} ({user.role})")
        elif command == "set-role":
            before = accounts.get_user(args.username)
            user = accounts.update_user(args.username, role=args.role)
            change = {"role": {"before": before.role if before else None, "after": user.role}}
            audit.record(
                "user.update", actor=_actor(), source="cli", target=user.username, detail={"changes": change}
            )
            print(f"{user.username} is now {user.role}")
        elif command == "set-password":
            user = accounts.update_user(args.username, password=_password(args))
            detail = {"password_changed": True}
            audit.record("user.update", actor=_actor(), source="cli", target=user.username, detail=detail)
            print(f"password of {user.username} changed; its sessions are ended")
        elif command == "delete":
            accounts.delete_user(args.username)
            audit.record("user.delete", actor=_actor(), source="cli", target=args.username)
            print(f"deleted {args.username}")
    return 0


def run_users_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs a ``users`` subcommand; control-plane errors become one clear line and exit status 1."""
    from control.errors import ControlError, InvalidError

    try:
        return cmd_users(args, settings)
    except ControlError as exc:
        print(f"nexus users {args.users_command}: {exc}", file=sys.stderr)
        if isinstance(exc, InvalidError):
            for path, message in exc.problems:
                print(f"  {path}: {message}" if path else f"  {message}", file=sys.stderr)
        return 1


def add_users_parser(sub: Any) -> None:
    """``nexus users list|add|set-role|set-password|delete``."""
    from control.accounts import ROLES

    p = sub.add_parser(
        "users",
        help="list, add, change and delete API users",
        description="Users of the API (roles: viewer < operator < engineer < admin).",
    )
    p.set_defaults(func=run_users_command)
    usub = p.add_subparsers(dest="users_command", required=True, metavar="SUBCOMMAND")
    usub.add_parser("list", help="list the users and their roles")
    q = usub.add_parser("add", help="add a user (the password is asked for)")
    q.add_argument("username")
    q.add_argument("--role", choices=ROLES, default="viewer")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    q = usub.add_parser("set-role", help="change a user's role")
    q.add_argument("username")
    q.add_argument("role", choices=ROLES)
    q = usub.add_parser("set-password", help="change a user's password (ends the user's sessions)")
    q.add_argument("username")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    q = usub.add_parser("delete", help="delete a user (the last admin cannot be deleted)")
    q.add_argument("username")
