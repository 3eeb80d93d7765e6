"""Authentication and authorisation of every request and WebSocket: one app-level guard.

The guard reads the route's ``opt["permission"]`` (deny by default: a route without one is refused,
and :func:`check_routes` stops the app from starting with such a route), then finds who is calling:

1. ``Authorization: Bearer <access JWT>`` or ``Authorization: Bearer nxk_...`` / ``X-API-Key`` (scripts);
2. on a WebSocket, ``?ticket=`` (one use, 30 s, from ``POST /api/v1/auth/ws-ticket``);
3. the ``nexus_access`` cookie (the UI); unsafe methods must then carry ``X-CSRF-Token``.

Credentials that are presented but wrong are never ignored in favour of others. No identity → 401;
an identity whose role lacks the permission → 403, audited as ``auth.denied``. The caller lands on
``scope["user"]`` as a :class:`Principal` (``api.common.author_of`` reads it).

The client address is the socket's peer (``X-Forwarded-For`` is not trusted: the API binds to
loopback by default; a proxy in front must be the one to rate-limit by address).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import anyio.to_thread
import psycopg
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from sqlalchemy import create_engine

from api.auth.limiter import LoginLimiter
from api.auth.permissions import PERMISSIONS, PUBLIC, allowed
from api.auth.tokens import TokenIssuer
from control.accounts import KEY_PREFIX, Accounts
from control.audit import AuditLog
from control.errors import ControlError, UnavailableError

log = logging.getLogger(__name__)

ACCESS_COOKIE = "nexus_access"
REFRESH_COOKIE = "nexus_refresh"
CSRF_COOKIE = "nexus_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (by token, cookie or ticket) or an API key (``key:<name>``)."""

    username: str
    role: str
    via: Literal["bearer", "cookie", "ticket", "key"]
    session: str | None = None
    key_id: str | None = None


@dataclass
class AuthState:
    """The app's security services (built on first use from ``app.state``; tests may pass their own)."""

    accounts: Accounts
    audit: AuditLog
    tokens: TokenIssuer
    limiter: LoginLimiter


def auth_of(app: Litestar) -> AuthState:
    state = app.state
    existing = getattr(state, "auth", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    store = getattr(state, "store", None)
    settings = state.settings
    engine: Any
    if store is not None:
        engine = store.engine
    elif settings.database_url:  # an API without a config store (the historian alone) still has users
        url = settings.database_url
        engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url), pool_size=2)
    else:
        raise UnavailableError("authentication is unavailable: this API has no database")
    accounts = getattr(state, "accounts", None)
    built = AuthState(
        accounts=accounts or Accounts(engine),
        audit=getattr(state, "audit", None) or AuditLog(engine),
        tokens=TokenIssuer(settings.auth_secret, ttl_s=settings.access_token_ttl_s),
        limiter=LoginLimiter(),
    )
    state.auth = built
    return built


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    client = connection.client
    return client.host if client is not None else "unknown"


async def audit(
    connection: ASGIConnection[Any, Any, Any, Any],
    action: str,
    *,
    actor: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    outcome: str = "ok",
) -> None:
    """Record an audit event from async code (the write runs in a worker thread)."""
    record = partial(
        auth_of(connection.app).audit.record,
        action,
        actor=actor,
        source=client_address(connection),
        target=target,
        detail=detail,
        outcome=outcome,
    )
    await anyio.to_thread.run_sync(record)


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise NotAuthorizedException("the Authorization header must be 'Bearer <token>'")
    return value.strip()


async def _identify(connection: ASGIConnection[Any, Any, Any, Any], auth: AuthState) -> Principal | None:
    """The caller, ``None`` when no credentials came; presented but invalid ones raise 401."""
    token = _bearer(connection)
    key = connection.headers.get("x-api-key")
    if token is not None and token.startswith(KEY_PREFIX):
        key, token = token, None
    if key is not None:
        info = await anyio.to_thread.run_sync(auth.accounts.check_key, key.strip())
        if info is None:
            raise NotAuthorizedException("invalid, revoked or expired API key")
        return Principal(f"key:{info.name}"[:200], info.role, "key", key_id=info.id)
    via: Literal["bearer", "cookie", "ticket"] = "bearer"
    if token is None and connection.scope["type"] == "websocket" and "ticket" in connection.query_params:
        redeemed = auth.tokens.redeem(str(connection.query_params.get("ticket")))
        if redeemed is None:
            raise NotAuthorizedException("invalid, used or expired WebSocket ticket")
        user = await anyio.to_thread.run_sync(auth.accounts.session_user, *redeemed)
        if user is None:
            raise NotAuthorizedException("the session of this ticket has ended")
        return Principal(user.username, user.role, "ticket", session=redeemed[1])
    if token is None:
        token = connection.cookies.get(ACCESS_COOKIE)
        via = "cookie"
    if token is None:
        return None
    claims = auth.tokens.check_access(token)
    if claims is None:
        raise NotAuthorizedException("invalid or expired access token")
    user = await anyio.to_thread.run_sync(auth.accounts.session_user, claims.username, claims.session)
    if user is None:
        raise NotAuthorizedException("the session has ended (logged out or revoked)")
    return Principal(user.username, user.role, via, session=claims.session)


def _is_options(handler: BaseRouteHandler) -> bool:
    return isinstance(handler, HTTPRouteHandler) and handler.http_methods == {"OPTIONS"}


def _unauthorized(detail: str) -> NotAuthorizedException:
    return NotAuthorizedException(detail, headers={"WWW-Authenticate": 'Bearer realm="nexus"'})


async def permission_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Litestar guard on the app: authenticate, check CSRF, check the route's permission."""
    permission = handler.opt.get("permission")
    if permission == PUBLIC or (permission is None and _is_options(handler)):
        return
    method = connection.scope.get("method", "GET")
    target = f"{method} {connection.url.path}"
    if permission is None:  # check_routes refuses such apps; this covers routes added later
        raise PermissionDeniedException("this route declares no permission")
    try:
        auth = auth_of(connection.app)
        principal = await _identify(connection, auth)
    except NotAuthorizedException as exc:
        raise _unauthorized(str(exc.detail)) from None
    except ControlError:
        raise
    if principal is None:
        raise _unauthorized("authentication required: log in or send 'Authorization: Bearer <token>'")
    connection.scope["user"] = principal
    reason = None
    if not allowed(principal.role, permission):
        reason = f"role {principal.role!r} lacks permission {permission!r}"
    elif (
        principal.via == "cookie"
        and method not in SAFE_METHODS
        and principal.session is not None
        and not auth.tokens.check_csrf(principal.session, connection.headers.get(CSRF_HEADER))
    ):
        reason = "missing or wrong X-CSRF-Token header (required with cookie authentication)"
    if reason is not None:
        detail = {"permission": permission, "role": principal.role, "via": principal.via, "reason": reason}
        try:
            await audit(
                connection,
                "auth.denied",
                actor=principal.username,
                target=target,
                detail=detail,
                outcome="denied",
            )
        except UnavailableError:
            log.error("a denied request could not be audited: %s by %s", target, principal.username)
        raise PermissionDeniedException(reason)


def check_routes(app: Litestar) -> None:
    """Refuse an app with a route that names no permission or an unknown one (deny by default)."""
    bad = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            permission = handler.opt.get("permission")
            if permission is None and _is_options(handler):
                continue
            if permission != PUBLIC and permission not in PERMISSIONS:
                bad.append(f"{route.path} ({permission!r})")
    if bad:
        raise RuntimeError(f"routes without a known permission in opt['permission']: {', '.join(bad)}")
