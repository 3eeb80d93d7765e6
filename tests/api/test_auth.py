"""Users, log-in, tokens, API keys, CSRF and the WebSocket's authentication, over the real ASGI stack
and a real PostgreSQL (issue 9 items 1-3 and their checks)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from api.app import create_app
from api.auth.tokens import TokenIssuer
from control.audit import AuditLog
from control.store import SCHEMA, ConfigStore
from core.settings import Settings
from tests.auth_helpers import login, make_users, password_of

pytestmark = pytest.mark.integration

SECRET = "a-test-signing-key-that-is-long-enough-0123456789"
LOGIN = "/api/v1/auth/login"


@pytest.fixture
def store(db: str) -> Iterator[ConfigStore]:
    s = ConfigStore(db)
    s.migrate()
    make_users(s)
    yield s
    s.close()


@pytest.fixture
def client(store: ConfigStore) -> Iterator[TestClient[Any]]:
    app = create_app(Settings(auth_secret=SECRET), store=store)
    with TestClient(app=app) as c:
        yield c


def audit_events(store: ConfigStore, action: str) -> list[Any]:
    return AuditLog(store.engine).query(action=action, limit=1000)


def test_login_answers_tokens_and_strict_http_only_cookies(
    client: TestClient[Any], store: ConfigStore
) -> None:
    r = client.post(LOGIN, json={"username": "operator", "password": password_of("operator")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == {"username": "operator", "role": "operator"}
    assert body["expires_in"] == 900 and body["access_token"] and body["refresh_token"] and body["csrf_token"]
    cookies = {c.split("=", 1)[0]: c for c in r.headers.get_list("set-cookie")}
    assert "HttpOnly" in cookies["nexus_access"] and "Path=/;" in cookies["nexus_access"]
    assert "HttpOnly" in cookies["nexus_refresh"] and "Path=/api/v1/auth" in cookies["nexus_refresh"]
    assert "HttpOnly" not in cookies["nexus_csrf"]
    assert all("SameSite=strict" in c and "Secure" not in c for c in cookies.values())  # plain HTTP here
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}).json()
    assert me["username"] == "operator" and "flows:operate" in me["permissions"]
    assert "flows:deploy" not in me["permissions"]
    (event,) = audit_events(store, "auth.login")
    assert (event.actor, event.source) == ("operator", "testclient")


def test_failures_do_not_tell_whether_the_user_exists(client: TestClient[Any], store: ConfigStore) -> None:
    wrong = client.post(LOGIN, json={"username": "viewer", "password": "not the password"})
    unknown = client.post(LOGIN, json={"username": "nobody", "password": "not the password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == {**unknown.json(), "instance": wrong.json()["instance"]}
    assert wrong.json()["detail"] == "invalid user name or password"
    assert {e.actor for e in audit_events(store, "auth.login_failed")} == {"viewer", "nobody"}


def test_login_is_rate_limited_per_user_and_per_address(client: TestClient[Any]) -> None:
    for _ in range(5):
        assert client.post(LOGIN, json={"username": "engineer", "password": "wrong-wrong"}).status_code == 401
    r = client.post(LOGIN, json={"username": "engineer", "password": password_of("engineer")})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # even the right password waits
    assert r.headers["content-type"].startswith("application/problem+json")
    for i in range(15):  # per address: 20 failures over any names
        assert client.post(LOGIN, json={"username": f"u{i}", "password": "wrong-wrong"}).status_code == 401
    r = client.post(LOGIN, json={"username": "admin", "password": password_of("admin")})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _get_flows(client: TestClient[Any], token: str) -> int:
    return client.get("/api/v1/flows", headers={"Authorization": f"Bearer {token}"}).status_code


def test_jwt_attacks_are_refused(client: TestClient[Any]) -> None:
    token = login(client, "admin")["Authorization"].removeprefix("Bearer ")
    assert _get_flows(client, token) == 200
    claims = _claims(token)
    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = {
        "alg none": jwt.encode(claims, key="", algorithm="none"),
        "RS256 (algorithm confusion)": jwt.encode(claims, rsa_key, algorithm="RS256"),
        "HS512 with the right key": jwt.encode(claims, SECRET, algorithm="HS512"),
        "another key": jwt.encode(claims, "x" * 48, algorithm="HS256"),
        "expired": jwt.encode({**claims, "iat": now - 1000, "exp": now - 10}, SECRET, algorithm="HS256"),
        "tampered signature": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        "tampered claims": ".".join(
            [
                token.split(".")[0],
                jwt.encode({**claims, "sub": "viewer"}, "k" * 40).split(".")[1],
                token.split(".")[2],
            ]
        ),
        "no session claim": jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"}, SECRET, algorithm="HS256"
        ),
        "not an access token": jwt.encode({**claims, "typ": "refresh"}, SECRET, algorithm="HS256"),
    }
    for what, bad in forged.items():
        assert _get_flows(client, bad) == 401, what
    # the same claims signed properly pass: the refusals above are about what was forged
    assert _get_flows(client, jwt.encode(claims, SECRET, algorithm="HS256")) == 200


def test_token_expiry_with_a_fake_clock() -> None:
    t = [1_000_000.0]
    issuer = TokenIssuer(SECRET, ttl_s=60, clock=lambda: t[0])
    token = issuer.access_token("alice", "fam")
    assert issuer.check_access(token) is not None
    t[0] += 61
    assert issuer.check_access(token) is None
    ticket = issuer.ticket("alice", "fam")
    t[0] += 31
    assert issuer.redeem(ticket) is None
    with pytest.raises(ValueError, match="at least 32"):
        TokenIssuer("short")


def test_refresh_rotates_and_a_reused_token_revokes_the_family(client: TestClient[Any]) -> None:
    first = client.post(LOGIN, json={"username": "viewer", "password": password_of("viewer")}).json()
    client.cookies.clear()
    second = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    second_body = second.json()
    client.cookies.clear()
    assert second_body["refresh_token"] != first["refresh_token"]
    assert _get_flows(client, second_body["access_token"]) == 200
    # the spent token comes back (stolen): refused, and the whole family with it
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).status_code == 401
    )
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": second_body["refresh_token"]}).status_code
        == 401
    )
    assert _get_flows(client, second_body["access_token"]) == 401
    assert _get_flows(client, first["access_token"]) == 401


def test_logout_ends_the_session(client: TestClient[Any]) -> None:
    body = client.post(LOGIN, json={"username": "viewer", "password": password_of("viewer")}).json()
    client.cookies.clear()
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    r = client.post("/api/v1/auth/logout", headers=headers)
    assert r.status_code == 204
    assert any(c.startswith("nexus_access=") for c in r.headers.get_list("set-cookie"))  # cleared
    assert client.get("/api/v1/flows", headers=headers).status_code == 401
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]}).status_code == 401
    )


def test_csrf_is_required_on_unsafe_cookie_requests(client: TestClient[Any], store: ConfigStore) -> None:
    r = client.post(LOGIN, json={"username": "admin", "password": password_of("admin")})
    csrf = r.json()["csrf_token"]
    assert client.cookies.get("nexus_csrf") == csrf
    assert client.get("/api/v1/users").status_code == 200  # safe: the cookie alone
    new = {"username": "carol", "password": "long enough pass", "role": "viewer"}
    denied = client.post("/api/v1/users", json=new)
    assert denied.status_code == 403 and "CSRF" in denied.json()["detail"]
    assert client.post("/api/v1/users", json=new, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert client.post("/api/v1/users", json=new, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert [e.detail["via"] for e in audit_events(store, "auth.denied")] == ["cookie", "cookie"]
    # refresh by cookie needs the header too; the answer sets new cookies
    assert client.post("/api/v1/auth/refresh").status_code == 403
    r = client.post("/api/v1/auth/refresh", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    # a bearer token needs no CSRF header
    bearer = login(client, "admin")
    assert client.delete("/api/v1/users/carol", headers=bearer).status_code == 204


def test_api_keys_shown_once_hashed_revocable_and_expiring(
    client: TestClient[Any], store: ConfigStore, db: str
) -> None:
    admin = login(client, "admin")
    r = client.post("/api/v1/keys", json={"name": "exporter", "role": "viewer"}, headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("nxk_") and created["last_used_at"] is None
    listed = client.get("/api/v1/keys", headers=admin).json()
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    with psycopg.connect(db) as conn:  # only a hash is stored
        (stored,) = conn.execute(f"SELECT key_hash FROM {SCHEMA}.api_key").fetchone()  # type: ignore[misc]
    assert key not in stored and len(stored) == 64
    assert client.get("/api/v1/flows", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/api/v1/flows", headers={"X-API-Key": key}).status_code == 200
    assert client.post("/api/v1/flows", json={"spec": {}}, headers={"X-API-Key": key}).status_code == 403
    assert client.get("/api/v1/keys", headers=admin).json()[0]["last_used_at"] is not None
    assert (
        client.get(
            "/api/v1/flows", headers={"X-API-Key": key[:-1] + ("A" if key[-1] != "A" else "B")}
        ).status_code
        == 401
    )
    assert client.delete(f"/api/v1/keys/{created['id']}", headers=admin).status_code == 204
    assert client.get("/api/v1/flows", headers={"X-API-Key": key}).status_code == 401
    assert client.get("/api/v1/keys", headers=admin).json()[0]["revoked_at"] is not None

    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    expiring = client.post(
        "/api/v1/keys", json={"name": "temp", "role": "operator", "expires_at": soon}, headers=admin
    ).json()
    assert client.get("/api/v1/flows", headers={"X-API-Key": expiring["key"]}).status_code == 200
    with psycopg.connect(db) as conn:
        conn.execute(
            f"UPDATE {SCHEMA}.api_key SET expires_at = now() - interval '1 second' WHERE id = %s",
            (expiring["id"],),
        )
    assert client.get("/api/v1/flows", headers={"X-API-Key": expiring["key"]}).status_code == 401
    assert {e.action for e in AuditLog(store.engine).query(action="key.*")} == {"key.create", "key.revoke"}


def test_a_key_expiring_beyond_year_9999_in_utc_is_refused_and_the_list_still_reads(
    client: TestClient[Any],
) -> None:
    """9999-12-31T23:00-23:59 is year 10000 in UTC: stored, it would break every later list of keys."""
    admin = login(client, "admin")
    far = {"name": "far", "role": "viewer", "expires_at": "9999-12-31T23:00:00-23:59"}
    r = client.post("/api/v1/keys", json=far, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["path"] == "expires_at"
    r = client.get("/api/v1/keys", headers=admin)
    assert r.status_code == 200 and r.json() == []


def test_users_admin_and_the_last_admin_stays(client: TestClient[Any], store: ConfigStore) -> None:
    admin = login(client, "admin")
    assert [u["username"] for u in client.get("/api/v1/users", headers=admin).json()] == [
        "admin", "engineer", "operator", "viewer"
    ]  # fmt: skip
    r = client.patch("/api/v1/users/viewer", json={"role": "operator"}, headers=admin)
    assert r.status_code == 200 and r.json()["role"] == "operator"
    (event,) = audit_events(store, "user.update")
    assert event.detail["changes"] == {"role": {"before": "viewer", "after": "operator"}}
    assert client.patch("/api/v1/users/admin", json={"role": "viewer"}, headers=admin).status_code == 409
    assert client.delete("/api/v1/users/admin", headers=admin).status_code == 409
    bad = client.post(
        "/api/v1/users", json={"username": "x", "password": "short", "role": "viewer"}, headers=admin
    )
    assert bad.status_code == 422
    # a changed password ends the user's sessions
    engineer = login(client, "engineer")
    new = {"password": "a brand new password"}
    assert client.patch("/api/v1/users/engineer", json=new, headers=admin).status_code == 200
    assert client.get("/api/v1/flows", headers=engineer).status_code == 401


def test_websocket_needs_a_cookie_or_a_one_use_ticket(client: TestClient[Any]) -> None:
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/v1/ws") as ws:
        ws.receive_json(timeout=5)
    ticket = client.post("/api/v1/auth/ws-ticket", headers=login(client, "viewer")).json()
    assert ticket["expires_in"] == 30
    with client.websocket_connect(f"/api/v1/ws?ticket={ticket['ticket']}") as ws:
        ws.send_json({"subscribe": ["flows"]})
        assert ws.receive_json(timeout=10)["type"] == "subscribed"
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect(f"/api/v1/ws?ticket={ticket['ticket']}") as ws,
    ):
        ws.receive_json(timeout=5)  # used once already
    client.post(LOGIN, json={"username": "viewer", "password": password_of("viewer")})  # the UI's cookie
    with client.websocket_connect("/api/v1/ws", headers={"Origin": "http://testserver.local"}) as ws:
        ws.send_json({"subscribe": ["flows"]})
        assert ws.receive_json(timeout=10)["type"] == "subscribed"
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/api/v1/ws", headers={"Origin": "https://evil.example"}) as ws,
    ):
        ws.receive_json(timeout=5)  # another site's page riding on the cookie
    token = login(client, "viewer")["Authorization"].removeprefix("Bearer ")
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(f"/api/v1/ws?ticket={token}") as ws:
        ws.receive_json(timeout=5)  # an access token is not a ticket
