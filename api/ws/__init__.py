"""Live status over WebSocket: ``/api/v1/ws`` on Litestar's channels plugin (memory backend).

Protocol (JSON text frames):

- client → ``{"subscribe": ["flows", "alerts", "devices:demo", "values:4242"]}``,
  ``{"unsubscribe": [...]}``;
- server → ``{"type": "subscribed", "channels": [...]}``; events ``{"channel": "...", "data": {...}}``;
  problems ``{"type": "error", "path": "subscribe[1]", "detail": "..."}`` (the socket stays open).

On ``flows`` the current state of every flow is sent at once, then changes. ``values:{tag_id}`` starts the
API's MQTT subscription to that tag's UNS topic (looked up in ``nexus_tags``) while anyone watches it;
values are throttled server-side to at most 10 per second per tag (see :mod:`control.live`).

The live subscriber is ``app.state.live`` (``nexus up`` passes it); without one, the app starts its own
when ``NEXUS_MQTT_URL`` is set, else the socket serves subscriptions that stay silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from litestar import Litestar, WebSocket, websocket
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.memory import MemoryChannelsBackend
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect

from control.errors import ControlError
from control.live import LiveStatus

log = logging.getLogger(__name__)

_CHANNEL = re.compile(r"^(flows|alerts|devices:[A-Za-z0-9_.\-]{1,128}|values:-?[0-9]{1,19})$")
MAX_CHANNELS = 1000
"""Channels one socket may hold."""


def make_channels() -> ChannelsPlugin:
    """One plugin per app (it holds the app's queues and subscribers)."""
    return ChannelsPlugin(
        backend=MemoryChannelsBackend(),
        arbitrary_channels_allowed=True,
        subscriber_max_backlog=1000,  # a slow client loses its oldest events, never the server's memory
        subscriber_backlog_strategy="dropleft",
    )


def _envelope(channel: str, data: Mapping[str, Any]) -> bytes:
    return json.dumps({"channel": channel, "data": data}, default=str).encode()


async def _tag_topic(socket: WebSocket[Any, Any, Any], tag_id: int) -> str | None:
    from api.historian.controllers import historian_of

    topics = await (await historian_of(socket.app.state)).tag_topics([tag_id])
    return topics.get(tag_id)


class _Session:
    """One socket's subscriptions: a channels Subscriber per channel, each pumped into the socket."""

    def __init__(self, socket: WebSocket[Any, Any, Any], channels: ChannelsPlugin, live: LiveStatus | None):
        self.socket = socket
        self.channels = channels
        self.live = live
        self.subs: dict[str, Any] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.send_lock = asyncio.Lock()

    async def send(self, message: Mapping[str, Any] | bytes) -> None:
        text = message.decode() if isinstance(message, bytes) else json.dumps(message, default=str)
        async with self.send_lock:
            await self.socket.send_text(text)

    async def _pump(self, channel: str, subscriber: Any) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            async for event in subscriber.iter_events():
                await self.send(event)

    async def subscribe(self, names: list[Any]) -> None:
        done: list[str] = []
        for i, name in enumerate(names):
            if not isinstance(name, str) or not _CHANNEL.match(name):
                await self.error(
                    f"subscribe[{i}]", f"{name!r} is not flows, alerts, devices:FLOW or values:TAG_ID"
                )
                continue
            if name in self.subs:
                done.append(name)
                continue
            if len(self.subs) >= MAX_CHANNELS:
                await self.error(f"subscribe[{i}]", f"at most {MAX_CHANNELS} channels per socket")
                break
            if name.startswith("values:"):
                tag_id = int(name.split(":", 1)[1])
                try:
                    topic = await _tag_topic(self.socket, tag_id)
                except ControlError as exc:
                    await self.error(f"subscribe[{i}]", str(exc))
                    continue
                if topic is None:
                    await self.error(f"subscribe[{i}]", f"unknown tag {tag_id}")
                    continue
                if self.live is not None:
                    self.live.watch_values(tag_id, topic)
            subscriber = await self.channels.subscribe(name)
            self.subs[name] = subscriber
            self.tasks[name] = asyncio.create_task(self._pump(name, subscriber))
            done.append(name)
        await self.send({"type": "subscribed", "channels": done})
        if "flows" in done and self.live is not None:
            for flow_id, status in self.live.flows().items():
                await self.send({"channel": "flows", "data": {**status, "flow": flow_id}})

    async def unsubscribe(self, names: list[Any]) -> None:
        gone = []
        for name in names:
            if isinstance(name, str) and name in self.subs:
                await self._drop(name)
                gone.append(name)
        await self.send({"type": "unsubscribed", "channels": gone})

    async def _drop(self, name: str) -> None:
        subscriber = self.subs.pop(name)
        await self.channels.unsubscribe(subscriber)
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if name.startswith("values:") and self.live is not None:
            self.live.unwatch_values(int(name.split(":", 1)[1]))

    async def close(self) -> None:
        for name in list(self.subs):
            await self._drop(name)

    async def error(self, path: str, detail: str) -> None:
        await self.send({"type": "error", "path": path, "detail": detail})


@websocket("/api/v1/ws", opt={"permission": "live:read"})
async def live_socket(socket: WebSocket[Any, Any, Any], channels: NamedDependency[ChannelsPlugin]) -> None:
    """Live flow states, device statistics, alerts and throttled tag values (see the module docstring)."""
    await socket.accept()
    session = _Session(socket, channels, getattr(socket.app.state, "live", None))
    try:
        while True:
            raw = await socket.receive_text()
            try:
                message = json.loads(raw)
            except ValueError:
                await session.error("$", "not JSON")
                continue
            if not isinstance(message, dict) or not ({"subscribe", "unsubscribe"} & message.keys()):
                await session.error("$", 'send {"subscribe": [channels]} or {"unsubscribe": [channels]}')
                continue
            for key in ("subscribe", "unsubscribe"):
                names = message.get(key)
                if names is None:
                    continue
                if not isinstance(names, list):
                    await session.error(key, "a list of channel names")
                    continue
                await (session.subscribe(names) if key == "subscribe" else session.unsubscribe(names))
    except WebSocketDisconnect:
        pass
    finally:
        await session.close()


async def start_live(app: Litestar) -> None:
    """Connect the live subscriber's sink to the channels (on the app's event loop)."""
    loop = asyncio.get_running_loop()
    live: LiveStatus | None = getattr(app.state, "live", None)
    if live is None:
        settings = app.state.settings
        url = (
            settings.effective_mqtt_url if getattr(settings, "mqtt_url", None) else None
        )  # with its TLS files
        if not url:
            log.info("live status: no NEXUS_MQTT_URL and no live service; /api/v1/ws stays silent")
            return
        live = LiveStatus(url)
        app.state.live = live
        app.state.live_owned = True
        live.start()

    channels = app.plugins.get(ChannelsPlugin)

    def publish(channel: str, message: Mapping[str, Any]) -> None:
        data = _envelope(channel, message)
        loop.call_soon_threadsafe(channels.publish, data, channel)

    live.set_sink(publish)


async def stop_live(app: Litestar) -> None:
    live: LiveStatus | None = getattr(app.state, "live", None)
    if live is None:
        return
    live.set_sink(None)
    if getattr(app.state, "live_owned", False):
        await asyncio.to_thread(live.stop)


def route_handlers() -> list[Any]:
    return [live_socket]


def plugins() -> list[Any]:
    return [make_channels()]


def on_startup() -> list[Any]:
    return [start_live]


def on_shutdown() -> list[Any]:
    return [stop_live]
