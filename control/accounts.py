"""Users, API keys and refresh tokens in PostgreSQL (schema ``nexus_config``), framework-free.

- **Users** have an argon2id password hash (argon2-cffi's defaults) and one role. A log-in with an
  unknown user still verifies the password against a dummy hash, so the answer (and its time) is
  the same whether or not the user exists.
- **API keys** are ``nxk_<id>_<secret>``: 72 random bits of id (the lookup prefix, shown in lists)
  and 256 of secret. Only the SHA-256 of the whole key is stored — a slow hash buys nothing for a
  key with that much entropy, and each request can check it cheaply. Each has a role, an optional
  expiry, a revocation time and a last-used time; the key itself is answered once, at creation.
- **Refresh tokens** are opaque random strings (only their SHA-256 is stored), one row per token,
  grouped in a *family* that starts at a log-in. Using one rotates it: it is marked used and a new
  one of the same family is issued. Presenting a used (or revoked) token again means it was stolen
  or replayed: the whole family is revoked, so neither the thief nor the victim can continue.

Access tokens (short-lived JWTs) are made by :mod:`api.auth`, which is the only place that knows
about HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Column, DateTime, Index, Text, create_engine, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, select

from control.errors import ConflictError, InvalidError, NotFoundError, UnavailableError, aware_utc
from control.store import SCHEMA

__all__ = [
    "KEY_PREFIX",
    "ROLES",
    "Accounts",
    "ApiKeyInfo",
    "RefreshGrant",
    "UserInfo",
    "check_role",
    "check_username",
]

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("viewer", "operator", "engineer", "admin")
"""Ordered, least to most (``api.auth.permissions`` maps permissions onto them)."""
KEY_PREFIX = "nxk_"
_KEY = re.compile(r"^nxk_([0-9a-f]{18})_([A-Za-z0-9_\-]{43})$")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
REFRESH_TTL = timedelta(days=7)


def _now() -> datetime:
    return datetime.now(UTC)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class UserRow(SQLModel, table=True):
    __tablename__ = "app_user"
    __table_args__ = {"schema": SCHEMA}

    username: str = Field(primary_key=True, max_length=64)
    password_hash: str = Field(sa_column=Column(Text, nullable=False))
    role: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_key"
    __table_args__ = {"schema": SCHEMA}

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    key_hash: str = Field(max_length=64)
    role: str = Field(max_length=16)
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class RefreshTokenRow(SQLModel, table=True):
    __tablename__ = "refresh_token"
    __table_args__ = (Index("ix_refresh_token_family", "family"), {"schema": SCHEMA})

    token_hash: str = Field(primary_key=True, max_length=64)
    family: str = Field(max_length=64)
    username: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


@dataclass(frozen=True, slots=True)
class UserInfo:
    username: str
    role: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    name: str
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """A new refresh token (the secret, answered once) and whose it is."""

    token: str
    family: str
    user: UserInfo
    expires_at: datetime


def check_role(role: str, where: str = "role") -> str:
    if role not in ROLES:
        raise InvalidError("unknown role", [(where, f"must be one of {', '.join(ROLES)}, got {role[:40]!r}")])
    return role


def check_username(username: str, where: str = "username") -> str:
    if not _USERNAME.match(username):
        raise InvalidError(
            "invalid user name",
            [(where, "1-64 characters: letters, digits and _ . @ - (starting with a letter or digit)")],
        )
    return username


def _check_password(password: str, where: str = "password") -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidError(
            "unacceptable password", [(where, f"must be {MIN_PASSWORD}..{MAX_PASSWORD} characters long")]
        )


def _user(row: UserRow) -> UserInfo:
    return UserInfo(row.username, row.role, row.created_at, row.updated_at)


def _key(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.id,
        row.name,
        row.role,
        row.created_by,
        row.created_at,
        row.expires_at,
        row.revoked_at,
        row.last_used_at,
    )


class Accounts:
    """Users, API keys and refresh tokens; ``engine_or_url`` is the config store's engine or a URL.

    Synchronous (SQLAlchemy over psycopg 3); the API calls it from worker threads.
    """

    def __init__(self, engine_or_url: Engine | str, *, hasher: PasswordHasher | None = None) -> None:
        if isinstance(engine_or_url, str):
            url = engine_or_url
            self.engine = create_engine(
                "postgresql+psycopg://", creator=lambda: psycopg.connect(url), pool_size=2, pool_pre_ping=True
            )
        else:
            self.engine = engine_or_url
        self._hasher = hasher or PasswordHasher()
        # verified against when the user does not exist, so that path costs the same time
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except OperationalError as exc:
            raise UnavailableError(f"account store unavailable: {type(exc.orig).__name__}") from None

    # -- users ---------------------------------------------------------------------------------------

    def count_users(self) -> int:
        with self._session() as s:
            return len(s.exec(select(UserRow.username)).all())

    def list_users(self) -> list[UserInfo]:
        with self._session() as s:
            return [_user(r) for r in s.exec(select(UserRow).order_by(col(UserRow.username))).all()]

    def get_user(self, username: str) -> UserInfo | None:
        with self._session() as s:
            row = s.get(UserRow, username)
            return _user(row) if row is not None else None

    def create_user(self, username: str, password: str, role: str) -> UserInfo:
        check_username(username)
        check_role(role)
        _check_password(password)
        now = _now()
        row = UserRow(
            username=username,
            password_hash=self._hasher.hash(password),
            role=role,
            created_at=now,
            updated_at=now,
        )
        try:
            with self._session() as s:
                s.add(row)
        except IntegrityError:
            raise ConflictError(f"user {username!r} exists already") from None
        return _user(row)

    def update_user(self, username: str, *, role: str | None = None, password: str | None = None) -> UserInfo:
        """Change the role and/or password; a new password revokes every session of the user."""
        if role is not None:
            check_role(role)
        if password is not None:
            _check_password(password)
        with self._session() as s:
            row = s.get(UserRow, username, with_for_update=True)
            if row is None:
                raise NotFoundError(f"no user {username!r}")
            if role is not None and row.role == "admin" and role != "admin":
                self._keep_an_admin(s, username)
            if role is not None:
                row.role = role
            if password is not None:
                row.password_hash = self._hasher.hash(password)
                self._revoke_user_tokens(s, username)
            row.updated_at = _now()
            s.add(row)
            return _user(row)

    def delete_user(self, username: str) -> None:
        with self._session() as s:
            row = s.get(UserRow, username, with_for_update=True)
            if row is None:
                raise NotFoundError(f"no user {username!r}")
            if row.role == "admin":
                self._keep_an_admin(s, username)
            self._revoke_user_tokens(s, username)
            s.delete(row)

    @staticmethod
    def _keep_an_admin(s: Session, leaving: str) -> None:
        admins = s.exec(select(UserRow.username).where(col(UserRow.role) == "admin").with_for_update()).all()
        if [a for a in admins if a != leaving] == []:
            raise ConflictError("the last admin cannot be removed or demoted")

    def authenticate(self, username: str, password: str) -> UserInfo | None:
        """The user when the password is right, else ``None`` — the same work either way."""
        if len(password) > MAX_PASSWORD:
            password = password[:MAX_PASSWORD]  # still verified (and still wrong): no short cut to time
        with self._session() as s:
            row = s.get(UserRow, username) if _USERNAME.match(username) else None
            stored = row.password_hash if row is not None else self._dummy_hash
            try:
                self._hasher.verify(stored, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return None
            if row is None:
                return None
            if self._hasher.check_needs_rehash(stored):
                row.password_hash = self._hasher.hash(password)
                s.add(row)
            return _user(row)

    # -- API keys -----------------------------------------------------------------------------------

    def create_key(
        self, name: str, role: str, *, created_by: str, expires_at: datetime | None = None
    ) -> tuple[ApiKeyInfo, str]:
        """A new key: its record and the key itself (shown once; only its hash is kept)."""
        check_role(role)
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidError("invalid key name", [("name", "must be 1..200 characters")])
        if expires_at is not None:
            expires_at = aware_utc(expires_at, "expires_at")
            if expires_at <= _now():
                raise InvalidError("expiry in the past", [("expires_at", "must be in the future")])
        key_id = secrets.token_hex(9)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        row = ApiKeyRow(
            id=key_id,
            name=name,
            key_hash=_sha256(key),
            role=role,
            created_by=created_by,
            created_at=_now(),
            expires_at=expires_at,
        )
        with self._session() as s:
            s.add(row)
        return _key(row), key

    def list_keys(self) -> list[ApiKeyInfo]:
        with self._session() as s:
            return [_key(r) for r in s.exec(select(ApiKeyRow).order_by(col(ApiKeyRow.created_at))).all()]

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        with self._session() as s:
            row = s.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                raise NotFoundError(f"no API key {key_id[:40]!r}")
            if row.revoked_at is None:
                row.revoked_at = _now()
                s.add(row)
            return _key(row)

    def check_key(self, key: str) -> ApiKeyInfo | None:
        """The key's record when it is valid (known, not revoked, not expired); records its use."""
        m = _KEY.match(key)
        if m is None:
            return None
        now = _now()
        with self._session() as s:
            row = s.get(ApiKeyRow, m.group(1))
            if row is None or not hmac.compare_digest(row.key_hash, _sha256(key)):
                return None
            if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
                return None
            # at most once a minute: a busy script must not turn every read into a write
            if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
                row.last_used_at = now
                s.add(row)
            return _key(row)

    # -- refresh tokens -----------------------------------------------------------------------------

    def _issue(self, s: Session, user: UserInfo, family: str) -> RefreshGrant:
        token = secrets.token_urlsafe(32)
        now = _now()
        s.add(
            RefreshTokenRow(
                token_hash=_sha256(token),
                family=family,
                username=user.username,
                created_at=now,
                expires_at=now + REFRESH_TTL,
            )
        )
        return RefreshGrant(token, family, user, now + REFRESH_TTL)

    def start_session(self, user: UserInfo) -> RefreshGrant:
        """A log-in: the first refresh token of a new family."""
        with self._session() as s:
            return self._issue(s, user, secrets.token_hex(16))

    def rotate(self, token: str) -> RefreshGrant | None:
        """Trade a refresh token for a new one of its family; ``None`` when it is not valid. A token
        used before (or revoked) revokes its whole family."""
        now = _now()
        with self._session() as s:
            row = s.get(RefreshTokenRow, _sha256(token[:200]), with_for_update=True)
            if row is None:
                return None
            if row.used_at is not None or row.revoked_at is not None:
                if row.used_at is not None and row.revoked_at is None:
                    log.warning("refresh token reused: family of user %s revoked", row.username)
                self._revoke_family(s, row.family, now)
                return None
            if row.expires_at <= now:
                return None
            user = s.get(UserRow, row.username)
            if user is None:
                return None
            row.used_at = now
            s.add(row)
            return self._issue(s, _user(user), row.family)

    def revoke_family(self, family: str) -> None:
        with self._session() as s:
            self._revoke_family(s, family, _now())

    @staticmethod
    def _revoke_family(s: Session, family: str, now: datetime) -> None:
        s.execute(
            update(RefreshTokenRow)
            .where(col(RefreshTokenRow.family) == family, col(RefreshTokenRow.revoked_at).is_(None))
            .values(revoked_at=now)
        )

    @staticmethod
    def _revoke_user_tokens(s: Session, username: str) -> None:
        s.execute(
            update(RefreshTokenRow)
            .where(col(RefreshTokenRow.username) == username, col(RefreshTokenRow.revoked_at).is_(None))
            .values(revoked_at=_now())
        )

    def session_user(self, username: str, family: str) -> UserInfo | None:
        """The user of an access token while its session is live: the user exists and its refresh
        family is not revoked (logged out, password changed, replay caught). One query per request."""
        with self._session() as s:
            row = s.exec(
                select(UserRow)
                .join(RefreshTokenRow, col(RefreshTokenRow.username) == col(UserRow.username))
                .where(
                    col(UserRow.username) == username,
                    col(RefreshTokenRow.family) == family,
                    col(RefreshTokenRow.revoked_at).is_(None),
                )
                .limit(1)
            ).first()
            return _user(row) if row is not None else None

    def purge_expired(self) -> int:
        """Remove refresh tokens past their expiry (housekeeping; they are refused anyway)."""
        with self._session() as s:
            rows = s.exec(select(RefreshTokenRow).where(col(RefreshTokenRow.expires_at) <= _now())).all()
            for row in rows:
                s.delete(row)
            return len(rows)
