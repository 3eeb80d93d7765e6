"""Broker URLs: ``mqtt://[user[:password]@]host[:port]`` and ``mqtts://...[?ca_file=&cert_file=&key_file=]``.

>>> u = parse_mqtt_url("mqtts://edge:s3cret@broker.local?ca_file=/etc/nexus/ca.pem")
>>> (u.host, u.port, u.username, u.tls, u.ca_file)
('broker.local', 8883, 'edge', True, '/etc/nexus/ca.pem')
>>> u.redacted()
'mqtts://edge:***@broker.local:8883'
>>> parse_mqtt_url("http://x")
Traceback (most recent call last):
ValueError: broker URL must start with mqtt:// or mqtts://, got 'http://...'
>>> parse_mqtt_url("mqtt://b?ca_file=/ca.pem")
Traceback (most recent call last):
ValueError: broker URL: ca_file only applies to mqtts:// (TLS) URLs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

TLS_PARAMS = ("ca_file", "cert_file", "key_file")
"""Query parameters of an ``mqtts://`` URL: the CA that verifies the broker (default: the system's
CAs) and the client certificate and key, for brokers that require one."""


@dataclass(frozen=True, slots=True)
class MqttUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

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
    query = dict(parse_qsl(parts.query))
    unknown = sorted(set(query) - set(TLS_PARAMS))
    if unknown:
        raise ValueError(f"broker URL: unknown parameter(s) {unknown}; known: {list(TLS_PARAMS)}")
    for name in query:
        if not tls:
            raise ValueError(f"broker URL: {name} only applies to mqtts:// (TLS) URLs")
    if ("cert_file" in query) != ("key_file" in query):
        raise ValueError(
            "broker URL: cert_file and key_file go together (the client certificate and its key)"
        )
    return MqttUrl(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        ca_file=query.get("ca_file"),
        cert_file=query.get("cert_file"),
        key_file=query.get("key_file"),
    )
