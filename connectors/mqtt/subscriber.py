"""One MQTT subscription per flow process that hands each message to the device's owner.

What the command router (``$nexus/cmd/+/+/set``) and the config listener
(``$nexus/config/flows/{flow}/#``) share: a clean-session client subscribed to one topic filter
(renewed at every reconnect), :meth:`DeviceSubscriber.start` waiting until the subscription is
granted, and a registry of per-device handlers — the source partition that owns a device
registers its handler when it is built and unregisters it when it closes, so in a cluster each
process acts for the devices it polls. Subclasses implement :meth:`DeviceSubscriber._handle`
(called on paho's network thread: keep it quick, never block).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import paho.mqtt.client as mqtt

from connectors.mqtt.client import describe_connect_failure, make_client, reason_failed, unique_client_id
from connectors.mqtt.url import parse_mqtt_url

__all__ = ["DeviceSubscriber"]

log = logging.getLogger(__name__)

H = TypeVar("H", bound=Callable[..., Any])


class DeviceSubscriber(Generic[H]):
    """A subscription to ``topic_filter`` with per-device handlers (see the module docstring).

    ``self._cond`` guards the handlers and the connection flags; subclasses may use it for their
    own state too.
    """

    name = "subscriber"
    """Used in log lines and errors (``command router``, ``config listener``)."""

    def __init__(
        self,
        mqtt_url: str,
        topic_filter: str,
        *,
        client_id: str | None = None,
        client_prefix: str = "nexus-sub",
        connect_timeout_s: float = 10.0,
        qos: int = 1,
    ) -> None:
        self._broker = parse_mqtt_url(mqtt_url)
        self.topic_filter = topic_filter
        self.connect_timeout_s = connect_timeout_s
        self.qos = qos
        self._handlers: dict[str, H] = {}
        self._cond = threading.Condition()
        self._subscribed = False
        self._connect_error: str | None = None
        self._closed = False
        self._started = False
        client = make_client(self._broker, client_id or unique_client_id(client_prefix), clean_session=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # -- lifecycle -----------------------------------------------------------------------------

    def _on_start(self) -> None:
        """Hook: called once, before connecting (start helper threads here)."""

    def start(self, timeout: float | None = None) -> DeviceSubscriber[H]:
        """Connect and wait until the subscription is granted; :class:`TimeoutError` after ``timeout``.

        paho keeps reconnecting in the background after a timeout; ``close()`` stops it.
        """
        if not self._started:
            self._started = True
            self._on_start()
            self._client.connect_async(self._broker.host, self._broker.port, keepalive=30)
            self._client.loop_start()
        timeout = self.connect_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._subscribed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            else:
                return self
            why = self._connect_error
        if why is None:  # paho's reconnect loop does not say why; find out (outside the lock)
            why = f"not subscribed within {timeout:g} s: {describe_connect_failure(self._broker)}"
        raise TimeoutError(f"{self.name}: broker {self._broker.redacted()}: {why}")

    def _disconnect(self) -> None:
        """Stop the client (the subclass's ``close`` calls it once its own work is wound up)."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._disconnect()

    @property
    def ready(self) -> bool:
        return self._subscribed

    # -- handlers ------------------------------------------------------------------------------

    def register(self, device_id: str, handler: H) -> None:
        """Hand the device's messages to ``handler`` (this process owns the device)."""
        with self._cond:
            self._handlers[device_id] = handler

    def unregister(self, device_id: str, handler: H | None = None) -> None:
        """Stop handing the device's messages on (only if its handler is still ``handler``, when given)."""
        with self._cond:
            if handler is None or self._handlers.get(device_id) == handler:
                self._handlers.pop(device_id, None)

    def handler(self, device_id: str) -> H | None:
        with self._cond:
            return self._handlers.get(device_id)

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_failed(reason):
            with self._cond:
                self._connect_error = f"connection refused: {reason}"
                self._cond.notify_all()
            return
        client.subscribe(self.topic_filter, qos=self.qos)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[Any], _p: object) -> None:
        failed = any(reason_failed(r) for r in reasons)
        with self._cond:
            self._subscribed = not failed
            if failed:
                self._connect_error = f"subscription to {self.topic_filter!r} refused: {reasons}"
            self._cond.notify_all()
        if failed:
            log.error("%s: broker %s refused %r", self.name, self._broker.redacted(), self.topic_filter)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._cond:
            self._subscribed = False
        if not self._closed:
            log.warning(
                "%s disconnected from %s (%s); reconnecting", self.name, self._broker.redacted(), reason
            )

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # never kill paho's network thread
            log.exception("%s: unexpected error handling %r", self.name, msg.topic)

    @abstractmethod
    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """One message (paho's network thread)."""
