"""Configuration of the MQTT source: which topics to subscribe to and how payloads become points.

A :class:`MqttSubscription` subscribes to one topic filter on behalf of one device. Its ``tags``
say which tag each message feeds and where the value sits in the payload; one device may have
several subscriptions, and one message may feed several tags (a JSON object carrying temperature
and pressure):

>>> sub = MqttSubscription(topic_filter="sensors/+/temp", device_id="hall-1",
...                        tags=[MqttTagMapping(name="temp", value_path="data.temp")])
>>> sub.tags[0].value_path
'data.temp'
>>> MqttTagMapping(name="t", value_path="values[2].v").compiled_value_path()
('values', 2, 'v')
>>> try:
...     MqttSourceConfig(url="mqtt://b", clean_session=False, subscriptions=[sub])
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, clean_session=False needs a fixed `client_id` (the broker keys the session by it)

Paths (``value_path``, ``timestamp_path``, ``quality_path``) are dotted keys with list indexes:
``data.temp``, ``values[2].v``, ``[0]`` (keys that contain ``.`` or ``[`` cannot be addressed).
``None`` means the whole payload: a plain number (``21.5``), ``true``/``false`` or a string.

Timestamps are an ISO-8601 string (a naive one is taken as UTC) or a number of seconds,
milliseconds, microseconds or nanoseconds since the Unix epoch, told apart by magnitude:
``|x| < 1e11`` seconds (until the year 5138), ``< 1e14`` ms, ``< 1e17`` µs, else ns.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from paho.mqtt.client import topic_matches_sub
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.mqtt.url import MqttUrl, parse_mqtt_url
from core.timestamps import DEFAULT_MAX_FUTURE_S, DEFAULT_MAX_PAST_S

__all__ = [
    "MqttPayload",
    "MqttSourceConfig",
    "MqttSubscription",
    "MqttTagMapping",
    "PathPart",
    "compile_path",
    "validate_topic_filter",
]

PathPart = str | int
_SEGMENT = re.compile(r"([^.\[\]]+)?((?:\[-?\d+\])*)")
_INDEX = re.compile(r"\[(-?\d+)\]")

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")]


def compile_path(path: str) -> tuple[PathPart, ...]:
    """``"values[2].v"`` to ``("values", 2, "v")``; a :class:`ValueError` names a bad path.

    >>> compile_path("data.temp"), compile_path("[0][1]"), compile_path("a.b[-1]")
    (('data', 'temp'), (0, 1), ('a', 'b', -1))
    >>> compile_path("a..b")
    Traceback (most recent call last):
    ...
    ValueError: path 'a..b' is not valid: write keys separated by '.' with optional [index], e.g. 'values[2].v'
    """
    parts: list[PathPart] = []
    for i, segment in enumerate(path.split(".")):
        m = _SEGMENT.fullmatch(segment)
        if m is None or not segment or (m.group(1) is None and i > 0):
            raise ValueError(
                f"path {path!r} is not valid: write keys separated by '.' with optional [index], "
                "e.g. 'values[2].v'"
            )
        if m.group(1) is not None:
            parts.append(m.group(1))
        parts.extend(int(x) for x in _INDEX.findall(m.group(2)))
    return tuple(parts)


def validate_topic_filter(topic_filter: str) -> str:
    """Refuse what a broker would refuse: empty filters, misplaced ``#`` or ``+``.

    >>> validate_topic_filter("a/+/c/#")
    'a/+/c/#'
    >>> validate_topic_filter("a/b#")
    Traceback (most recent call last):
    ...
    ValueError: topic filter 'a/b#': '#' must be a whole level, and the last one
    """
    if not topic_filter:
        raise ValueError("topic filter must not be empty")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {topic_filter!r}: '#' must be a whole level, and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttPayload(_Frozen):
    """Where a tag's value, timestamp and quality sit in the payload.

    ``value_type``: ``number`` takes JSON numbers, booleans (1/0) and numeric strings; anything
    else is a bad point (``OUT_OF_RANGE``). ``text`` keeps the value as a string (the batch's text
    side channel). ``auto``: numbers as numbers, everything else as text.

    ``quality_path`` (optional): a boolean (true: good), one of our quality codes (0..255), or a
    name (``good``, ``uncertain``, ``bad``, ``bad_comm_error``, ...). Absent from a payload: good.
    """

    value_path: str | None = None
    timestamp_path: str | None = None
    quality_path: str | None = None
    value_type: Literal["number", "text", "auto"] = "number"

    @field_validator("value_path", "timestamp_path", "quality_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            compile_path(value)
        return value

    def compiled_value_path(self) -> tuple[PathPart, ...] | None:
        return None if self.value_path is None else compile_path(self.value_path)

    def compiled_timestamp_path(self) -> tuple[PathPart, ...] | None:
        return None if self.timestamp_path is None else compile_path(self.timestamp_path)

    def compiled_quality_path(self) -> tuple[PathPart, ...] | None:
        return None if self.quality_path is None else compile_path(self.quality_path)

    @property
    def needs_json(self) -> bool:
        return self.value_path is not None or self.timestamp_path is not None or self.quality_path is not None


class MqttTagMapping(MqttPayload):
    """One tag fed by the messages of a subscription.

    ``topic``: the exact topic (or a narrower filter) within the subscription whose messages feed
    this tag; ``None``: every message of the subscription.
    """

    name: Name
    topic: str | None = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        return None if value is None else validate_topic_filter(value)


class MqttSubscription(_Frozen):
    """One topic filter subscribed to for one device; ``tags`` say which messages feed which tag
    (every tag is declared, so the historian and the UNS know it before its first message)."""

    topic_filter: str
    device_id: Name
    tags: list[MqttTagMapping] = Field(default_factory=list)
    qos: Literal[0, 1, 2] | None = None
    """Overrides the source's ``qos`` for this filter."""

    @field_validator("topic_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        return validate_topic_filter(value)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSubscription:
        if not self.tags:
            raise ValueError(
                f"subscription {self.topic_filter!r} of device {self.device_id!r} maps no tag: give `tags`"
            )
        seen: set[tuple[str, str | None, str | None]] = set()
        for tag in self.tags:
            topic = tag.topic or ""
            exact = bool(topic) and "+" not in topic and "#" not in topic
            if exact and not topic_matches_sub(self.topic_filter, topic):
                raise ValueError(
                    f"tag {tag.name!r}: topic {tag.topic!r} is not matched by the subscription's "
                    f"filter {self.topic_filter!r}"
                )
            key = (tag.name, tag.topic, tag.value_path)
            if key in seen:
                raise ValueError(f"tag {tag.name!r} is mapped twice to the same topic and value_path")
            seen.add(key)
        return self


class MqttSourceConfig(_Frozen):
    """An MQTT source: one broker, the subscriptions, and the partition's limits.

    Subscriptions are grouped by device: one Bytewax partition (``mqtt:{device_id}``) and one MQTT
    connection per device. With a fixed ``client_id`` each partition connects as
    ``{client_id}-{device_id}``; with ``clean_session=False`` the broker then keeps the
    subscriptions, and queues QoS 1/2 messages, while the flow is down.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str = Field(repr=False)
    client_id: str | None = None
    qos: Literal[0, 1, 2] = 1
    clean_session: bool = True
    subscriptions: list[MqttSubscription] = Field(min_length=1)
    max_queue: int = Field(default=100_000, gt=0)
    """Messages buffered per partition between paho's thread and the dataflow; the oldest are dropped
    (and counted) beyond."""
    idle_wake_s: float = Field(default=0.02, gt=0, le=1.0)
    """How long the partition sleeps when its queue is empty (the latency of a lone message)."""
    keepalive_s: int = Field(default=30, gt=0)
    reconnect_min_s: int = Field(default=1, gt=0)
    reconnect_max_s: int = Field(default=30, gt=0)
    max_clock_skew_s: float = Field(default=DEFAULT_MAX_FUTURE_S, gt=0, allow_inf_nan=False)
    """Payload timestamps further than this in the future are replaced by the receive time
    (quality ``uncertain``): one future-stamped reading would make every later one 'late'."""
    max_past_s: float = Field(default=DEFAULT_MAX_PAST_S, gt=0, allow_inf_nan=False)
    """Payload timestamps older than this are replaced by the receive time (quality ``uncertain``):
    see :mod:`core.timestamps`."""
    warn_interval_s: float = Field(default=60.0, gt=0)
    """At most one warning per tag and problem per interval (the rest are counted)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_mqtt_url(value)  # ValueError names the problem, never the password
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSourceConfig:
        if not self.clean_session and not self.client_id:
            raise ValueError(
                "clean_session=False needs a fixed `client_id` (the broker keys the session by it)"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"`reconnect_max_s` ({self.reconnect_max_s}) must be >= `reconnect_min_s` ({self.reconnect_min_s})"
            )
        return self

    @property
    def broker(self) -> MqttUrl:
        return parse_mqtt_url(self.url)

    def devices(self) -> dict[str, list[MqttSubscription]]:
        """Subscriptions by device id, in configuration order."""
        out: dict[str, list[MqttSubscription]] = {}
        for sub in self.subscriptions:
            out.setdefault(sub.device_id, []).append(sub)
        return out

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        yield "broker", self.broker.redacted()
        yield from super().__repr_args__()
