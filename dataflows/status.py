"""Flow status on the broker: ``$nexus/status/flows/{flow}/{process}``, retained, with a last will.

Each dataflow process counts the points it read and publishes its counters once a second, so the
demo, the API and an operator with ``mosquitto_sub`` see that a flow is alive and how fast it runs.

Hot config changes show in the payload: ``version`` is the flow version the process started with
(``NEXUS_FLOW_VERSION``, 0 when unset), ``devices`` maps each device this process reads to the
config version it runs (``{"press-01": {"version": 5}}``; a hot change moves it once the device's
partition applied it), and the config listener counts ``config_received``, ``config_accepted``,
``config_ignored`` (not newer than what runs) and ``config_refused`` (invalid; see the log).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from core.uns import STATUS_PREFIX

log = logging.getLogger(__name__)


def status_topic(flow_id: str, process: str | None = None) -> str:
    return f"{STATUS_PREFIX}/flows/{flow_id}/{process or f'{socket.gethostname()}-{os.getpid()}'}"


class FlowStatus:
    """Per-process counters of one flow, published on the status topic every ``interval_s``."""

    def __init__(self, flow_id: str, mqtt_url: str, *, interval_s: float = 1.0, version: int = 0) -> None:
        self.flow_id = flow_id
        self.version = version
        """The flow version the process started with."""
        self._devices: dict[str, int] = {}
        """The config version each device polled by this process runs (hot changes move it)."""
        self.mqtt_url = mqtt_url
        self.interval_s = interval_s
        self.topic = status_topic(flow_id)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {"points_read": 0, "batches_read": 0}
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None

    def count(self, name: str, n: int) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def count_read(self, points: int) -> None:
        with self._lock:
            self._counts["points_read"] += points
            self._counts["batches_read"] += 1

    def set_device_version(self, device_id: str, version: int) -> None:
        """The device now runs the config of ``version`` (its partition applied it)."""
        with self._lock:
            self._devices[device_id] = version

    def forget_device(self, device_id: str) -> None:
        with self._lock:
            self._devices.pop(device_id, None)

    def snapshot(self, state: str = "running") -> dict[str, object]:
        with self._lock:
            counts = dict(self._counts)
            devices = {d: {"version": v} for d, v in sorted(self._devices.items())}
        return {
            "flow": self.flow_id,
            "state": state,
            "version": self.version,
            "devices": devices,
            "pid": os.getpid(),
            "started": datetime.fromtimestamp(self._started, UTC).isoformat(),
            "time": datetime.now(UTC).isoformat(),
            **counts,
        }

    def start(self) -> None:
        if self._thread is not None:
            return
        url = parse_mqtt_url(self.mqtt_url)
        client = make_client(url, unique_client_id("nexus-status"), reconnect_max_s=10)
        client.will_set(
            self.topic, json.dumps({"flow": self.flow_id, "state": "offline"}), qos=1, retain=True
        )
        client.connect_async(url.host, url.port, keepalive=30)
        client.loop_start()
        self._client = client
        self._thread = threading.Thread(target=self._run, name=f"status-{self.flow_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._publish("running")

    def _publish(self, state: str) -> None:
        if self._client is not None and self._client.is_connected():
            self._client.publish(self.topic, json.dumps(self.snapshot(state)), qos=1, retain=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            info = None
            if self._client.is_connected():
                info = self._client.publish(
                    self.topic, json.dumps(self.snapshot("stopped")), qos=1, retain=True
                )
            if info is not None:
                try:
                    info.wait_for_publish(timeout=2)
                except RuntimeError:
                    log.warning("flow status: final publish not confirmed")
            self._client.disconnect()
            self._client.loop_stop()
