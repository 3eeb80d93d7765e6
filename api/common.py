"""What every controller needs: the services on ``app.state``, ``If-Match`` and ``ETag``, the author."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException

from control.errors import InvalidError, UnavailableError
from control.store import ConfigStore

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
