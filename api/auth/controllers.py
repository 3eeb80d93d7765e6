"""Log-in, refresh, log-out, me, WebSocket tickets; users, API keys and the audit log (admin).

Log-in answers the tokens in the body (scripts) and as cookies (the UI): ``nexus_access``
(HttpOnly, path /), ``nexus_refresh`` (HttpOnly, path /api/v1/auth), ``nexus_csrf`` (readable by
the page, sent back as ``X-CSRF-Token``); all SameSite=Strict, Secure when the request came over
HTTPS. A wrong password and an unknown user get the same 401 (and cost the same time).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.params import JSONBody, PathParameter, QueryParameter

from api.auth.guard import (
    ACCESS_COOKIE,
    CSRF_COOKIE,
    CSRF_HEADER,
    REFRESH_COOKIE,
    AuthState,
    Principal,
    auth_of,
    client_address,
)
from api.auth.permissions import permissions_of
from api.auth.schemas import (
    AuditOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    LoginIn,
    MeOut,
    RefreshIn,
    TicketOut,
    TokensOut,
    UserCreate,
    UserOut,
    UserRef,
    UserUpdate,
)
from api.auth.tokens import TICKET_TTL_S
from api.errors import problems
from control.accounts import REFRESH_TTL, RefreshGrant
from control.audit import MAX_QUERY
from control.errors import InvalidError

AUTH_PATH = "/api/v1/auth"
BAD_CREDENTIALS = "invalid user name or password"


def _principal(request: Request[Any, Any, Any]) -> Principal:
    user = request.scope.get("user")
    if not isinstance(user, Principal):  # the guard sets it on every non-public route
        raise NotAuthorizedException("authentication required")
    return user


def _record(request: Request[Any, Any, Any], action: str, actor: str, **kw: Any) -> None:
    auth_of(request.app).audit.record(action, actor=actor, source=client_address(request), **kw)


def _cookies(
    request: Request[Any, Any, Any], auth: AuthState, access: str, grant: RefreshGrant
) -> list[Cookie]:
    secure = request.url.scheme == "https"
    common: dict[str, Any] = {"secure": secure, "samesite": "strict"}
    refresh_age = int(REFRESH_TTL.total_seconds())
    return [
        Cookie(key=ACCESS_COOKIE, value=access, path="/", httponly=True, max_age=auth.tokens.ttl_s, **common),
        Cookie(
            key=REFRESH_COOKIE,
            value=grant.token,
            path=AUTH_PATH,
            httponly=True,
            max_age=refresh_age,
            **common,
        ),
        Cookie(
            key=CSRF_COOKIE,
            value=auth.tokens.csrf_token(grant.family),
            path="/",
            httponly=False,
            max_age=refresh_age,
            **common,
        ),
    ]


def _tokens(request: Request[Any, Any, Any], auth: AuthState, grant: RefreshGrant) -> Response[TokensOut]:
    access = auth.tokens.access_token(grant.user.username, grant.family)
    body = TokensOut(
        user=UserRef(username=grant.user.username, role=grant.user.role),  # type: ignore[arg-type]
        access_token=access,
        refresh_token=grant.token,
        expires_in=auth.tokens.ttl_s,
        csrf_token=auth.tokens.csrf_token(grant.family),
    )
    return Response(
        body, cookies=_cookies(request, auth, access, grant), headers={"Cache-Control": "no-store"}
    )


class AuthController(Controller):
    path = AUTH_PATH
    tags = ["auth"]

    @post(
        "/login",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "public"},
        responses=problems(401, 429),
    )
    def login(self, request: Request[Any, Any, Any], data: JSONBody[LoginIn]) -> Response[TokensOut]:
        """Log in with a user name and password: tokens in the body and as cookies."""
        auth = auth_of(request.app)
        address = client_address(request)
        name = data.username.strip()
        wait = auth.limiter.retry_after(name, address)
        if wait is not None:
            _record(request, "auth.login_failed", name, detail={"reason": "rate limited"}, outcome="denied")
            raise TooManyRequestsException(
                "too many failed log-ins; try later", headers={"Retry-After": str(wait)}
            )
        user = auth.accounts.authenticate(name, data.password)
        if user is None:
            auth.limiter.failed(name, address)
            _record(
                request, "auth.login_failed", name, detail={"reason": "bad credentials"}, outcome="denied"
            )
            raise NotAuthorizedException(BAD_CREDENTIALS)
        auth.limiter.succeeded(name)
        grant = auth.accounts.start_session(user)
        _record(request, "auth.login", user.username, detail={"role": user.role})
        return _tokens(request, auth, grant)

    @post(
        "/refresh",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "public"},
        responses=problems(401, 403),
    )
    def refresh(
        self, request: Request[Any, Any, Any], data: JSONBody[RefreshIn | None] = None
    ) -> Response[TokensOut]:
        """Trade a refresh token (body or `nexus_refresh` cookie) for new tokens; the old one is spent.
        A spent token presented again revokes its whole session."""
        auth = auth_of(request.app)
        token = data.refresh_token if data is not None else None
        if token is None:
            token = request.cookies.get(REFRESH_COOKIE)
            if token is None:
                raise NotAuthorizedException(
                    "no refresh token (body `refresh_token` or the nexus_refresh cookie)"
                )
            csrf = request.cookies.get(CSRF_COOKIE)
            if not csrf or request.headers.get(CSRF_HEADER) != csrf:
                raise PermissionDeniedException(
                    "missing or wrong X-CSRF-Token header (required with cookies)"
                )
        grant = auth.accounts.rotate(token)
        if grant is None:
            _record(
                request,
                "auth.login_failed",
                "?",
                detail={"reason": "refresh token invalid, spent or revoked"},
                outcome="denied",
            )
            raise NotAuthorizedException("invalid, expired or revoked refresh token")
        return _tokens(request, auth, grant)

    @post(
        "/logout",
        status_code=204,
        sync_to_thread=True,
        opt={"permission": "auth:self"},
        responses=problems(401),
    )
    def logout(self, request: Request[Any, Any, Any]) -> Response[None]:
        """End the session: its refresh tokens are revoked (access tokens of it stop working) and the cookies cleared."""
        principal = _principal(request)
        if principal.session is not None:
            auth_of(request.app).accounts.revoke_family(principal.session)
        response: Response[None] = Response(None, status_code=204)
        response.delete_cookie(ACCESS_COOKIE, path="/")
        response.delete_cookie(REFRESH_COOKIE, path=AUTH_PATH)
        response.delete_cookie(CSRF_COOKIE, path="/")
        return response

    @get("/me", sync_to_thread=False, opt={"permission": "auth:self"}, responses=problems(401))
    def me(self, request: Request[Any, Any, Any]) -> MeOut:
        """Who is calling, with the role's permissions (the UI hides what the user may not do)."""
        p = _principal(request)
        return MeOut(username=p.username, role=p.role, permissions=permissions_of(p.role))  # type: ignore[arg-type]

    @post(
        "/ws-ticket",
        status_code=200,
        sync_to_thread=False,
        opt={"permission": "auth:self"},
        responses=problems(401),
    )
    def ws_ticket(self, request: Request[Any, Any, Any]) -> TicketOut:
        """A one-use ticket for the WebSocket (`/api/v1/ws?ticket=...`), valid 30 s."""
        p = _principal(request)
        if p.session is None:
            raise InvalidError(
                "tickets are for user sessions",
                [("", "an API key connects with the X-API-Key header instead")],
            )
        return TicketOut(
            ticket=auth_of(request.app).tokens.ticket(p.username, p.session), expires_in=TICKET_TTL_S
        )


Username = Annotated[str, PathParameter(max_length=64)]


class UsersController(Controller):
    path = "/api/v1/users"
    tags = ["users"]

    @get("", sync_to_thread=True, opt={"permission": "users:admin"}, responses=problems(401, 403))
    def list_users(self, request: Request[Any, Any, Any]) -> list[UserOut]:
        return [UserOut.of(u) for u in auth_of(request.app).accounts.list_users()]

    @post("", sync_to_thread=True, opt={"permission": "users:admin"}, responses=problems(401, 403, 409))
    def create_user(self, request: Request[Any, Any, Any], data: JSONBody[UserCreate]) -> Response[UserOut]:
        user = auth_of(request.app).accounts.create_user(data.username, data.password, data.role)
        _record(
            request,
            "user.create",
            _principal(request).username,
            target=user.username,
            detail={"role": user.role},
        )
        return Response(UserOut.of(user), status_code=201)

    @patch(
        "/{username:str}",
        sync_to_thread=True,
        opt={"permission": "users:admin"},
        responses=problems(401, 403, 404, 409),
    )
    def update_user(
        self, request: Request[Any, Any, Any], username: Username, data: JSONBody[UserUpdate]
    ) -> UserOut:
        accounts = auth_of(request.app).accounts
        before = accounts.get_user(username)
        user = accounts.update_user(username, role=data.role, password=data.password)
        detail: dict[str, Any] = {"password_changed": data.password is not None}
        if before is not None and before.role != user.role:
            detail["changes"] = {"role": {"before": before.role, "after": user.role}}
        _record(request, "user.update", _principal(request).username, target=username, detail=detail)
        return UserOut.of(user)

    @delete(
        "/{username:str}",
        sync_to_thread=True,
        opt={"permission": "users:admin"},
        responses=problems(401, 403, 404, 409),
    )
    def delete_user(self, request: Request[Any, Any, Any], username: Username) -> None:
        auth_of(request.app).accounts.delete_user(username)
        _record(request, "user.delete", _principal(request).username, target=username)


class KeysController(Controller):
    path = "/api/v1/keys"
    tags = ["keys"]

    @get("", sync_to_thread=True, opt={"permission": "keys:admin"}, responses=problems(401, 403))
    def list_keys(self, request: Request[Any, Any, Any]) -> list[KeyOut]:
        return [KeyOut.of(k) for k in auth_of(request.app).accounts.list_keys()]

    @post("", sync_to_thread=True, opt={"permission": "keys:admin"}, responses=problems(401, 403))
    def create_key(self, request: Request[Any, Any, Any], data: JSONBody[KeyCreate]) -> Response[KeyCreated]:
        """A new API key; the answer holds the key itself, the only time it is shown."""
        actor = _principal(request).username
        info, key = auth_of(request.app).accounts.create_key(
            data.name, data.role, created_by=actor, expires_at=data.expires_at
        )
        _record(request, "key.create", actor, target=info.id, detail={"name": info.name, "role": info.role})
        return Response(
            KeyCreated(**KeyOut.of(info).model_dump(), key=key),
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    @delete(
        "/{key_id:str}",
        sync_to_thread=True,
        opt={"permission": "keys:admin"},
        responses=problems(401, 403, 404),
    )
    def revoke_key(
        self, request: Request[Any, Any, Any], key_id: Annotated[str, PathParameter(max_length=64)]
    ) -> None:
        """Revoke a key (it stays listed, with its revocation time)."""
        info = auth_of(request.app).accounts.revoke_key(key_id)
        _record(
            request, "key.revoke", _principal(request).username, target=info.id, detail={"name": info.name}
        )


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get("", sync_to_thread=True, opt={"permission": "audit:read"}, responses=problems(401, 403))
    def query(  # noqa: PLR0917 - Litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        actor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        action: Annotated[
            str | None, QueryParameter(max_length=64, description="exact, or a prefix ending in `*`")
        ] = None,
        target: Annotated[str | None, QueryParameter(max_length=200)] = None,
        since: Annotated[datetime | None, QueryParameter(description="inclusive, with timezone")] = None,
        until: Annotated[datetime | None, QueryParameter(description="inclusive, with timezone")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_QUERY)] = 100,
    ) -> list[AuditOut]:
        """Audit events, newest first, filtered by actor, action, target and time (inclusive, with timezone)."""
        events = auth_of(request.app).audit.query(
            actor=actor, action=action, target=target, since=since, until=until, limit=limit
        )
        return [AuditOut.of(e) for e in events]
