"""Building paho-mqtt clients the same way everywhere: URL, credentials, TLS, reconnect backoff.

>>> c = make_client("mqtt://edge:s3cret@127.0.0.1:1884", "nexus-test")
>>> c._client_id, c._username, c._reconnect_min_delay, c._reconnect_max_delay
(b'nexus-test', b'edge', 1, 30)
>>> unique_client_id("nexus-cmd").startswith("nexus-cmd-")
True
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from connectors.mqtt.url import MqttUrl, parse_mqtt_url

__all__ = [
    "QuietClient",
    "describe_connect_failure",
    "make_client",
    "reason_failed",
    "tls_context",
    "unique_client_id",
]

IDLE_SELECT_S = 5.0
"""The longest the network thread of :class:`QuietClient` sleeps with nothing to send or receive."""


class QuietClient(mqtt.Client):
    """paho's client whose ``loop_start`` thread wakes every :data:`IDLE_SELECT_S` when idle, not
    every second.

    paho's thread waits in ``select`` for at most a second, then looks at its keepalive: one wake-up
    a second per connection, each ~0.1-0.2 ms of CPU on this VM after a nap — a flow process holds
    several (the UNS and derived publishers, the status and config clients), most of them idle most
    of the time (a derived publisher sends once a window). Nothing else waits for that second:
    ``publish``, ``disconnect`` and a ``loop_stop`` (below) wake the thread through paho's socket
    pair at once, and the keepalive ping goes out at most this long after it is due (the timeout
    stays under a quarter of the keepalive; a broker waits 1.5 of them). Overrides paho 2.2's
    ``_thread_main`` (the target of ``loop_start``).
    """

    def _thread_main(self) -> None:
        timeout = IDLE_SELECT_S if self._keepalive <= 0 else min(IDLE_SELECT_S, max(1.0, self._keepalive / 4))
        try:
            self.loop_forever(timeout=timeout, retry_first_connection=True)
        finally:
            self._thread = None

    def loop_stop(self) -> MQTTErrorCode:
        self._thread_terminate = True
        pair = self._sockpairW
        if pair is not None:  # wake the thread's select now, not at its timeout
            with contextlib.suppress(OSError):
                pair.send(b"0")
        return super().loop_stop()


def unique_client_id(prefix: str) -> str:
    """``{prefix}-{host}-{pid}-{random}``: unique per process and per call (a clean session)."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def make_client(
    url: str | MqttUrl,
    client_id: str,
    *,
    clean_session: bool = True,
    reconnect_min_s: int = 1,
    reconnect_max_s: int = 30,
    client_class: type[mqtt.Client] = QuietClient,
) -> mqtt.Client:
    """An MQTT 3.1.1 client (callback API v2) for ``url``: credentials from the URL, TLS for ``mqtts://``.

    Not connected yet: set the callbacks, then ``connect_async(url.host, url.port)`` and
    ``loop_start()``. paho reconnects by itself with a delay doubling from ``reconnect_min_s``
    to ``reconnect_max_s``; subscribe inside ``on_connect`` so every reconnect renews them.
    ``client_class``: a paho ``Client`` subclass (the UNS publisher's batched-PUBACK client);
    :class:`QuietClient` by default.
    """
    broker = parse_mqtt_url(url) if isinstance(url, str) else url
    client = client_class(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv311,
        clean_session=clean_session,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set_context(tls_context(broker))
    client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
    return client


def tls_context(broker: MqttUrl) -> ssl.SSLContext:
    """The TLS context of an ``mqtts://`` broker: verifies the broker's certificate and host name
    against ``ca_file`` (else the system's CAs), with the client certificate when one is given.
    A missing or unreadable file is a :class:`ValueError` naming it."""
    try:
        ctx = ssl.create_default_context(cafile=broker.ca_file)
        if broker.cert_file:
            ctx.load_cert_chain(broker.cert_file, broker.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"broker {broker.redacted()}: cannot load TLS files (ca_file={broker.ca_file!r},"
            f" cert_file={broker.cert_file!r}, key_file={broker.key_file!r}): {exc}"
        ) from None
    return ctx


def describe_connect_failure(broker: MqttUrl, timeout_s: float = 3.0) -> str:
    """Why a connection to ``broker`` fails, for an error message (paho's reconnect loop only says
    that it failed): a TCP connect and, for ``mqtts://``, a TLS handshake with the client's own
    context, e.g. ``TLS handshake failed: certificate verify failed: unable to get local issuer
    certificate (set NEXUS_MQTT_CA_FILE ...)``. Blocks up to ``timeout_s``; call it on failure only."""
    try:
        with socket.create_connection((broker.host, broker.port), timeout=timeout_s) as sock:
            if not broker.tls:
                return "TCP connection works; the broker refused or dropped the MQTT session"
            with tls_context(broker).wrap_socket(sock, server_hostname=broker.host):
                return "TLS handshake works; the broker refused or dropped the MQTT session"
    except ssl.SSLCertVerificationError as exc:
        hint = (
            ""
            if broker.ca_file
            else " (set NEXUS_MQTT_CA_FILE or ?ca_file= to the CA that signed the broker's certificate)"
        )
        return f"TLS handshake failed: certificate verify failed: {exc.verify_message or exc}{hint}"
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc.reason or exc}"
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot reach {broker.host}:{broker.port}: {exc.strerror or exc}"


def reason_failed(reason: object) -> bool:
    """True when a paho v2 reason code (CONNACK, SUBACK, DISCONNECT) reports a failure."""
    return bool(getattr(reason, "is_failure", False))
