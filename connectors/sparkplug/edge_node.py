"""A Sparkplug B 3.0 edge node: one MQTT session that births, reports by exception, obeys commands.

The session, as the spec (chapter 5) wants it:

- CONNECT registers the NDEATH will (QoS 1, not retained, only ``bdSeq``); ``bdSeq`` starts at 0 and
  goes up by one per CONNECT (wrapping after 255); the NBIRTH that follows carries the same number.
- After CONNECT the node subscribes to its NCMD and DCMD topics (QoS 1) and, with a primary host,
  to ``spBv1.0/STATE/{host}``. Births wait for the host's ``online: true`` (with a timestamp not
  older than the last one seen); an ``online: false`` that is not older makes a born node publish
  its NDEATH, disconnect and start over (reconnect, wait for the host again).
- The births also wait (up to ``birth_wait_s``) for every device's first batch, so the DBIRTHs carry
  read values and all follow the NBIRTH before any DDATA.
- NBIRTH has ``seq`` 0, ``bdSeq``, ``Node Control/Rebirth`` and ``Node Control/Next Server``; each
  device gets a DBIRTH with every metric's name, alias, datatype, current value (or null), unit
  and quality. DDATA then carries aliases only, and only what changed (report by exception).
  ``seq`` goes 0..255 and wraps, over every message of the node except NDEATH.
- NCMD ``Node Control/Rebirth`` = true: data stops (one lock), NBIRTH and every DBIRTH again.
  NCMD ``Node Control/Next Server`` = true: NDEATH, disconnect, reconnect.
- DCMD: each metric goes through the same validated write path as ``$nexus/cmd`` (the command
  router's :meth:`~connectors.commands.CommandRouter.submit`: writable tag, data type, clamp);
  the value the device then reports comes back in DDATA.
- A device whose polls all fail (``bad_comm_error``) ``death_after_failures`` times in a row — its
  circuit breaker's threshold — or that has not answered for ``death_after_s`` since its first failed
  poll (the breaker's threshold times the poll interval: a deadband upstream passes only the first
  of a run of failed polls) gets a DDEATH; its first readable batch afterwards, a DBIRTH.
- While offline (no broker, or the host away) batches go to a :class:`~connectors.sparkplug.backlog.Backlog`
  (in memory, or the disk spool) and are sent after the next births as DDATA with ``is_historical = true``.
- A configuration change re-births: :meth:`reconfigure` (a new plan) or :meth:`device_changed`
  (one device's tags, from a hot change); a redeploy is a new process, a new session.

Threads: the Bytewax worker calls :meth:`publish_batch`; paho's network thread runs the callbacks;
a small supervisor thread reconnects after an intentional disconnect. One lock orders every
message the node sends, so births and data never interleave.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import paho.mqtt.client as mqtt

from connectors.mqtt.client import make_client, reason_failed, unique_client_id
from connectors.sparkplug.backlog import Backlog, MemoryBacklog, SpoolBacklog
from connectors.sparkplug.config import NAMESPACE, DataType, EdgeNodePlan, MetricDef
from connectors.sparkplug.payload import (
    NEXT_SERVER,
    REBIRTH,
    DeviceState,
    Payload,
    add_data_metric,
    get_value,
    nbirth_payload,
    ndeath_payload,
)
from core.batch import PointBatch
from core.quality import Quality
from core.tags import TagInfo

__all__ = ["CommandSubmitter", "SparkplugEdgeNode"]

log = logging.getLogger(__name__)


class CommandSubmitter(Protocol):
    """The validated write path (``connectors.commands.CommandRouter.submit``)."""

    def submit(self, device_id: str, tag_name: str, value: object) -> concurrent.futures.Future[None]: ...


class SparkplugEdgeNode:
    """One edge node session over paho-mqtt, built with the project's client factory.

    ``start()`` connects (and returns after ``connect_timeout_s`` even if the broker is away: the
    node keeps trying and buffers meanwhile). ``clock`` gives UTC seconds since the epoch.
    """

    def __init__(
        self,
        plan: EdgeNodePlan,
        *,
        commands: CommandSubmitter | None = None,
        backlog: Backlog | None = None,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.commands = commands
        self.backlog: Backlog = backlog if backlog is not None else self._default_backlog(plan)
        self._keep_backlog = backlog is not None or plan.spool_dir is not None or plan.backlog_points > 0
        self._clock = clock
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._devices: dict[str, DeviceState] = {}
        self._by_sparkplug_id: dict[str, DeviceState] = {}
        self._metric_by_alias: dict[str, dict[int, int]] = {}
        self._install(plan)
        self._bdseq = 0
        self._next_bdseq = 0
        self._pending_bdseq = 0
        self._seq = 0
        self._connected = False
        self._subscribed = False
        self._host_online = plan.primary_host_id is None
        self._host_ts: int | None = None
        self._online = False
        """NBIRTH sent in the current session (the host may rely on our births)."""
        self._birth_deadline: float | None = None
        self._closed = False
        self._started = False
        self._connect_error: str | None = None
        self._sub_mid: int | None = None
        self._reconnect = threading.Event()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "connects", "nbirth", "dbirth", "ddata", "ddeath", "ndeath", "historical_points",
                "points", "rebirths", "unknown_points", "dcmd_written", "dcmd_refused", "dcmd_failed",
                "state_offline_disconnects", "ddata_metrics", "published", "sent",
            ),
            0,
        )  # fmt: skip
        broker = plan.broker
        self._broker = broker
        client = make_client(broker, client_id or unique_client_id(f"nexus-spb-{plan.edge_node_id}"))
        client.max_queued_messages_set(0)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client
        self._supervisor = threading.Thread(target=self._supervise, name="nexus-spb-session", daemon=True)

    @staticmethod
    def _default_backlog(plan: EdgeNodePlan) -> Backlog:
        if plan.spool_dir is None:
            return MemoryBacklog(plan.backlog_points)
        from connectors.spool import Spool

        name = f"sparkplug-{plan.group_id}-{plan.edge_node_id}"
        return SpoolBacklog(Spool(Path(plan.spool_dir) / name, name=name, max_bytes=plan.spool_max_bytes))

    def _install(self, plan: EdgeNodePlan) -> None:
        """Device states with aliases 1..N across the node, in plan order (unique per node)."""
        old = self._devices
        self._devices, self._by_sparkplug_id, self._metric_by_alias = {}, {}, {}
        alias = 1
        for d in plan.devices:
            st = DeviceState(d, alias)
            alias += len(d.metrics)
            prev = old.get(d.device_id)
            if prev is not None:  # keep current values of metrics that still exist
                ts_of = {m.tag_id: i for i, m in enumerate(prev.plan.metrics)}
                for i, m in enumerate(d.metrics):
                    j = ts_of.get(m.tag_id)
                    if j is not None:
                        st.values[i], st.quality[i], st.ts_ms[i] = (
                            prev.values[j],
                            prev.quality[j],
                            prev.ts_ms[j],
                        )
                        if j in prev.text:
                            st.text[i] = prev.text[j]
                st.alive, st.failures = prev.alive, prev.failures
                st.born = False
            self._devices[d.device_id] = st
            self._by_sparkplug_id[d.sparkplug_id] = st
            self._metric_by_alias[d.device_id] = {a: i for i, a in enumerate(st.aliases)}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> SparkplugEdgeNode:
        """Connect; wait up to ``timeout`` (default ``connect_timeout_s``) for the session, never raise."""
        if not self._started:
            self._started = True
            self._supervisor.start()
            self._client.connect_async(self._broker.host, self._broker.port, keepalive=self.plan.keepalive_s)
            self._client.loop_start()
        timeout = self.plan.connect_timeout_s if timeout is None else timeout
        if not self.wait_connected(timeout):
            log.warning(
                "sparkplug edge node %s/%s: broker %s not reachable yet (%s); buffering and retrying",
                self.plan.group_id, self.plan.edge_node_id, self._broker.redacted(),
                self._connect_error or f"no session within {timeout:g} s",
            )  # fmt: skip
        return self

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._subscribed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_online(self, timeout: float) -> bool:
        """Wait until the births went out (the host may be waited for); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._online:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Intentional disconnect: NDEATH first (tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            info = self._send_ndeath() if self._connected else None
            self._online = False
            self._cond.notify_all()
        if info is not None:
            with contextlib.suppress(RuntimeError, ValueError):  # not connected: the broker sends the will
                info.wait_for_publish(timeout)
        self._reconnect.set()
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._supervisor.join(timeout)
        close = getattr(self.backlog, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> SparkplugEdgeNode:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def online(self) -> bool:
        return self._online

    @property
    def bdseq(self) -> int:
        return self._bdseq

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "backlog_batches": len(self.backlog)}

    # -- paho callbacks (network thread) --------------------------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, _u: object) -> None:
        """Register this CONNECT's NDEATH will with the next bdSeq (committed once CONNACK arrives)."""
        with self._lock:
            self._pending_bdseq = self._next_bdseq
            will = ndeath_payload(self._now_ms(), self._pending_bdseq).SerializeToString()
        client.will_set(self.plan.topic("NDEATH"), will, qos=1, retain=False)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if reason_failed(reason):
            with self._cond:
                self._connect_error = f"connection refused: {reason}"
                self._cond.notify_all()
            return
        p = self.plan
        topics = [(p.topic("NCMD"), 1), (f"{NAMESPACE}/{p.group_id}/DCMD/{p.edge_node_id}/+", 1)]
        if p.primary_host_id is not None:
            topics.append((f"{NAMESPACE}/STATE/{p.primary_host_id}", 1))
        with self._cond:
            self._bdseq = self._pending_bdseq
            self._next_bdseq = (self._bdseq + 1) % 256
            self._connected = True
            self._subscribed = False
            self._online = False
            self._connect_error = None
            self._birth_deadline = None
            self.counts["connects"] += 1
            for st in self._devices.values():
                st.born = False
            self._sub_mid = client.subscribe(topics)[1]
        log.info(
            "sparkplug edge node %s/%s connected to %s (bdSeq %d)",
            p.group_id, p.edge_node_id, self._broker.redacted(), self._bdseq,
        )  # fmt: skip

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, reasons: list[Any], _p: object) -> None:
        if any(reason_failed(r) for r in reasons):
            log.error("sparkplug edge node: the broker refused a subscription: %s", reasons)
            return
        with self._cond:
            if mid != self._sub_mid:
                return
            self._subscribed = True
            self._cond.notify_all()
            self._maybe_birth()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with self._cond:
            was = self._online
            self._connected = self._subscribed = self._online = False
            self._cond.notify_all()
        if was and not self._closed:
            log.warning("sparkplug edge node disconnected (%s); buffering until the next session", reason)

    def _on_publish(self, _c: mqtt.Client, _u: object, _mid: int, _reason: object, _p: object) -> None:
        with self._cond:
            self.counts["sent"] += 1  # QoS 0: written to the socket; QoS 1: acknowledged
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every message handed to paho is written (QoS 0) or acknowledged (QoS 1)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.counts["sent"] < self.counts["published"]:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._connected:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            parts = msg.topic.split("/")
            if len(parts) == 3 and parts[1] == "STATE":
                self._on_state(parts[2], bytes(msg.payload))
            elif len(parts) == 4 and parts[2] == "NCMD":
                self._on_ncmd(bytes(msg.payload))
            elif len(parts) == 5 and parts[2] == "DCMD":
                self._on_dcmd(parts[4], bytes(msg.payload))
        except Exception:  # never kill paho's network thread
            log.exception("sparkplug edge node: unexpected error handling %r", msg.topic)

    # -- primary host ---------------------------------------------------------------------------

    def _on_state(self, host_id: str, payload: bytes) -> None:
        if host_id != self.plan.primary_host_id:  # tck-id-message-flow-edge-node-birth-publish-phid-wait-id
            return
        try:
            doc = json.loads(payload)
            online, ts = doc["online"], doc["timestamp"]
            if not isinstance(online, bool) or isinstance(ts, bool) or not isinstance(ts, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            log.warning("sparkplug: ignoring a malformed STATE message from host %r: %.80r", host_id, payload)
            return
        with self._cond:
            if self._host_ts is not None and ts < self._host_ts:
                return  # older than what we know: tck-id-operational-behavior-edge-node-termination-host-offline-timestamp
            self._host_ts = ts
            self._host_online = online
            if online:
                self._maybe_birth()
                return
            if not self._online:
                return  # not born in this session: keep waiting for the host
            self.counts["state_offline_disconnects"] += 1
            log.warning("sparkplug: primary host %r went offline: NDEATH, disconnect, reconnect", host_id)
            self._drop_session()

    def _drop_session(self) -> None:
        """Stop sending now; the supervisor publishes NDEATH, waits for its PUBACK, disconnects and
        reconnects (a new CONNECT with the next bdSeq). Not done here: paho's network thread, which
        runs this, is the one that must deliver the PUBACK — and an unacknowledged NDEATH would be
        sent again after the reconnect."""
        self._online = False
        self._subscribed = False
        self._reconnect.set()

    def _supervise(self) -> None:
        while True:
            self._reconnect.wait()
            self._reconnect.clear()
            if self._closed:
                return
            with self._lock:
                info = self._send_ndeath() if self._connected else None
            if info is not None:
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(5.0)
            self._client.disconnect()
            self._client.loop_stop()  # the network thread ends after an explicit disconnect
            if self._closed:
                return
            self._client.connect_async(self._broker.host, self._broker.port, keepalive=self.plan.keepalive_s)
            self._client.loop_start()

    # -- births and data (caller holds the lock) ------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _publish(self, topic: str, payload: Payload, qos: int = 0) -> mqtt.MQTTMessageInfo:
        info = self._client.publish(topic, payload.SerializeToString(), qos=qos, retain=False)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.counts["published"] += 1
        return info

    def _send_ndeath(self) -> mqtt.MQTTMessageInfo:
        self.counts["ndeath"] += 1
        return self._publish(self.plan.topic("NDEATH"), ndeath_payload(self._now_ms(), self._bdseq), qos=1)

    def _ready(self) -> bool:
        """A session the births may go out on (connected, subscribed, the primary host online)."""
        return not self._closed and self._connected and self._subscribed and self._host_online

    def _maybe_birth(self) -> None:
        """Birth once the session is ready and every device has reported once (so each DBIRTH carries
        real current values and all DBIRTHs follow the NBIRTH before any DDATA —
        tck-id-payloads-dbirth-order), or ``birth_wait_s`` after the session became ready."""
        if self._online or not self._ready():
            self._birth_deadline = None
            return
        if self.plan.birth_all_devices and self.plan.birth_wait_s > 0:
            unseen = any(st.alive and not st.seen for st in self._devices.values())
            now = time.monotonic()
            if unseen and self._birth_deadline is None:
                self._birth_deadline = now + self.plan.birth_wait_s
                timer = threading.Timer(self.plan.birth_wait_s + 0.01, self._birth_timer)
                timer.daemon = True
                timer.start()
            if unseen and self._birth_deadline is not None and now < self._birth_deadline:
                return
        self._birth_deadline = None
        self._births()
        self._online = True
        self._cond.notify_all()
        self._flush_backlog()

    def _birth_timer(self) -> None:
        with self._cond:
            if self._birth_deadline is not None and time.monotonic() >= self._birth_deadline:
                self._maybe_birth()

    def _births(self) -> None:
        """NBIRTH, then a DBIRTH per device: every device that is not dead (``birth_all_devices``; one
        not heard from yet has null values), or only those seen so far (one worker among several,
        which learns its devices from their batches and births each at its first)."""
        now = self._now_ms()
        self._seq = 1
        self._publish(self.plan.topic("NBIRTH"), nbirth_payload(now, self._bdseq))
        self.counts["nbirth"] += 1
        for st in self._devices.values():
            st.born = False
            if st.alive and (self.plan.birth_all_devices or st.seen):
                self._dbirth(st, now)

    def _dbirth(self, st: DeviceState, now: int) -> None:
        self._publish(self.plan.topic("DBIRTH", st.plan.sparkplug_id), st.birth(now, self._next_seq()))
        st.born = True
        self.counts["dbirth"] += 1

    def _ddeath(self, st: DeviceState) -> None:
        p = Payload(timestamp=self._now_ms(), seq=self._next_seq())
        self._publish(self.plan.topic("DDEATH", st.plan.sparkplug_id), p)
        st.born = False
        self.counts["ddeath"] += 1

    def _flush_backlog(self) -> None:
        """Send what was kept while offline as historical DDATA, oldest first, before any new data.

        A device not born yet in this session (the flow restarted with a disk spool) is born first,
        with what is known of it."""
        while True:
            chunk = self.backlog.drain(1000)
            if not chunk:
                return
            for batch in chunk:
                st = self._devices.get(batch.device_id)
                if st is None or not st.alive:
                    continue
                pos = st.positions(batch.tag_ids)
                keep = pos >= 0
                if not keep.any():
                    continue
                if not st.born:
                    self._dbirth(st, self._now_ms())
                self._ddata(st, batch, pos, np.flatnonzero(keep), historical=True)

    def rebirth(self) -> None:
        """Stop data, send NBIRTH (seq 0, same bdSeq) and every DBIRTH again (NCMD Rebirth, config change)."""
        with self._cond:
            self.counts["rebirths"] += 1
            if self._online:
                self._births()

    def reconfigure(self, plan: EdgeNodePlan) -> None:
        """A changed configuration with the same broker and ids: new metrics and aliases, then re-birth."""
        if (plan.url, plan.group_id, plan.edge_node_id) != (
            self.plan.url,
            self.plan.group_id,
            self.plan.edge_node_id,
        ):
            raise ValueError(
                "reconfigure: broker and Sparkplug ids must stay the same (start a new edge node)"
            )
        with self._cond:
            self.plan = plan
            self._install(plan)
            self.counts["rebirths"] += 1
            if self._online:
                self._births()

    def device_changed(self, device_id: str, tags: Mapping[int, TagInfo]) -> None:
        """A hot change of one device's tags (the control plane's in-band ``DeviceConfig``): the device's
        metrics from now on — known tags keep their name and datatype, new ones are Double metrics
        named after the tag — then a re-birth. A change the plan refuses is logged and ignored."""
        with self._cond:
            st = self._devices.get(device_id)
            if st is None:
                return
            old = {m.tag_id: m for m in st.plan.metrics}
            metrics = tuple(
                replace(old[tid], unit=info.unit)
                if tid in old
                else MetricDef(
                    tag_id=tid, device_id=device_id, name=info.name, datatype=DataType.Double, unit=info.unit
                )
                for tid, info in tags.items()
            )
            try:
                device = replace(st.plan, metrics=metrics)
                plan = replace(
                    self.plan,
                    devices=tuple(device if d.device_id == device_id else d for d in self.plan.devices),
                )
            except ValueError as exc:
                log.error("sparkplug: configuration change of device %r not applied: %s", device_id, exc)
                return
            self.reconfigure(plan)

    # -- data (Bytewax worker) ------------------------------------------------------------------

    def publish_batch(self, batch: PointBatch) -> None:
        """Update current values; DBIRTH/DDEATH on device return/loss; DDATA of what changed, or buffer."""
        n = len(batch)
        if n == 0:
            return
        with self._cond:
            st = self._devices.get(batch.device_id)
            if st is None:
                self.counts["unknown_points"] += n
                return
            pos = st.positions(batch.tag_ids)
            idx = np.flatnonzero(pos >= 0)
            if len(idx) < n:
                self.counts["unknown_points"] += n - len(idx)
                if not len(idx):
                    return
            self.counts["points"] += len(idx)
            p = pos[idx]
            quality = batch.quality[idx]
            st.values[p] = batch.values[idx]
            st.quality[p] = quality
            st.ts_ms[p] = batch.ts_ns[idx] // 1_000_000
            if st.text:
                for i in p.tolist():
                    st.text.pop(i, None)
            if batch.text:
                for i, s in batch.text.items():
                    if 0 <= i < n and pos[i] >= 0:
                        st.text[int(pos[i])] = s
            if bool((quality == Quality.COMM_ERROR).all()):
                st.failures += 1
                if st.failures == 1 and st.alive and st.plan.death_after_s is not None:
                    # a deadband upstream lets only the first of a run of failed polls through:
                    # the device also dies when it has not answered for death_after_s
                    st.failing_since += 1
                    timer = threading.Timer(
                        st.plan.death_after_s, self._death_timer, (st.plan.device_id, st.failing_since)
                    )
                    timer.daemon = True
                    timer.start()
                if st.alive and st.failures >= st.plan.death_after_failures:
                    self._device_lost(st)
                if not st.alive:
                    return
            else:
                st.failures = 0
                st.failing_since += 1  # cancels a pending death timer
                st.alive = True
            if not self._online:
                if self._ready():  # waiting for the devices' first batches: this one is in the DBIRTH
                    self._maybe_birth()
                elif self._keep_backlog:
                    self.backlog.append(batch)
                return
            if not st.born:
                self._dbirth(st, self._now_ms())  # carries this batch's values
                return
            self._ddata(st, batch, pos, idx, historical=False)

    def _device_lost(self, st: DeviceState) -> None:
        st.alive = False
        if self._online and st.born:
            self._ddeath(st)

    def _death_timer(self, device_id: str, run: int) -> None:
        with self._cond:
            st = self._devices.get(device_id)
            if st is not None and st.alive and st.failures > 0 and st.failing_since == run:
                self._device_lost(st)

    def _ddata(
        self, st: DeviceState, batch: PointBatch, pos: np.ndarray, idx: np.ndarray, historical: bool
    ) -> None:
        p = pos[idx]
        values = batch.values[idx]
        quality = batch.quality[idx]
        if not historical and self.plan.report_by_exception and len(np.unique(p)) == len(p):
            old = st.sent_values[p]
            same_value = (values == old) | (np.isnan(values) & np.isnan(old))
            changed = ~same_value | (quality != st.sent_quality[p])
            if batch.text or st.sent_text:  # text points: compare the strings themselves
                text_in = batch.text or {}
                for k, (i, j) in enumerate(zip(idx.tolist(), p.tolist(), strict=True)):
                    if text_in.get(i) != st.sent_text.get(j):
                        changed[k] = True
            idx, p, values, quality = idx[changed], p[changed], values[changed], quality[changed]
            if not len(idx):
                return
        metrics = st.plan.metrics
        aliases = st.aliases
        sent_q = st.sent_quality
        ts_ms = (batch.ts_ns[idx] // 1_000_000).tolist()
        text = batch.text or {}
        payload = Payload(timestamp=self._now_ms(), seq=0)
        for i, j, v, q, t in zip(
            idx.tolist(), p.tolist(), values.tolist(), quality.tolist(), ts_ms, strict=True
        ):
            m: MetricDef = metrics[j]
            add_data_metric(
                payload, aliases[j], m.datatype, t, v, None if q == sent_q[j] and not historical else q,
                text.get(i), historical,
            )  # fmt: skip
            if not historical:
                sent_q[j] = q
                if i in text:
                    st.sent_text[j] = text[i]
                else:
                    st.sent_text.pop(j, None)
        if not historical:
            st.sent_values[p] = values
        else:
            self.counts["historical_points"] += len(idx)
        payload.seq = self._next_seq()
        self._publish(self.plan.topic("DDATA", st.plan.sparkplug_id), payload)
        self.counts["ddata"] += 1
        self.counts["ddata_metrics"] += len(idx)

    # -- commands (network thread) --------------------------------------------------------------

    def _on_ncmd(self, payload: bytes) -> None:
        try:
            cmd = Payload.FromString(payload)
        except Exception:
            log.warning("sparkplug: ignoring an NCMD that is not a Sparkplug B payload")
            return
        for m in cmd.metrics:
            on = get_value(m, DataType.Boolean) is True
            if m.name == REBIRTH and on:
                log.info("sparkplug: rebirth requested by NCMD")
                self.rebirth()
            elif m.name == NEXT_SERVER and on:
                log.info("sparkplug: next server requested by NCMD (one server: reconnecting to it)")
                with self._cond:
                    if self._connected:
                        self._drop_session()
            else:
                log.warning("sparkplug: NCMD metric %r is not writable", m.name or m.alias)

    def _on_dcmd(self, sparkplug_device: str, payload: bytes) -> None:
        st = self._by_sparkplug_id.get(sparkplug_device)
        if st is None:
            log.warning("sparkplug: DCMD for unknown device %r", sparkplug_device)
            return
        try:
            cmd = Payload.FromString(payload)
        except Exception:
            log.warning(
                "sparkplug: ignoring a DCMD for %r that is not a Sparkplug B payload", sparkplug_device
            )
            return
        by_alias = self._metric_by_alias[st.plan.device_id]
        by_name = {m.name: i for i, m in enumerate(st.plan.metrics)}
        for m in cmd.metrics:
            j = by_alias.get(m.alias) if m.HasField("alias") else by_name.get(m.name)
            if j is None:
                self._count("dcmd_refused")
                log.warning(
                    "sparkplug: DCMD for %r names no metric of it (%r)", sparkplug_device, m.name or m.alias
                )
                continue
            metric = st.plan.metrics[j]
            self._write(st.plan.device_id, metric, get_value(m, metric.datatype))

    def _write(self, device_id: str, metric: MetricDef, value: object) -> None:
        from connectors.commands import CommandRefused

        where = f"{device_id}/{metric.tag_name}"
        if self.commands is None:
            self._count("dcmd_refused")
            log.warning("sparkplug: DCMD %s refused: no writable tags in this flow", where)
            return
        try:
            fut = self.commands.submit(device_id, metric.tag_name, value)
        except CommandRefused as exc:
            self._count("dcmd_refused")
            log.warning("sparkplug: DCMD %s refused: %s", where, exc)
            return

        def done(f: concurrent.futures.Future[None]) -> None:
            exc = None if f.cancelled() else f.exception()
            if f.cancelled() or exc is not None:
                self._count("dcmd_failed")
                log.warning("sparkplug: DCMD write %s failed: %s", where, exc or "cancelled")
            else:
                self._count("dcmd_written")

        fut.add_done_callback(done)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1
