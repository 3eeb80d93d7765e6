"""The parts ``nexus demo`` / ``nexus up --simulate`` are made of: embedded services, simulated PLCs,
live progress; and ``nexus services`` / ``nexus simulate``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg

from connectors.modbus.config import ModbusConnection
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from connectors.opcua.config import parse_node_id
from connectors.opcua.simulator import OpcUaSimulator, SimVariable
from connectors.s7.address import S7Address
from connectors.s7.simulator import S7Simulator
from connectors.signals import Signal
from core.settings import Settings, redact_url, url_without_password
from dataflows.spec import FlowSpec, ModbusDeviceSpec, OpcUaDeviceSpec, S7DeviceSpec
from nexus.embedded import EmbeddedBroker, EmbeddedPostgres, port_is_free

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
OPCUA_SIM_PKI = Path(".nexus/opcua/sim-pki")
"""Where a simulated secure OPC UA server keeps its certificate (the client trusts it unless the
spec lists ``trusted_server_certs``)."""


class Simulator(Protocol):
    """What every protocol's simulator offers the demo: start serving, stop serving."""

    def start(self) -> object: ...

    def stop(self) -> None: ...


def simulators_for(spec: FlowSpec, *, opcua_cert_dir: Path = OPCUA_SIM_PKI) -> list[Simulator]:
    """Simulated servers for the spec's loopback devices, with the signals of the tags' ``simulate:``.

    - Modbus TCP: one :class:`ModbusSimulator` per port; devices share it by unit id.
    - OPC UA: one :class:`OpcUaSimulator` per host:port, serving exactly the node ids the tags
      name (``ns=2;s=Zone1``, also numeric ones; see the simulator for namespace indexes). A
      variable's browse name is the node id's string identifier (the tag name for other kinds);
      it is a Double, an Int32 for a ``counter`` signal, writable for a ``read_write`` tag. The
      endpoint path, security mode/policy and username/password come from the device's connection.
    - S7: one :class:`S7Simulator` per host:port; each DB is as large as the spec's addresses need
      (rounded up to 16 bytes), M/I/Q at least their defaults.

    Devices that share a server share its address space: the same node id (address) on two of
    them is one variable (the first tag's signal drives it). Tags without ``simulate`` hold 0.
    """
    sims: list[Simulator] = []
    sims += _modbus_simulators(spec)
    sims += _opcua_simulators(spec, opcua_cert_dir)
    sims += _s7_simulators(spec)
    return sims


def _modbus_simulators(spec: FlowSpec) -> list[ModbusSimulator]:
    by_port: dict[int, list[SimulatedDevice]] = {}
    for device in spec.devices:
        if not isinstance(device, ModbusDeviceSpec) or not isinstance(device.connection, ModbusConnection):
            continue  # Modbus TCP only: an RTU line has no loopback port to serve
        conn = device.connection
        if conn.host not in LOOPBACK or conn.transport != "tcp":
            continue
        tags = [SimTag(address=t.modbus_address(), signal=t.simulate) for t in device.tags]
        by_port.setdefault(conn.port, []).append(SimulatedDevice(device.id, conn.unit_id, tags))
    return [
        ModbusSimulator(host="127.0.0.1", port=port, devices=devs) for port, devs in sorted(by_port.items())
    ]


@dataclass
class _OpcUaServer:
    host: str
    port: int
    path: str
    variables: dict[str, SimVariable] = field(default_factory=dict)
    """By node id."""
    security: list[str] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)


def _opcua_simulators(spec: FlowSpec, cert_dir: Path) -> list[OpcUaSimulator]:
    servers: dict[tuple[str, int], _OpcUaServer] = {}
    for device in spec.devices:
        if not isinstance(device, OpcUaDeviceSpec):
            continue
        conn = device.connection
        url = urlsplit(conn.endpoint)
        host = url.hostname or ""
        if host not in LOOPBACK:
            continue
        port = url.port or 4840
        server = servers.setdefault((host, port), _OpcUaServer(host, port, url.path or "/"))
        policy = (
            "NoSecurity" if conn.security_mode == "None" else f"{conn.security_policy}_{conn.security_mode}"
        )
        if policy not in server.security:
            server.security.append(policy)
        if conn.username is not None and conn.password is not None:
            server.users[conn.username] = conn.password.get_secret_value()
        taken = {v.name for v in server.variables.values()}
        for tag in device.tags:
            if tag.node_id in server.variables:
                continue  # another device of this server names it too
            nid = parse_node_id(tag.node_id)
            name = nid.Identifier if isinstance(nid.Identifier, str) else tag.name
            base, k = name, 1
            while name in taken:  # e.g. ns=2;s=X and ns=3;s=X
                k += 1
                name = f"{base}~{k}"
            taken.add(name)
            sig = tag.simulate
            server.variables[tag.node_id] = SimVariable(
                name=name,
                data_type="Int32" if sig is not None and sig.kind == "counter" else "Double",
                initial=sig.value_at(0.0, None) if sig is not None else 0.0,
                signal=sig.sampler(device.id, tag.node_id) if sig is not None else None,
                writable=tag.access == "read_write",
                node_id=tag.node_id,
            )
    return [
        OpcUaSimulator(
            list(s.variables.values()),
            host=s.host,
            port=s.port,
            path=s.path,
            security=s.security,
            users=s.users or None,
            cert_dir=cert_dir if s.security != ["NoSecurity"] else None,
        )
        for _, s in sorted(servers.items())
    ]


def _s7_simulators(spec: FlowSpec) -> list[S7Simulator]:
    tags_by_server: dict[tuple[str, int], list[tuple[S7Address, Signal | None]]] = {}
    for device in spec.devices:
        if not isinstance(device, S7DeviceSpec) or device.connection.host not in LOOPBACK:
            continue
        server = tags_by_server.setdefault((device.connection.host, device.connection.port), [])
        server += [(t.s7_address().parsed, t.simulate) for t in device.tags]
    sims = []
    for (host, port), tags in sorted(tags_by_server.items()):
        need: dict[tuple[str, int], int] = {}
        for addr, _ in tags:
            key = (addr.area, addr.db or 0)
            need[key] = max(need.get(key, 0), addr.byte + addr.size)
        dbs = {db: -(-size // 16) * 16 for (area, db), size in need.items() if area == "DB"}
        sim = S7Simulator(
            host,
            port,
            dbs=dbs or None,
            m_size=max(256, need.get(("M", 0), 0)),
            i_size=max(64, need.get(("I", 0), 0)),
            q_size=max(64, need.get(("Q", 0), 0)),
        )
        driven: set[str] = set()
        for addr, sig in tags:
            if sig is not None and addr.notation() not in driven:
                driven.add(addr.notation())
                sim.add_signal(addr.notation(), sig, addr.data_type, length=addr.length)
        sims.append(sim)
    return sims


def describe(sim: Simulator) -> str:
    """One line saying what a simulator serves, and where."""
    if isinstance(sim, ModbusSimulator):
        units = ", ".join(f"{d.device_id} (unit {d.unit_id})" for d in sim.devices)
        return f"Modbus TCP  127.0.0.1:{sim.port}  {units}"
    if isinstance(sim, OpcUaSimulator):
        nodes = ", ".join(sim.node_id(name) for name in sim.variables)
        return f"OPC UA      {sim.endpoint}  {len(sim.variables)} variables: {nodes}"
    if isinstance(sim, S7Simulator):
        dbs = ", ".join(f"DB{n} ({len(sim.raw('DB', n))} B)" for n in sim.db_numbers)
        return f"S7          {sim.host}:{sim.port}  {dbs or 'no DBs'}, M/I/Q areas"
    return repr(sim)


@contextmanager
def services(settings: Settings) -> Iterator[tuple[str, str]]:
    """The configured database and broker, starting embedded ones for those not configured."""
    with ExitStack() as stack:
        db_url = settings.database_url
        if not db_url:
            pg = EmbeddedPostgres(settings.data_dir / "pg", port=settings.pg_port)
            print(f"starting embedded PostgreSQL (data in {pg.data_dir}) ...", flush=True)
            pg.start()
            stack.callback(pg.stop)
            db_url = pg.url
        mqtt_url = settings.effective_mqtt_url if settings.mqtt_url else None  # with its TLS files
        if not mqtt_url:
            broker = EmbeddedBroker(port=settings.mqtt_port)
            print("starting embedded MQTT broker ...", flush=True)
            broker.start()
            stack.callback(broker.stop)
            mqtt_url = broker.url
        yield db_url, mqtt_url


class SimulatorPortBusyError(ValueError):
    """A simulated device's port is taken by another program: the message is one line naming the
    port, the devices and the spec fields that set it (``nexus`` prints it without a traceback)."""


def _port_fields(spec: FlowSpec, host: str, port: int) -> list[str]:
    """``devices[i].connection.port`` (``.endpoint`` for OPC UA) of the loopback devices on ``port``."""
    found = []
    for i, device in enumerate(spec.devices):
        conn = device.connection
        if isinstance(device, OpcUaDeviceSpec):
            url = urlsplit(device.connection.endpoint)
            if url.hostname in LOOPBACK and (url.port or 4840) == port:
                found.append(f"devices[{i}].connection.endpoint ({device.id})")
        elif (
            isinstance(device, ModbusDeviceSpec | S7DeviceSpec)
            and getattr(conn, "host", None) in LOOPBACK
            and getattr(conn, "port", None) == port
        ):
            found.append(f"devices[{i}].connection.port ({device.id})")
    return found


def check_simulator_ports(spec: FlowSpec, sims: list[Simulator], where: str = "the spec") -> None:
    """Raise :class:`SimulatorPortBusyError` when a simulator's port is already taken, before any starts."""
    for sim in sims:
        host, port = getattr(sim, "host", "127.0.0.1"), getattr(sim, "port", 0)
        if port and not port_is_free(host, port):
            fields = ", ".join(_port_fields(spec, port=port, host=host)) or "the device's port"
            raise SimulatorPortBusyError(
                f"cannot simulate on {host}:{port}: the port is in use by another program; "
                f"choose a free port in {fields} of {where}"
            )


@contextmanager
def simulated_devices(spec: FlowSpec, where: str = "the spec") -> Iterator[list[Simulator]]:
    """Start every simulator of :func:`simulators_for`; stop them all on the way out.

    A port already in use ends in :class:`SimulatorPortBusyError` (naming the spec field to change)
    before any simulator starts, instead of a library traceback from deep inside the server.
    """
    sims = simulators_for(spec)
    check_simulator_ports(spec, sims, where)
    with ExitStack() as stack:
        for sim in sims:
            sim.start()
            stack.callback(sim.stop)
        yield sims


class Progress:
    """Counts what reaches the broker and the historian, and what the flow reports it read."""

    def __init__(self, spec: FlowSpec, mqtt_url: str, db_url: str) -> None:
        self.spec = spec
        self.db_url = db_url
        self.read = 0
        self.published = 0
        self.stored = 0
        self._reads: dict[str, int] = {}
        self._lock = threading.Lock()
        self._since = time.time()
        url = parse_mqtt_url(mqtt_url)
        self._client = make_client(url, unique_client_id("nexus-demo"))
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async(url.host, url.port)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        for enterprise in sorted({d.location.enterprise for d in self.spec.devices}):
            client.subscribe(f"{enterprise}/#", qos=0)
        client.subscribe(f"$nexus/status/flows/{self.spec.id}/#", qos=0)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("$nexus/status/"):
            try:
                report = json.loads(msg.payload)
                with self._lock:
                    self._reads[msg.topic] = int(report.get("points_read", 0))
                    self.read = sum(self._reads.values())
            except (ValueError, TypeError):
                pass
        else:
            with self._lock:
                self.published += 1

    def poll_db(self) -> None:
        try:
            with psycopg.connect(self.db_url, connect_timeout=2) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM nexus_points WHERE time >= to_timestamp(%s)", (self._since,)
                ).fetchone()
                self.stored = int(row[0]) if row else 0
        except psycopg.Error:
            pass  # the table appears when the flow's historian sink starts

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _banner(spec: FlowSpec, spec_path: Path, db_url: str, mqtt_url: str) -> str:
    url = parse_mqtt_url(mqtt_url)
    enterprise = spec.devices[0].location.enterprise
    auth = f" -u {url.username} -P '***'" if url.username else ""
    tags = sum(len(d.tags) for d in spec.devices)
    # The password never reaches the terminal: psql asks for it when the URL needs one.
    psql_url = url_without_password(db_url)
    return f"""
NEXUS Edge demo is running: flow {spec.id!r} from {spec_path}
  {len(spec.devices)} devices, {tags} tags
  database  {redact_url(db_url)}
  broker    {url.redacted()}

Look at the data:
  mosquitto_sub -h {url.host} -p {url.port}{auth} -t '{enterprise}/#' -v
  psql '{psql_url}' -c "SELECT p.time, t.uns_path, p.value, p.quality FROM nexus_points p JOIN nexus_tags t USING (tag_id) ORDER BY p.time DESC LIMIT 20"
Flow status: mosquitto_sub -h {url.host} -p {url.port}{auth} -t '$nexus/status/#' -v
Press Ctrl-C to stop.
"""


def services_banner(db_url: str, mqtt_url: str) -> str:
    """What ``nexus services`` prints: where the services are, passwords masked."""
    return f"database  {redact_url(db_url)}\nbroker    {parse_mqtt_url(mqtt_url).redacted()}\nPress Ctrl-C to stop."


def run_services(settings: Settings) -> int:
    with services(settings) as (db_url, mqtt_url):
        print(services_banner(db_url, mqtt_url), flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


def run_simulators(spec: FlowSpec, where: str = "the spec") -> int:
    with simulated_devices(spec, where) as sims:
        if not sims:
            print("nothing to simulate: no device of the spec is on a loopback address")
            return 1
        for sim in sims:
            print(f"simulating {describe(sim)}")
        print("Press Ctrl-C to stop.")
        with suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0
