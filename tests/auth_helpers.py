"""Authentication for tests: one user per role, and headers that log in as one of them.

Use in a test module::

    from tests.auth_helpers import ROLES, login, make_users

    @pytest.fixture
    def client(store, mqtt_url):
        app = create_app(Settings(mqtt_url=mqtt_url), store=store)
        make_users(store)
        with TestClient(app=app) as c:
            c.headers.update(login(c, "admin"))   # every request as admin
            yield c

``login(client, role)`` logs in through the real ``POST /api/v1/auth/login`` and answers the
``Authorization: Bearer`` header (no cookies: the client's cookie jar is cleared, so a test sees
exactly the credentials it sends). The ``users`` fixture does ``make_users`` on the test's ``store``.
"""

from __future__ import annotations

from typing import Any

import pytest

from control.accounts import ROLES, Accounts
from control.store import ConfigStore

__all__ = ["PASSWORD", "ROLES", "login", "make_users", "password_of", "prepare", "users"]

PASSWORD = "test-password-{role}-0123"
"""Each role's test user is named after the role; its password is this with the role filled in."""


def password_of(role: str) -> str:
    return PASSWORD.format(role=role)


def make_users(store: ConfigStore) -> dict[str, str]:
    """Create the users ``viewer``, ``operator``, ``engineer``, ``admin`` (each with that role) unless
    they exist; answers role -> password."""
    accounts = Accounts(store.engine)
    for role in ROLES:
        if accounts.get_user(role) is None:
            accounts.create_user(role, password_of(role), role)
    return {role: password_of(role) for role in ROLES}


def prepare(database_url: str) -> dict[str, str]:
    """Migrate the config schema of ``database_url`` and create the role users there (for an app
    built without a store, e.g. the historian API on ``Settings(database_url=...)``)."""
    store = ConfigStore(database_url)
    try:
        store.migrate()
        return make_users(store)
    finally:
        store.close()


@pytest.fixture
def users(store: ConfigStore) -> dict[str, str]:
    """One user per role in the test's ``store`` (a fixture of the using module)."""
    return make_users(store)


def login(client: Any, role: str) -> dict[str, str]:
    """Log in as the role's test user: the bearer header for it."""
    r = client.post("/api/v1/auth/login", json={"username": role, "password": password_of(role)})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
