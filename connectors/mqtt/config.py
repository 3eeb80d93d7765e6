"""Configuration of the UNS publisher.

>>> c = MqttSinkConfig(url="mqtt://edge:s3cret@broker.local:1884")
>>> c.broker.host, c.broker.port, c.username, c.password.get_secret_value() if c.password else None
('broker.local', 1884, 'edge', 's3cret')
>>> "s3cret" in repr(c)
False
>>> try:
...     MqttSinkConfig(url="mqtt://edge:s3cret@broker.local:99999")
... except ValueError as exc:
...     print("s3cret" in str(exc), exc.errors()[0]["loc"])
False ('url',)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.mqtt.url import MqttUrl, parse_mqtt_url

__all__ = ["MqttSinkConfig", "MqttUrl", "parse_mqtt_url"]


class MqttSinkConfig(BaseModel):
    """Where and how the UNS publisher publishes. Credentials come from the URL."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str = Field(repr=False)
    client_id: str | None = None
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    max_inflight: int = Field(default=1000, gt=0)
    max_queue: int = Field(default=100_000, gt=0)
    """Messages handed to the client and not yet sent (QoS 0) or acknowledged (QoS 1/2)."""
    publish_timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_s: int = Field(default=30, gt=0)
    reconnect_max_s: int = Field(default=5, gt=0)
    """paho's reconnect delay doubles from 1 s up to this: short, so a returning broker is found soon."""
    policy: Literal["live_first", "in_order"] = "live_first"
    """After an outage: ``live_first`` publishes live messages at once and replays the spool beside
    them, marked ``"historical": true``; ``in_order`` keeps spooling live messages until the backlog
    is gone (per-tag order kept, live data late)."""
    spool_dir: str | None = None
    """Folder of this publisher's disk spool (``None``: a private temporary folder, removed at close)."""
    spool_max_bytes: int = Field(default=1 << 30, gt=0)
    spool_max_age_s: float = Field(default=7 * 86400.0, gt=0)
    spool_sync_interval_s: float = Field(default=0.1, gt=0)
    drain_messages_per_s: float = Field(default=60_000.0, gt=0)
    """Pace of the replay after an outage; it also only uses half of ``max_queue``, so live messages
    keep room."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_mqtt_url(value)  # ValueError names the problem, never the password
        return value

    @property
    def broker(self) -> MqttUrl:
        return parse_mqtt_url(self.url)

    @property
    def username(self) -> str | None:
        return self.broker.username

    @property
    def password(self) -> SecretStr | None:
        pw = self.broker.password
        return SecretStr(pw) if pw is not None else None

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        yield "broker", self.broker.redacted()
        yield from super().__repr_args__()
