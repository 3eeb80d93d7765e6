"""Request and response bodies of the auth, users, keys and audit API (CONTRACT.md shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control.accounts import ApiKeyInfo, UserInfo
from control.audit import AuditEvent

Role = Literal["viewer", "operator", "engineer", "admin"]


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(frozen=True, extra="forbid", json_schema_extra={"examples": [example]})


class LoginIn(BaseModel):
    model_config = _example({"username": "admin", "password": "correct horse battery staple"})

    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class RefreshIn(BaseModel):
    model_config = _example({"refresh_token": "Qk9...x2"})

    refresh_token: str | None = Field(
        default=None, max_length=200, description="Omit to use the `nexus_refresh` cookie"
    )


class UserRef(BaseModel):
    username: str
    role: Role


class TokensOut(BaseModel):
    user: UserRef
    access_token: str
    refresh_token: str
    expires_in: int = Field(description="Seconds the access token is valid")
    csrf_token: str = Field(description="Send as `X-CSRF-Token` on unsafe requests authenticated by cookie")


class MeOut(BaseModel):
    username: str
    role: Role
    permissions: list[str]


class TicketOut(BaseModel):
    ticket: str
    expires_in: int


class UserOut(BaseModel):
    username: str
    role: Role
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, u: UserInfo) -> UserOut:
        return cls(username=u.username, role=u.role, created_at=u.created_at, updated_at=u.updated_at)  # type: ignore[arg-type]


class UserCreate(BaseModel):
    model_config = _example({"username": "olivia", "password": "a long pass phrase", "role": "operator"})

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=10, max_length=1024)
    role: Role


class UserUpdate(BaseModel):
    model_config = _example({"role": "engineer"})

    role: Role | None = None
    password: str | None = Field(default=None, min_length=10, max_length=1024)


class KeyCreate(BaseModel):
    model_config = _example(
        {"name": "historian-export", "role": "viewer", "expires_at": "2027-01-01T00:00:00Z"}
    )

    name: str = Field(min_length=1, max_length=200)
    role: Role
    expires_at: datetime | None = None


class KeyOut(BaseModel):
    id: str
    name: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, k: ApiKeyInfo) -> KeyOut:
        return cls(
            id=k.id,
            name=k.name,
            role=k.role,  # type: ignore[arg-type]
            created_by=k.created_by,
            created_at=k.created_at,
            expires_at=k.expires_at,
            revoked_at=k.revoked_at,
            last_used_at=k.last_used_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown this once, only its hash is stored")


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    source: str | None
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, e: AuditEvent) -> AuditOut:
        return cls(
            id=e.id,
            at=e.at,
            actor=e.actor,
            source=e.source,
            action=e.action,
            target=e.target,
            outcome=e.outcome,
            detail=e.detail,
        )
