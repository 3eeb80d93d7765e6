"""Security: users and log-in, API keys, roles and permissions, the audit API (issue 9).

The app-level guard (:func:`api.auth.guard.permission_guard`) authenticates every request and
WebSocket and enforces each route's ``opt["permission"]``; the roles and permissions are in
:mod:`api.auth.permissions`. Audit retention runs once at start and then daily.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from litestar import Litestar

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 86_400


def route_handlers() -> list[Any]:
    from api.auth.controllers import AuditController, AuthController, KeysController, UsersController

    return [AuthController, UsersController, KeysController, AuditController]


def guards() -> list[Any]:
    from api.auth.guard import permission_guard

    return [permission_guard]


async def _retention(app: Litestar) -> None:
    from api.auth.guard import auth_of

    days = app.state.settings.audit_retention_days
    while True:
        try:
            await asyncio.to_thread(auth_of(app).audit.prune, days)
        except Exception as exc:  # the database may be away: try again tomorrow
            log.warning("audit retention did not run: %s", type(exc).__name__)
        await asyncio.sleep(PRUNE_EVERY_S)


async def _start_retention(app: Litestar) -> None:
    if getattr(app.state, "store", None) is not None:
        app.state.audit_retention_task = asyncio.create_task(_retention(app))


async def _stop_retention(app: Litestar) -> None:
    task = getattr(app.state, "audit_retention_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def on_startup() -> list[Any]:
    return [_start_retention]


def on_shutdown() -> list[Any]:
    return [_stop_retention]
