"""``create_app(settings)`` wires the control API; nothing is created at import time."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY

from api.flows.controllers import FlowSpecController
from core.settings import Settings
from dataflows.spec import SpecError


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    return {"status": "ok"}


def spec_error_handler(_request: Request[Any, Any, Any], exc: SpecError) -> Response[object]:
    """Invalid specs answer 422 with every problem and its field path."""
    return Response(
        {"detail": "invalid flow spec", "problems": [{"path": p, "message": m} for p, m in exc.problems]},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    app = Litestar(
        route_handlers=[health, FlowSpecController],
        exception_handlers={SpecError: spec_error_handler},
    )
    app.state.settings = settings
    return app
