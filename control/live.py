"""Live status: one MQTT subscriber in the API process for flow status, alerts and the tags clients watch.

- ``$nexus/status/flows/{flow}/{process}`` (retained, one per flow process; ``{process}`` is the host-pid
  today and the Bytewax process id once the status topic is rekeyed): the latest payload per process,
  with points/s computed from successive ``points_read`` counters. :meth:`LiveStatus.flow_status` merges
  a flow's processes; each message is also handed to the sink on channel ``flows`` (and
  ``devices:{flow}`` when the payload carries per-device statistics under ``devices``).
- ``{enterprise}/{site}/{area}/{line}/{device}/_alerts``: raised and cleared alerts, on channel ``alerts``.
- A tag's UNS topic, only while somebody watches it (:meth:`LiveStatus.watch_values`, reference-counted):
  values on channel ``values:{tag_id}``, throttled per tag to ``max_rate_hz`` (leading and trailing edge:
  the first value goes at once, then at most one per interval, and the newest value of a burst always
  arrives).

The sink is any ``(channel, message) -> None`` callable; it is called from the MQTT thread or the
throttle thread, so the API hands it to its event loop (``call_soon_threadsafe``). Framework-free.

>>> parse_status_topic("$nexus/status/flows/demo/host-42")
('demo', 'host-42')
>>> parse_status_topic("$nexus/status/other") is None
True
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from core.uns import STATUS_PREFIX

__all__ = ["ALERTS_TOPIC", "STATUS_TOPIC", "LiveStatus", "Sink", "parse_status_topic"]

log = logging.getLogger(__name__)

STATUS_TOPIC = f"{STATUS_PREFIX}/flows/+/+"
ALERTS_TOPIC = "+/+/+/+/+/_alerts"
Sink = Callable[[str, Mapping[str, Any]], None]


def parse_status_topic(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == f"{STATUS_PREFIX}/flows":
        return parts[3], parts[4]
    return None


def _seconds(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class _Process:
    payload: dict[str, Any]
    points_per_s: float | None = None


@dataclass
class _Watch:
    topic: str
    refs: int = 0
    last_sent: float = float("-inf")
    pending: dict[str, Any] | None = None


@dataclass
class _Counters:
    messages: int = 0
    bad_messages: int = 0
    values_in: int = 0
    values_out: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class LiveStatus:
    """See the module docstring. ``start()`` connects in the background (paho reconnects by itself)."""

    def __init__(
        self,
        mqtt_url: str,
        *,
        max_rate_hz: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sink: Sink | None = None,
    ) -> None:
        if max_rate_hz <= 0:
            raise ValueError("max_rate_hz must be > 0")
        self.mqtt_url = mqtt_url
        self.interval_s = 1.0 / max_rate_hz
        self._clock = clock
        self._sink = sink
        self._lock = threading.Lock()
        self._flows: dict[str, dict[str, _Process]] = {}
        self._watches: dict[int, _Watch] = {}
        self._by_topic: dict[str, int] = {}
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self.counters = _Counters()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._client is not None:
            return
        url = parse_mqtt_url(self.mqtt_url)
        client = make_client(url, unique_client_id("nexus-api-live"), reconnect_max_s=10)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *_a: self._connected.clear()
        client.on_message = self._on_message
        client.connect_async(url.host, url.port, keepalive=30)
        client.loop_start()
        self._client = client
        self._thread = threading.Thread(target=self._flusher, name="live-throttle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def wait_connected(self, timeout: float) -> bool:
        """True once subscribed (tests and start-up checks)."""
        return self._connected.wait(timeout)

    def set_sink(self, sink: Sink | None) -> None:
        with self._lock:
            self._sink = sink

    # ------------------------------------------------------------------ queries

    def flow_status(self, flow_id: str) -> dict[str, Any] | None:
        """The flow's processes' latest status payloads merged: state, points/s, per-process detail."""
        with self._lock:
            procs = self._flows.get(flow_id)
            if not procs:
                return None
            return self._merge(flow_id, procs)

    def flows(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {f: self._merge(f, p) for f, p in self._flows.items() if p}

    @staticmethod
    def _merge(flow_id: str, procs: Mapping[str, _Process]) -> dict[str, Any]:
        states = {p.payload.get("state", "unknown") for p in procs.values()}
        state = next((s for s in ("running", "starting", "stopping") if s in states), None)
        if state is None:
            state = states.pop() if len(states) == 1 else "mixed"
        rates = [p.points_per_s for p in procs.values() if p.points_per_s is not None]
        return {
            "flow": flow_id,
            "state": state,
            "points_per_s": round(sum(rates), 1) if rates else None,
            "points_read": sum(int(p.payload.get("points_read", 0) or 0) for p in procs.values()),
            "processes": {
                name: {**p.payload, "points_per_s": p.points_per_s} for name, p in sorted(procs.items())
            },
        }

    # ------------------------------------------------------------------ values

    def watch_values(self, tag_id: int, topic: str) -> None:
        """Start (or share) the subscription to a tag's UNS topic; values go to ``values:{tag_id}``."""
        with self._lock:
            w = self._watches.get(tag_id)
            if w is None:
                w = self._watches[tag_id] = _Watch(topic)
                self._by_topic[topic] = tag_id
                client = self._client
            else:
                client = None
            w.refs += 1
        if client is not None and self._connected.is_set():
            client.subscribe(topic, qos=0)

    def unwatch_values(self, tag_id: int) -> None:
        with self._lock:
            w = self._watches.get(tag_id)
            if w is None:
                return
            w.refs -= 1
            if w.refs > 0:
                return
            del self._watches[tag_id]
            self._by_topic.pop(w.topic, None)
            client = self._client
        if client is not None and self._connected.is_set():
            client.unsubscribe(w.topic)

    def watched(self) -> dict[int, int]:
        with self._lock:
            return {t: w.refs for t, w in self._watches.items()}

    def offer_value(self, tag_id: int, message: dict[str, Any]) -> None:
        """One value of a watched tag (the MQTT callback calls this): send now or keep as the pending one."""
        with self._lock:
            w = self._watches.get(tag_id)
            if w is None:
                return
            self.counters.values_in += 1
            now = self._clock()
            if now - w.last_sent >= self.interval_s:
                w.last_sent, w.pending = now, None
                send = True
            else:
                w.pending = message
                send = False
        if send:
            self._emit(f"values:{tag_id}", message, value=True)

    def flush_due(self) -> int:
        """Send the pending values whose interval has passed; returns how many (the flusher calls this)."""
        due: list[tuple[int, dict[str, Any]]] = []
        with self._lock:
            now = self._clock()
            for tag_id, w in self._watches.items():
                if w.pending is not None and now - w.last_sent >= self.interval_s:
                    due.append((tag_id, w.pending))
                    w.last_sent, w.pending = now, None
        for tag_id, message in due:
            self._emit(f"values:{tag_id}", message, value=True)
        return len(due)

    def _flusher(self) -> None:
        tick = self.interval_s / 4
        while not self._stop.wait(tick):
            try:
                self.flush_due()
            except Exception:  # a sink error must not end the throttle
                log.exception("live status: flushing values failed")

    # ------------------------------------------------------------------ MQTT

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object = None
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("live status: broker refused the connection (%s)", reason)
            return
        self._connected.set()  # first: a watch added from now on subscribes itself (twice is harmless)
        with self._lock:
            topics = [STATUS_TOPIC, ALERTS_TOPIC, *self._by_topic]
        client.subscribe([(t, 0) for t in topics])

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg.topic, msg.payload)
        except Exception:  # one bad message must not stop the subscriber
            self.counters.bad_messages += 1
            log.exception("live status: cannot handle a message on %s", msg.topic)

    def _handle(self, topic: str, payload: bytes | bytearray) -> None:
        self.counters.messages += 1
        status = parse_status_topic(topic)
        if status is not None:
            self._on_status(*status, payload)
            return
        with self._lock:
            tag_id = self._by_topic.get(topic)
        if tag_id is not None:
            body = self._json(payload)
            if body is not None:
                self.offer_value(tag_id, {"tag_id": tag_id, **body})
            return
        if topic.endswith("/_alerts"):
            body = self._json(payload)
            if body is not None:
                device = topic.split("/")[-2]
                self._emit("alerts", {"device": device, "topic": topic.rsplit("/", 1)[0], **body})

    def _json(self, payload: bytes | bytearray) -> dict[str, Any] | None:
        try:
            body = json.loads(payload)
        except ValueError:
            self.counters.bad_messages += 1
            return None
        if not isinstance(body, dict):
            self.counters.bad_messages += 1
            return None
        return body

    def _on_status(self, flow_id: str, process: str, payload: bytes | bytearray) -> None:
        if not payload:  # a cleared retained status: the process is gone
            with self._lock:
                procs = self._flows.get(flow_id, {})
                procs.pop(process, None)
                merged = self._merge(flow_id, procs) if procs else {"flow": flow_id, "state": "absent"}
            self._emit("flows", merged)
            return
        body = self._json(payload)
        if body is None:
            return
        with self._lock:
            procs = self._flows.setdefault(flow_id, {})
            before = procs.get(process)
            rate = None
            if before is not None and body.get("state") == "running":
                t0, t1 = _seconds(before.payload.get("time")), _seconds(body.get("time"))
                n0, n1 = before.payload.get("points_read"), body.get("points_read")
                if (
                    t0 is not None
                    and t1 is not None
                    and t1 > t0
                    and isinstance(n0, int)
                    and isinstance(n1, int)
                ):
                    rate = round(max(0, n1 - n0) / (t1 - t0), 1)
                else:
                    rate = before.points_per_s
            procs[process] = _Process(body, rate)
            merged = self._merge(flow_id, procs)
        self._emit("flows", merged)
        if isinstance(body.get("devices"), dict | list):
            self._emit(
                f"devices:{flow_id}", {"flow": flow_id, "process": process, "devices": body["devices"]}
            )

    def _emit(self, channel: str, message: Mapping[str, Any], *, value: bool = False) -> None:
        sink = self._sink
        if sink is None:
            return
        if value:
            self.counters.values_out += 1
        sink(channel, message)
