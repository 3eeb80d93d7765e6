"""Errors as ``application/problem+json`` (RFC 9457), from one exception → status map.

Every error answer has ``type``, ``title``, ``status`` and ``detail``; invalid input adds
``problems``, a list of ``{"path": "devices[0].poll_interval_s", "message": ...}``. Bad input is
never a 500: Litestar's own validation errors become 422 (400 when the body is not JSON at all), the
control plane's errors map by class, and anything unexpected is a 500 that names no internals.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from pydantic import BaseModel, ConfigDict, Field

from control.errors import (
    ConflictError,
    ControlError,
    InvalidError,
    NotFoundError,
    TooLargeError,
    UnavailableError,
)
from control.service import AckTimeoutError
from dataflows.spec import SpecError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS_OF: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLargeError, 413),
    (InvalidError, 422),
    (AckTimeoutError, 504),
    (UnavailableError, 503),
]
"""Control-plane error class → HTTP status (first match wins; subclasses before their bases)."""

TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
    504: "Timed out",
}


class FieldProblem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        description="Where the problem is (``devices[0].tags[1].scale``; empty: the whole body)"
    )
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Invalid input",
                    "status": 422,
                    "detail": "flow spec is invalid (1 problem)",
                    "problems": [
                        {
                            "path": "devices[0].poll_interval_s",
                            "message": "Input should be greater than 0 (got -1)",
                        }
                    ],
                }
            ]
        },
    )

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
    problems: list[FieldProblem] = Field(default_factory=list)


def problem_response(
    status: int, detail: str, problems: list[tuple[str, str]] | None = None, instance: str | None = None
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "problems": [{"path": p, "message": m} for p, m in (problems or [])],
    }
    if instance is not None:
        body["instance"] = instance
    return Response(body, status_code=status, media_type=PROBLEM_JSON)


def problems(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` for the problem answers a route can give (400, 401, 403 and 422 always:
    every route but the public ones needs authentication and a permission)."""
    out = {}
    for code in sorted({400, 401, 403, 422, *codes}):
        out[code] = ResponseSpec(
            data_container=Problem,
            description=TITLES.get(code, "Error"),
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
    return out


def _control_error(request: Request[Any, Any, Any], exc: ControlError) -> Response[dict[str, Any]]:
    status = next((code for cls, code in STATUS_OF if isinstance(exc, cls)), 500)
    if status == 500:
        return _internal(request, exc)
    found = exc.problems if isinstance(exc, InvalidError) else []
    return problem_response(status, str(exc), found, request.url.path)


def _spec_error(request: Request[Any, Any, Any], exc: SpecError) -> Response[dict[str, Any]]:
    return problem_response(422, str(exc).splitlines()[0].rstrip(":"), exc.problems, request.url.path)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    """Litestar's checks of parameters and bodies: 422 with the field paths (400: not JSON at all)."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    found: list[tuple[str, str]] = []
    for item in extra:
        if isinstance(item, dict):
            key = str(item.get("key") or "")
            source = item.get("source")
            path = key if source in (None, "body") else f"{source}:{key}" if key else str(source)
            found.append((path, str(item.get("message", ""))))
    return problem_response(422 if found else 400, str(exc.detail), found, request.url.path)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    if exc.status_code >= 500:
        return _internal(request, exc)
    response = problem_response(exc.status_code, str(exc.detail), None, request.url.path)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        HTTP_500_INTERNAL_SERVER_ERROR, "internal error; see the server log", None, request.url.path
    )


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    ControlError: _control_error,
    SpecError: _spec_error,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _internal,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "Problem", "problem_response", "problems"]
