"""``create_app(settings)`` wires the control API; nothing is created at import time.

Each domain package (``api.flows``, ``api.historian``, ``api.ws``, ...) exposes ``route_handlers()``
and may expose ``plugins()``, ``middleware()``, ``on_startup()`` and ``on_shutdown()`` (each a list);
``DOMAINS`` lists the ones the app mounts. Every route declares the permission it needs in its
``opt["permission"]``; ``api.auth``'s guard enforces it and the app refuses to start with a route
that has none (see :mod:`api.auth.permissions`).
"""

from __future__ import annotations

import importlib
from typing import Any

from litestar import Litestar, Request, Router, get
from litestar.openapi import OpenAPIConfig

from api.auth.guard import check_routes
from api.errors import EXCEPTION_HANDLERS
from api.openapi import add_model_examples
from control.errors import InvalidError
from core.settings import Settings

#: Domain packages mounted by ``create_app``; each has ``route_handlers() -> list``.
DOMAINS: tuple[str, ...] = (
    "api.flows",
    "api.devices",
    "api.historian",
    "api.ws",
    "api.metrics",
    "api.auth",
    "api.commands",
    "api.ui",
)


@get("/health", sync_to_thread=False, opt={"permission": "public"})
def health() -> dict[str, str]:
    return {"status": "ok"}


MAX_BODY_BYTES = 4_000_000
"""Request bodies above this answer 413 (a spec with thousands of tags is well below it)."""


def refuse_nul_characters(request: Request[Any, Any, Any]) -> None:
    """No name, id or filter here can hold a NUL character (PostgreSQL text cannot): refuse one in a
    path or query parameter up front, naming the parameter, before it reaches a store."""
    found = [
        (f"{source}:{name}", "contains a NUL character (\\x00)")
        for source, items in (
            ("path", request.path_params.items()),
            ("query", request.query_params.multi_items()),
        )
        for name, value in items
        if isinstance(value, str) and "\x00" in value
    ]
    if found:
        raise InvalidError("a parameter contains a NUL character", found)


def create_app(settings: Settings | None = None, **services: Any) -> Litestar:
    """The app; ``services`` (store, supervisor, live status, ...) land on ``app.state`` by name."""
    settings = settings or Settings.from_env()
    handlers: list[Any] = [health]
    hooks: dict[str, list[Any]] = {
        "plugins": [],
        "middleware": [],
        "guards": [],
        "on_startup": [],
        "on_shutdown": [],
    }
    for name in DOMAINS:
        module = importlib.import_module(name)
        handlers.extend(module.route_handlers())
        for hook, items in hooks.items():
            if hasattr(module, hook):
                items.extend(getattr(module, hook)())
    app = Litestar(
        route_handlers=handlers,
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=MAX_BODY_BYTES,
        before_request=refuse_nul_characters,
        openapi_config=OpenAPIConfig(
            title="NEXUS Edge control API",
            version="1.0.0",
            description="Flows, versions, deploys, devices and tags. Errors are application/problem+json (RFC 9457).",
            path="/schema",
            openapi_router=Router(
                path="/schema", route_handlers=[], opt={"permission": "public"}, include_in_schema=False
            ),
        ),
        plugins=hooks["plugins"],
        middleware=hooks["middleware"],
        guards=hooks["guards"],
        on_startup=hooks["on_startup"],
        on_shutdown=hooks["on_shutdown"],
    )
    check_routes(app)
    add_model_examples(app)
    app.state.settings = settings
    for key, service in services.items():
        setattr(app.state, key, service)
    return app
