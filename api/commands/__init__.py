"""The API process's listener of refused write commands: each signature refusal a flow
acknowledges becomes a ``command.rejected`` audit entry (:class:`control.command_audit.CommandAudit`).

It runs wherever the API runs (``nexus up``, or the API alone in a cluster), when the app has a
config store and a broker: the configured ``NEXUS_MQTT_URL`` (with its TLS files), else the broker
of the app's live status (``nexus up`` with the embedded broker). No routes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from litestar import Litestar

from control.audit import AuditLog
from control.command_audit import CommandAudit

log = logging.getLogger(__name__)


def route_handlers() -> list[Any]:
    return []


def _broker_url(app: Litestar) -> str | None:
    settings = app.state.settings
    if getattr(settings, "mqtt_url", None):
        return str(settings.effective_mqtt_url)
    live = getattr(app.state, "live", None)
    return getattr(live, "mqtt_url", None)


def _start(app: Litestar) -> None:
    store = getattr(app.state, "store", None)
    url = _broker_url(app)
    if store is None or url is None:
        log.info("command audit: no config store or no broker; refused commands are not audited here")
        return
    listener = CommandAudit(url, AuditLog(store.engine))
    app.state.command_audit = listener

    def connect() -> None:  # off the event loop: start() waits for the subscription
        try:
            listener.start()
        except TimeoutError as exc:
            log.warning("%s; it keeps trying in the background", exc)

    threading.Thread(target=connect, name="nexus-cmd-audit-start", daemon=True).start()


def _stop(app: Litestar) -> None:
    listener = getattr(app.state, "command_audit", None)
    if listener is not None:
        listener.close()


def on_startup() -> list[Any]:
    return [_start]


def on_shutdown() -> list[Any]:
    return [_stop]
