"""One error hierarchy for the control plane; the API maps each class to an HTTP status in one place
(not found → 404, conflict → 409, invalid → 422, too large → 413)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime


class ControlError(Exception):
    """Base of every error the control plane raises on purpose."""


class NotFoundError(ControlError):
    """The flow, version, device, tag or user does not exist."""


class ConflictError(ControlError):
    """The request is based on a stale version (optimistic concurrency) or collides with existing state."""


class InvalidError(ControlError):
    """The request is well-formed but wrong; ``problems`` are ``(field path, message)`` pairs."""

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


class TooLargeError(ControlError):
    """A body, a range or a result is beyond a configured limit."""


class UnavailableError(ControlError):
    """A service the request needs (database, broker, device) did not answer in time."""


def aware_utc(value: datetime, where: str) -> datetime:
    """``value`` as UTC, or :class:`InvalidError` at ``where`` (``query:since``, ``expires_at``) when it
    has no timezone or its UTC falls outside years 1..9999. (PostgreSQL takes offsets only up to
    15:59, Python's reach 23:59; an instant Python cannot read back would break every later read.)"""
    if value.tzinfo is None:
        raise InvalidError(
            f"{where} has no timezone", [(where, "must carry a UTC offset, e.g. 2026-11-30T12:00:00Z")]
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidError(
            f"{where} is out of range", [(where, f"{value.isoformat()} is outside years 1..9999 in UTC")]
        ) from None
