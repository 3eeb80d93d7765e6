"""A minimal ``application/problem+json`` (RFC 9457) answer for :mod:`control.errors`.

Interim: the API's one exception → status map lives in ``api/errors.py`` (cp-store); until that is merged
the historian and metrics controllers attach this handler themselves. Once ``api/errors.py`` maps
``ControlError`` app-wide, drop the controller-level ``exception_handlers`` that point here.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from control.errors import (
    ConflictError,
    ControlError,
    InvalidError,
    NotFoundError,
    TooLargeError,
    UnavailableError,
)

STATUS: dict[type[ControlError], tuple[int, str]] = {
    NotFoundError: (404, "Not Found"),
    ConflictError: (409, "Conflict"),
    InvalidError: (422, "Unprocessable Content"),
    TooLargeError: (413, "Content Too Large"),
    UnavailableError: (503, "Service Unavailable"),
}


def problem_response(request: Request[Any, Any, Any], exc: ControlError) -> Response[Any]:
    status, title = next(
        (v for cls, v in STATUS.items() if isinstance(exc, cls)), (500, "Internal Server Error")
    )
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": str(exc)}
    body["instance"] = request.url.path
    if isinstance(exc, InvalidError) and exc.problems:
        body["errors"] = [{"path": p, "message": m} for p, m in exc.problems]
    return Response(body, status_code=status, media_type="application/problem+json")


EXCEPTION_HANDLERS: dict[Any, Any] = {ControlError: problem_response}
