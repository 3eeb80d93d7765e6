"""What every controller needs: the services on ``app.state``, ``If-Match`` and ``ETag``, the author."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException

from control.errors import InvalidError, UnavailableError
from control.store import ConfigStore, VersionInfo

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')


def store_of(request: Request[Any, Any, Any]) -> ConfigStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise UnavailableError("the config store is not configured on this API")
    return store  # type: ignore[no-any-return]


def service(request: Request[Any, Any, Any], name: str) -> Any:
    """An optional service (``supervisor``, ``live``) or ``None``."""
    return getattr(request.app.state, name, None)


def base_version(if_match: str | None) -> int | None:
    """The version an update was based on, from ``If-Match`` (``"3"``, ``W/"3"``, ``3``; ``*`` or none: any)."""
    if if_match is None or if_match.strip() in ("", "*"):
        return None
    m = _ETAG.match(if_match)
    if m is None:
        raise InvalidError(
            "If-Match must carry a version ETag",
            [("header:If-Match", f'expected e.g. "3", got {if_match[:40]!r}')],
        )
    return int(m.group(1))


def etag(number: int) -> dict[str, str]:
    return {"ETag": f'"{number}"'}


def author_of(request: Request[Any, Any, Any]) -> str:
    """Who made a change: the authenticated caller (a user name, or ``key:<name>`` for an API key)."""
    user = request.scope.get("user")
    name = getattr(user, "username", None)
    if isinstance(name, str) and name:
        return name[:200]
    raise NotAuthorizedException("authentication required")


def audit(
    request: Request[Any, Any, Any],
    action: str,
    *,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    outcome: str = "ok",
) -> None:
    """Record what the authenticated caller did in the audit log (see :mod:`control.audit`)."""
    from api.auth.guard import auth_of, client_address

    auth_of(request.app).audit.record(
        action,
        actor=author_of(request),
        source=client_address(request),
        target=target,
        detail=detail,
        outcome=outcome,
    )


def audit_version(request: Request[Any, Any, Any], action: str, v: VersionInfo, target: str) -> None:
    """Audit a change that wrote version ``v``: its number and the diff from the version it was based
    on (field paths, old and new values; secrets masked)."""
    from control.service import diff_versions

    detail: dict[str, Any] = {"version": v.number}
    if v.parent_number is not None:
        detail["from_version"] = v.parent_number
        detail["changes"] = diff_versions(store_of(request), v.flow_id, v.parent_number, v.number)["changes"]
    audit(request, action, target=target, detail=detail)
