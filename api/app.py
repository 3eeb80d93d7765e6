"""``create_app(settings)`` wires the control API; nothing is created at import time.

Each domain package (``api.flows``, ``api.historian``, ``api.ws``, ...) exposes ``route_handlers()``;
``DOMAINS`` lists the ones the app mounts. Every route declares the permission it needs in its
``opt["permission"]`` (enforced by the security layer once it exists).
"""

from __future__ import annotations

import importlib
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY

from core.settings import Settings
from dataflows.spec import SpecError

#: Domain packages mounted by ``create_app``; each has ``route_handlers() -> list``.
DOMAINS: tuple[str, ...] = ("api.flows",)


@get("/health", sync_to_thread=False, opt={"permission": "public"})
def health() -> dict[str, str]:
    return {"status": "ok"}


def spec_error_handler(_request: Request[Any, Any, Any], exc: SpecError) -> Response[object]:
    """Invalid specs answer 422 with every problem and its field path."""
    return Response(
        {"detail": "invalid flow spec", "problems": [{"path": p, "message": m} for p, m in exc.problems]},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def create_app(settings: Settings | None = None, **services: Any) -> Litestar:
    """The app; ``services`` (store, supervisor, live status, ...) land on ``app.state`` by name."""
    settings = settings or Settings.from_env()
    handlers: list[Any] = [health]
    for name in DOMAINS:
        handlers.extend(importlib.import_module(name).route_handlers())
    app = Litestar(
        route_handlers=handlers,
        exception_handlers={SpecError: spec_error_handler},
    )
    app.state.settings = settings
    for key, service in services.items():
        setattr(app.state, key, service)
    return app
