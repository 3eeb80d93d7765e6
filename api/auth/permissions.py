"""Who may do what: the roles, each permission's minimal role, and the check (CONTRACT.md).

Roles are ordered; a role has every permission of the ones before it. ``public`` needs no
authentication at all. A route names its permission in ``opt={"permission": ...}``; a route without
one is refused (the app does not start, see :func:`api.auth.guard.check_routes`).

>>> allowed("operator", "flows:read"), allowed("operator", "flows:deploy"), allowed(None, "public")
(True, False, True)
>>> permissions_of("viewer")
['auth:self', 'flows:read', 'historian:read', 'live:read', 'metrics:read']
"""

from __future__ import annotations

from control.accounts import ROLES

__all__ = ["PERMISSIONS", "PUBLIC", "ROLES", "allowed", "permissions_of"]

PUBLIC = "public"

PERMISSIONS: dict[str, str] = {
    "flows:read": "viewer",
    "historian:read": "viewer",
    "live:read": "viewer",
    "metrics:read": "viewer",
    "auth:self": "viewer",
    "tags:write_value": "operator",
    "alerts:ack": "operator",
    "flows:operate": "operator",
    "flows:write": "engineer",
    "flows:deploy": "engineer",
    "users:admin": "admin",
    "keys:admin": "admin",
    "settings:admin": "admin",
    "audit:read": "admin",
}
"""Permission -> the least role that has it."""


def allowed(role: str | None, permission: str) -> bool:
    """Whether ``role`` (``None``: anonymous) has ``permission``; unknown names are never allowed."""
    if permission == PUBLIC:
        return True
    if role not in ROLES or permission not in PERMISSIONS:
        return False
    return ROLES.index(role) >= ROLES.index(PERMISSIONS[permission])


def permissions_of(role: str) -> list[str]:
    """Every permission ``role`` has, sorted (``GET /api/v1/auth/me`` answers it)."""
    return sorted(p for p in PERMISSIONS if allowed(role, p))
