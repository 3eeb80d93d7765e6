"""One error hierarchy for the control plane; the API maps each class to an HTTP status in one place
(not found → 404, conflict → 409, invalid → 422, too large → 413)."""

from __future__ import annotations

from collections.abc import Sequence


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
