"""Broker URLs: ``mqtt://[user[:password]@]host[:port]`` and ``mqtts://...``.

>>> u = parse_mqtt_url("mqtts://edge:s3cret@broker.local")
>>> (u.host, u.port, u.username, u.tls)
('broker.local', 8883, 'edge', True)
>>> u.redacted()
'mqtts://edge:***@broker.local:8883'
>>> parse_mqtt_url("http://x")
Traceback (most recent call last):
ValueError: broker URL must start with mqtt:// or mqtts://, got 'http://...'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class MqttUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def redacted(self) -> str:
        """The URL with the password masked: safe for logs and messages."""
        auth = ""
        if self.username:
            auth = self.username + (":***" if self.password else "") + "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttUrl:
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {scheme + '://...'!r}")
    parts = urlsplit(url)
    tls = scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(
            f"broker URL has an invalid port: {MqttUrl(parts.hostname or '', 0).redacted()}"
        ) from None
    if not parts.hostname:
        raise ValueError("broker URL has no host")
    return MqttUrl(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )
