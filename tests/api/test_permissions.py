"""Every route declares a known permission, and every route answers every role (and anonymous) as
the permission matrix says: 401 without credentials, 403 for a role below the permission (audited),
something else for a role that has it. Routes come from the app's own route table, so a new route
is covered the day it is added."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from litestar import Litestar, get
from litestar.handlers import HTTPRouteHandler
from litestar.testing import TestClient

from api.app import create_app
from api.auth.guard import auth_of, check_routes
from api.auth.permissions import PERMISSIONS, PUBLIC, ROLES, allowed
from control.accounts import Accounts
from control.audit import AuditLog
from control.store import ConfigStore
from core.settings import Settings
from tests.auth_helpers import make_users

pytestmark = pytest.mark.integration

PARAM = re.compile(r"\{(\w+):(\w+)\}")
VALUES = {"int": "1", "str": "x"}


@pytest.fixture
def store(db: str) -> Iterator[ConfigStore]:
    s = ConfigStore(db)
    s.migrate()
    make_users(s)
    yield s
    s.close()


@pytest.fixture
def app(store: ConfigStore, db: str) -> Litestar:
    return create_app(Settings(database_url=db), store=store)  # the historian routes read it too


def http_routes(app: Litestar) -> list[tuple[str, str, str]]:
    """``(method, concrete path, permission)`` of every HTTP route (path parameters filled in)."""
    out = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or handler.http_methods == {"OPTIONS"}:
                continue
            path = PARAM.sub(lambda m: VALUES.get(m.group(2), "x"), route.path)
            for method in sorted(handler.http_methods):
                out.append((method, path, handler.opt["permission"]))
    return out


def session_headers(app: Litestar, store: ConfigStore, role: str) -> dict[str, str]:
    """A fresh session for the role's user per request (a route like log-out ends only its own)."""
    user = Accounts(store.engine).get_user(role)
    assert user is not None
    grant = Accounts(store.engine).start_session(user)
    return {"Authorization": f"Bearer {auth_of(app).tokens.access_token(role, grant.family)}"}


def test_every_route_declares_a_known_permission(app: Litestar) -> None:
    missing = [
        f"{sorted(h.http_methods) if isinstance(h, HTTPRouteHandler) else 'ws'} {route.path}"
        for route in app.routes
        for h in getattr(route, "route_handlers", [])
        if h.opt.get("permission") not in (*PERMISSIONS, PUBLIC)
        and not (isinstance(h, HTTPRouteHandler) and h.http_methods == {"OPTIONS"})
    ]
    assert missing == []


def test_an_app_with_a_route_without_a_permission_does_not_start() -> None:
    @get("/forgotten", sync_to_thread=False)
    def forgotten() -> str:
        return "x"

    @get("/typo", sync_to_thread=False, opt={"permission": "flows:reed"})
    def typo() -> str:
        return "x"

    with pytest.raises(RuntimeError, match=r"/forgotten \(None\).*/typo \('flows:reed'\)"):
        check_routes(Litestar([forgotten, typo]))


@pytest.mark.timeout(1200)
def test_every_route_as_every_role_and_anonymously(app: Litestar, store: ConfigStore) -> None:
    routes = http_routes(app)
    assert len(routes) >= 40, routes
    wrong: list[str] = []
    denied = 0
    public: dict[str, set[int]] = {}
    sessions = {role: session_headers(app, store, role) for role in ROLES}
    with TestClient(app=app) as client:
        for method, path, permission in routes:
            for role in (None, *ROLES):
                headers = {} if role is None else sessions[role]
                if path == "/api/v1/auth/logout" and role is not None:
                    headers = session_headers(app, store, role)  # ends only this session
                client.cookies.clear()
                body = {} if method in ("POST", "PUT", "PATCH") else None
                status = client.request(method, path, headers=headers, json=body).status_code
                if permission == PUBLIC:  # the guard stays out: every caller gets the handler's own answer
                    public.setdefault(f"{method} {path}", set()).add(status)
                    ok = status != 403
                elif role is None:
                    ok = status == 401
                elif allowed(role, permission):
                    ok = status not in (401, 403) and status < 500
                else:
                    ok = status == 403
                    denied += 1
                if not ok:
                    wrong.append(f"{method} {path} ({permission}) as {role or 'anonymous'}: {status}")
    assert wrong == [], "\n".join(wrong)
    assert {route: codes for route, codes in public.items() if len(codes) > 1} == {}
    assert public["GET /health"] == {200} and public["GET /schema/openapi.json"] == {200}
    events = AuditLog(store.engine).query(action="auth.denied", limit=1000)
    assert len(events) == denied  # every refusal is audited, with who and what
    assert all(e.outcome == "denied" and e.target and e.detail["permission"] for e in events)


WRITE = {"POST", "PUT", "PATCH", "DELETE"}


def test_privilege_escalation_attempts_are_403_and_audited(app: Litestar, store: ConfigStore) -> None:
    """A viewer tries every write route, an engineer user and key admin, an operator deploys."""
    routes = http_routes(app)
    # every route that writes (a POST that only reads, like validate, is a viewer's right)
    attempts = [("viewer", m, p) for m, p, perm in routes if m in WRITE and not allowed("viewer", perm)]
    attempts += [("engineer", m, p) for m, p, perm in routes if perm in ("users:admin", "keys:admin")]
    attempts += [("operator", m, p) for m, p, perm in routes if perm == "flows:deploy"]
    assert len(attempts) >= 30
    sessions = {role: session_headers(app, store, role) for role in ROLES}
    with TestClient(app=app) as client:
        for role, method, path in attempts:
            r = client.request(method, path, headers=sessions[role], json={})
            assert r.status_code == 403, f"{role} {method} {path}: {r.status_code} {r.text}"
    events = AuditLog(store.engine).query(action="auth.denied", limit=1000)
    got = sorted((e.actor, e.target) for e in events)
    assert got == sorted((role, f"{method} {path}") for role, method, path in attempts)
