"""Building paho-mqtt clients the same way everywhere: URL, credentials, TLS, reconnect backoff.

>>> c = make_client("mqtt://edge:s3cret@127.0.0.1:1884", "nexus-test")
>>> c._client_id, c._username, c._reconnect_min_delay, c._reconnect_max_delay
(b'nexus-test', b'edge', 1, 30)
>>> unique_client_id("nexus-cmd").startswith("nexus-cmd-")
True
"""

from __future__ import annotations

import os
import socket
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from connectors.mqtt.url import MqttUrl, parse_mqtt_url

__all__ = ["make_client", "reason_failed", "unique_client_id"]


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
    client_class: type[mqtt.Client] = mqtt.Client,
) -> mqtt.Client:
    """An MQTT 3.1.1 client (callback API v2) for ``url``: credentials from the URL, TLS for ``mqtts://``.

    Not connected yet: set the callbacks, then ``connect_async(url.host, url.port)`` and
    ``loop_start()``. paho reconnects by itself with a delay doubling from ``reconnect_min_s``
    to ``reconnect_max_s``; subscribe inside ``on_connect`` so every reconnect renews them.
    ``client_class``: a paho ``Client`` subclass (the UNS publisher's batched-PUBACK client).
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
        client.tls_set()
    client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
    return client


def reason_failed(reason: object) -> bool:
    """True when a paho v2 reason code (CONNACK, SUBACK, DISCONNECT) reports a failure."""
    return bool(getattr(reason, "is_failure", False))
