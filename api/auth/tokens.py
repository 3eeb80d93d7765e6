"""Access tokens (short-lived HS256 JWTs, PyJWT) and one-use WebSocket tickets.

An access token names its user (``sub``) and its session (``sid``, the refresh-token family); the
role is *not* trusted from the token but read from the database on each request, so a role change,
a deleted user or a log-out takes effect at once. Decoding accepts exactly ``HS256`` (so ``alg:
none`` and RS/HS confusion are refused by PyJWT) and requires ``exp``, ``iat``, ``sub``, ``sid``
and our issuer and type.

The signing key is the setting ``auth_secret`` (``NEXUS_AUTH_SECRET``, at least 32 characters;
several API processes behind one address must share it). Unset, each API process makes a random
one: after a restart access tokens are refused and clients refresh (refresh tokens live in the
database, so sessions survive).

The CSRF token of a cookie session is derived from the session (HMAC of ``sid``), so a cookie
planted by someone else cannot carry a matching one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

ISSUER = "nexus-edge"
ALGORITHM = "HS256"
TICKET_TTL_S = 30
MAX_TICKETS = 10_000


@dataclass(frozen=True, slots=True)
class AccessClaims:
    username: str
    session: str
    expires_at: float


class TokenIssuer:
    """Makes and checks access tokens, CSRF tokens and WebSocket tickets (``clock`` is injectable)."""

    def __init__(
        self, secret: str | None, *, ttl_s: int = 900, clock: Callable[[], float] = time.time
    ) -> None:
        if secret is not None and len(secret) < 32:
            raise ValueError("auth_secret (NEXUS_AUTH_SECRET) must be at least 32 characters")
        self._key = (secret or secrets.token_urlsafe(48)).encode()
        self.ttl_s = ttl_s
        self._clock = clock
        self._tickets: dict[str, tuple[str, str, float]] = {}

    def access_token(self, username: str, session: str) -> str:
        now = int(self._clock())
        claims = {
            "iss": ISSUER,
            "typ": "access",
            "sub": username,
            "sid": session,
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def check_access(self, token: str) -> AccessClaims | None:
        """The claims of a valid token, else ``None`` (bad signature, algorithm, expiry or shape)."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                # expiry is checked below against the injected clock (PyJWT would read the wall clock)
                options={
                    "require": ["exp", "iat", "sub", "sid", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            return None
        if (
            claims.get("typ") != "access"
            or not isinstance(claims["exp"], int)
            or claims["exp"] <= self._clock()
        ):
            return None
        sub, sid = claims["sub"], claims["sid"]
        if not isinstance(sub, str) or not isinstance(sid, str):
            return None
        return AccessClaims(sub, sid, float(claims["exp"]))

    def csrf_token(self, session: str) -> str:
        return hmac.new(self._key, f"csrf:{session}".encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: str, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.csrf_token(session), presented)

    # -- WebSocket tickets: in this process's memory, one use, 30 s ---------------------------------

    def ticket(self, username: str, session: str) -> str:
        now = self._clock()
        if len(self._tickets) >= MAX_TICKETS:
            self._tickets = {t: v for t, v in self._tickets.items() if v[2] > now}
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (username, session, now + TICKET_TTL_S)
        return ticket

    def redeem(self, ticket: str) -> tuple[str, str] | None:
        """``(username, session)`` of a ticket not used before and not older than 30 s."""
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[2] <= self._clock():
            return None
        return entry[0], entry[1]
