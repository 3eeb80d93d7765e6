"""Flow status on the broker: ``$nexus/status/flows/{flow}/{process}``, retained, with a last will.

Each dataflow process counts the points it read and publishes its counters once a second, so the
demo, the API and an operator with ``mosquitto_sub`` see that a flow is alive and how fast it runs.

The topic (what the control plane subscribes to, ``$nexus/status/flows/+/+``):

- ``{flow}`` is the spec's ``id``; ``{process}`` is the Bytewax process id (``-i`` of ``bytewax.run``, ``BYTEWAX_PROCESS_ID``,
  else the ordinal at the end of ``BYTEWAX_POD_NAME`` in a StatefulSet, else ``0``). A restart
  therefore publishes on the same topic and replaces its predecessor's retained message: the
  broker holds at most one retained status per flow process, however often flows restart.
- The payload is JSON: ``flow``, ``process`` (the id above, an int), ``state`` (``running``),
  ``host``, ``pid``, ``started`` and ``time`` (ISO-8601 UTC), the counters (``points_read``,
  ``batches_read``, ...), ``version``, ``devices`` and the config counters (below).
- Clean stop (the process ends through :meth:`FlowStatus.stop`, e.g. a drain): one last
  ``{"state": "stopped", ...}`` is published *not* retained (live subscribers see it), then the
  retained message is cleared (an empty retained payload), so nothing is left on the broker.
- Crash or lost connection: the broker publishes the last will, ``{"flow", "process",
  "state": "offline"}``, retained, on the same topic; it stays until the process runs again.

Hot config changes show in the payload: ``version`` is the flow version the process started with
(``NEXUS_FLOW_VERSION``, 0 when unset), ``devices`` maps each device this process reads to the
config version it runs (``{"press-01": {"version": 5}}``; a hot change moves it once the device's
partition applied it), and the config listener counts ``config_received``, ``config_accepted``,
``config_ignored`` (not newer than what runs) and ``config_refused`` (invalid; see the log).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt

from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from core.threads import name_os_threads
from core.uns import STATUS_PREFIX

log = logging.getLogger(__name__)


def bytewax_process_id(env: Mapping[str, str] | None = None, argv: Sequence[str] | None = None) -> int:
    """This process's Bytewax process id, as ``bytewax.run`` derives it: ``-i``/``--process-id`` on
    its command line, else ``BYTEWAX_PROCESS_ID``, else the pod ordinal, else 0.

    >>> bytewax_process_id({}, []), bytewax_process_id({"BYTEWAX_PROCESS_ID": "2"}, [])
    (0, 2)
    >>> bytewax_process_id({}, ["-m", "bytewax.run", "f:flow", "-i", "1", "-a", "h:1;h:2"])
    1
    >>> bytewax_process_id({}, ["bytewax.run", "f:flow", "--process-id=3"])
    3
    >>> bytewax_process_id({"BYTEWAX_POD_NAME": "flow-3", "BYTEWAX_STATEFULSET_NAME": "flow"}, [])
    3
    """
    env = os.environ if env is None else env
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-i", "--process-id") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--process-id="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"the Bytewax process id must be an integer, got {value!r}") from None
    raw = (env.get("BYTEWAX_PROCESS_ID") or "").strip()
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"BYTEWAX_PROCESS_ID must be an integer, got {raw!r}") from None
    pod = (env.get("BYTEWAX_POD_NAME") or "").strip()
    m = re.search(r"-(\d+)$", pod)
    return int(m.group(1)) if m else 0


def status_topic(flow_id: str, process: int | None = None) -> str:
    """``$nexus/status/flows/{flow}/{process}`` (see the module docstring).

    >>> status_topic("telemetry", 0)
    '$nexus/status/flows/telemetry/0'
    """
    return f"{STATUS_PREFIX}/flows/{flow_id}/{bytewax_process_id() if process is None else process}"


def _poll_stats(st: Any) -> dict[str, Any]:
    """The status fields of one partition's stats (JSON-safe: NaN becomes null)."""
    client = st.client
    latency = getattr(client, "last_latency_s", math.nan)
    return {
        "polls": st.polls,
        "skipped_polls": st.skipped_polls,
        "failures": st.failures,
        "breaker": getattr(client, "breaker_state", None),
        "latency_ms": None if math.isnan(latency) else round(latency * 1000, 3),
        "interval_s": None if math.isnan(st.interval_s) else st.interval_s,
    }


class FlowStatus:
    """Per-process counters of one flow, published on the status topic every ``interval_s``."""

    def __init__(
        self,
        flow_id: str,
        mqtt_url: str,
        *,
        interval_s: float = 1.0,
        process: int | None = None,
        version: int = 0,
    ) -> None:
        self.flow_id = flow_id
        self.version = version
        """The flow version the process started with."""
        self._devices: dict[str, int] = {}
        """The config version each device polled by this process runs (hot changes move it)."""
        self._device_stats: list[Callable[[], Mapping[str, Any]]] = []
        """Sources of per-device poll statistics (a polling source's ``stats``), read at each publish."""
        self.mqtt_url = mqtt_url
        self.interval_s = interval_s
        self.process = bytewax_process_id() if process is None else process
        self.topic = status_topic(flow_id, self.process)
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

    def add_device_stats(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Publish ``stats()`` (device id → :class:`connectors.polling.PartitionStats`) per device:
        polls, skipped polls, failures, breaker state, last poll latency, current interval."""
        with self._lock:
            self._device_stats.append(stats)

    def forget_device(self, device_id: str) -> None:
        with self._lock:
            self._devices.pop(device_id, None)

    def snapshot(self, state: str = "running") -> dict[str, object]:
        with self._lock:
            counts = dict(self._counts)
            devices: dict[str, dict[str, Any]] = {d: {"version": v} for d, v in self._devices.items()}
            providers = list(self._device_stats)
        for provider in providers:
            for device_id, st in provider().items():
                devices.setdefault(device_id, {}).update(_poll_stats(st))
        return {
            "flow": self.flow_id,
            "process": self.process,
            "state": state,
            "host": socket.gethostname(),
            "version": self.version,
            "devices": dict(sorted(devices.items())),
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
            self.topic,
            json.dumps({"flow": self.flow_id, "process": self.process, "state": "offline"}),
            qos=1,
            retain=True,
        )
        client.connect_async(url.host, url.port, keepalive=30)
        client.loop_start()
        self._client = client
        self._thread = threading.Thread(target=self._run, name=f"status-{self.flow_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            name_os_threads()  # top -H, ps -L: the flow's threads by name (core.threads)
            self._publish("running")

    def _publish(self, state: str) -> None:
        if self._client is not None and self._client.is_connected():
            self._client.publish(self.topic, json.dumps(self.snapshot(state)), qos=1, retain=True)

    def stop(self) -> None:
        """Clean stop: a last ``stopped`` message (not retained), then the retained status is
        cleared and the connection closed normally (so the broker does not send the will).
        Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        client, self._client = self._client, None
        if client is None:
            return
        if client.is_connected():
            infos = [
                client.publish(self.topic, json.dumps(self.snapshot("stopped")), qos=1, retain=False),
                client.publish(self.topic, b"", qos=1, retain=True),  # clears the retained status
            ]
            for info in infos:
                try:
                    info.wait_for_publish(timeout=2)
                except (RuntimeError, ValueError):
                    log.warning("flow status: final publish not confirmed")
        client.disconnect()
        client.loop_stop()
