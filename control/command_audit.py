"""Audit entries for write commands the flows refused for their signature.

The command router of a flow answers an unsigned, forged, stale or replayed command with an error
ack that carries a ``code`` (:mod:`core.signing`). The flows have no handle on the audit log, so the
API process listens to ``$nexus/cmd/+/+/ack`` and records each such ack as ``command.rejected``
(actor ``mqtt``: the broker does not tell who published; target ``{device}/{tag}``). Acks arrive on
paho's network thread and are handed to one writer thread through a bounded queue, so a slow
database never stalls the MQTT client (beyond the queue's bound, entries are dropped and logged).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any, Protocol

from connectors.mqtt.subscriber import DeviceSubscriber
from core.uns import CMD_PREFIX

__all__ = ["CommandAudit"]

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """What :class:`control.audit.AuditLog` offers (its ``record``)."""

    def record(
        self,
        action: str,
        *,
        actor: str,
        source: str | None,
        target: str | None = ...,
        detail: Any = ...,
        outcome: str = ...,
    ) -> None: ...


class CommandAudit(DeviceSubscriber[Any]):
    """Records ``command.rejected`` for every signature refusal a flow acknowledges."""

    name = "command audit"

    def __init__(self, mqtt_url: str, audit: Recorder, *, max_queue: int = 10_000) -> None:
        super().__init__(mqtt_url, f"{CMD_PREFIX}/+/+/ack", client_prefix="nexus-api-cmd-audit")
        self.audit = audit
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(max_queue)
        self._writer = threading.Thread(target=self._write_loop, name="nexus-cmd-audit", daemon=True)
        self.recorded = 0

    def _on_start(self) -> None:
        self._writer.start()

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        levels = topic.split("/")
        if retained or len(levels) != 5:
            return
        try:
            ack = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if not isinstance(ack, dict) or ack.get("ok") is not False or not ack.get("code"):
            return
        try:
            self._queue.put_nowait((f"{levels[2]}/{levels[3]}", ack))
        except queue.Full:
            log.error("command audit: queue full; a command.rejected entry for %s/%s is lost", *levels[2:4])

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            target, ack = item
            detail = {k: ack.get(k) for k in ("request_id", "code", "error", "timestamp")}
            try:
                self.audit.record(
                    "command.rejected",
                    actor="mqtt",
                    source="broker",
                    target=target,
                    detail=detail,
                    outcome="refused",
                )
                self.recorded += 1
            except Exception as exc:  # the audit log logs its own failure; keep listening
                log.error("command audit: entry for %s not recorded: %s", target, type(exc).__name__)

    def close(self) -> None:
        super().close()
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(5.0)
