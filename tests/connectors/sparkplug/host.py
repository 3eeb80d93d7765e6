"""An independent Sparkplug host for the tests: paho-mqtt for transport, pysparkplug for every payload.

Nothing here uses the project's encoder: payloads are decoded (and commands encoded) by pysparkplug
(https://pypi.org/project/pysparkplug/), and metric properties, which pysparkplug does not expose, are
read from pysparkplug's own generated protobuf module. The host keeps every message with its MQTT
QoS and retain flag, the last birth per edge node and device (to resolve DDATA aliases), and checks
the node's ``seq`` over every message (tck-id-payloads-sequence-num-incrementing).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest

pysparkplug = pytest.importorskip(
    "pysparkplug", reason="the test host needs pysparkplug: `just setup` installs it (pip --no-deps)"
)
from pysparkplug import _protobuf as spb_pb  # noqa: E402 - after the importorskip

from connectors.mqtt.url import parse_mqtt_url  # noqa: E402
from tests.conftest import wait_for  # noqa: E402

DECODERS: dict[str, Any] = {
    "NBIRTH": pysparkplug.NBirth,
    "DBIRTH": pysparkplug.DBirth,
    "NDATA": pysparkplug.NData,
    "DDATA": pysparkplug.DData,
    "NDEATH": pysparkplug.NDeath,
    "DDEATH": pysparkplug.DDeath,
    "NCMD": pysparkplug.NCmd,
    "DCMD": pysparkplug.DCmd,
}


@dataclass
class Received:
    kind: str
    edge_node: str
    device: str | None
    qos: int
    retain: bool
    payload: Any
    """pysparkplug's decoded payload (DDATA names and datatypes resolved from the DBIRTH)."""
    raw: Any
    """pysparkplug's protobuf ``Payload`` (to see what was on the wire: aliases, properties)."""

    def metrics(self) -> dict[str, Any]:
        return {m.name: m for m in self.payload.metrics}

    def properties(self, name: str) -> dict[str, Any]:
        """The metric's property set as ``{key: value}`` (from the raw protobuf)."""
        names = [m.name for m in self.payload.metrics]  # decoded names (aliases resolved), in wire order
        m = self.raw.metrics[names.index(name)]
        out = {}
        for key, pv in zip(m.properties.keys, m.properties.values, strict=True):
            out[key] = pv.string_value if pv.type == 12 else pv.int_value
        return out


class Host:
    """Subscribes to ``spBv1.0/{group}/#`` and keeps what arrives; sends NCMD, DCMD and STATE."""

    def __init__(self, url: str, group: str) -> None:
        u = parse_mqtt_url(url)
        self.group = group
        self.messages: list[Received] = []
        self.births: dict[tuple[str, str | None], Any] = {}
        self.seq_errors: list[str] = []
        self._last_seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-host-{id(self)}")
        c.on_connect = lambda cl, *_: cl.subscribe([(f"spBv1.0/{group}/#", 1)])
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.on_message = self._on_message
        c.connect(u.host, u.port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), "host subscription"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        topic = pysparkplug.Topic.from_str(msg.topic)
        kind = str(topic.message_type)
        if kind not in DECODERS or kind in ("NCMD", "DCMD"):
            return  # commands are the host's own (or a test's deliberate garbage)
        edge, device = topic.edge_node_id, topic.device_id
        raw = spb_pb.Payload.FromString(msg.payload)
        birth = None
        if kind in ("DDATA", "NDATA"):
            birth = self.births.get((edge, device if kind == "DDATA" else None))
        payload = DECODERS[kind].decode(bytes(msg.payload), birth=birth) if kind != "DDATA" or birth else None
        with self._lock:
            if kind in ("NBIRTH", "DBIRTH"):
                self.births[(edge, device)] = payload
            if kind not in ("NDEATH", "NCMD", "DCMD"):
                seq = raw.seq
                last = self._last_seq.get(edge)
                if kind == "NBIRTH":
                    if seq != 0:
                        self.seq_errors.append(f"NBIRTH with seq {seq}")
                elif last is None or seq != (last + 1) % 256:
                    self.seq_errors.append(f"{kind} seq {seq} after {last}")
                self._last_seq[edge] = seq
            self.messages.append(Received(kind, edge, device, msg.qos, bool(msg.retain), payload, raw))

    def of(self, kind: str, device: str | None = None, edge: str | None = None) -> list[Received]:
        with self._lock:
            return [
                m
                for m in self.messages
                if m.kind == kind
                and (device is None or m.device == device)
                and (edge is None or m.edge_node == edge)
            ]

    def wait(
        self, kind: str, count: int = 1, device: str | None = None, timeout: float = 15.0
    ) -> list[Received]:
        return wait_for(
            lambda: (found := self.of(kind, device)) and len(found) >= count and found,
            timeout=timeout,
            what=f"{count} {kind} message(s){' of ' + device if device else ''}",
        )

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def ncmd(self, edge: str, name: str, value: Any, datatype: Any) -> None:
        metric = pysparkplug.Metric(
            timestamp=pysparkplug.get_current_timestamp(), name=name, datatype=datatype, value=value
        )
        payload = pysparkplug.NCmd(timestamp=pysparkplug.get_current_timestamp(), metrics=(metric,))
        self.client.publish(f"spBv1.0/{self.group}/NCMD/{edge}", payload.encode(include_dtypes=True), qos=0)

    def dcmd(
        self,
        edge: str,
        device: str,
        value: Any,
        *,
        name: str | None = None,
        alias: int | None = None,
        datatype: Any,
    ) -> None:
        metric = pysparkplug.Metric(
            timestamp=pysparkplug.get_current_timestamp(),
            name=name,
            alias=alias,
            datatype=datatype,
            value=value,
        )
        payload = pysparkplug.DCmd(timestamp=pysparkplug.get_current_timestamp(), metrics=(metric,))
        self.client.publish(
            f"spBv1.0/{self.group}/DCMD/{edge}/{device}", payload.encode(include_dtypes=True), qos=0
        )

    def state(self, host_id: str, online: bool, timestamp: int) -> None:
        """The primary host's STATE (JSON, QoS 1, retained), encoded by pysparkplug."""
        body = pysparkplug.State(timestamp=timestamp, online=online).encode()
        self.client.publish(f"spBv1.0/STATE/{host_id}", body, qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
