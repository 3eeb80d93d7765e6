"""``nexus demo``: embedded services, simulated PLCs and the telemetry dataflow, with live progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

from connectors.modbus.config import ModbusConnection
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.mqtt.url import parse_mqtt_url
from core.settings import Settings
from dataflows.spec import FlowSpec, ModbusDeviceSpec, load_spec
from nexus.embedded import EmbeddedBroker, EmbeddedPostgres

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def simulators_for(spec: FlowSpec) -> list[ModbusSimulator]:
    """One simulator per loopback host:port of the spec's devices; devices share it by unit id."""
    by_port: dict[int, list[SimulatedDevice]] = {}
    for device in spec.devices:
        if not isinstance(device, ModbusDeviceSpec) or not isinstance(device.connection, ModbusConnection):
            continue  # the demo simulates Modbus TCP devices
        conn = device.connection
        if conn.host not in LOOPBACK or conn.transport != "tcp":
            continue
        tags = [SimTag(address=t.modbus_address(), signal=t.simulate) for t in device.tags]
        by_port.setdefault(conn.port, []).append(SimulatedDevice(device.id, conn.unit_id, tags))
    return [
        ModbusSimulator(host="127.0.0.1", port=port, devices=devs) for port, devs in sorted(by_port.items())
    ]


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
        mqtt_url = settings.mqtt_url
        if not mqtt_url:
            broker = EmbeddedBroker(port=settings.mqtt_port)
            print("starting embedded MQTT broker ...", flush=True)
            broker.start()
            stack.callback(broker.stop)
            mqtt_url = broker.url
        yield db_url, mqtt_url


@contextmanager
def simulated_devices(spec: FlowSpec) -> Iterator[list[ModbusSimulator]]:
    sims = simulators_for(spec)
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
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"nexus-demo-{os.getpid()}")
        if url.username:
            self._client.username_pw_set(url.username, url.password)
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
    return f"""
NEXUS Edge demo is running: flow {spec.id!r} from {spec_path}
  {len(spec.devices)} devices, {tags} tags
  database  {db_url}
  broker    {url.redacted()}

Look at the data:
  mosquitto_sub -h {url.host} -p {url.port}{auth} -t '{enterprise}/#' -v
  psql '{db_url}' -c "SELECT p.time, t.uns_path, p.value, p.quality FROM nexus_points p JOIN nexus_tags t USING (tag_id) ORDER BY p.time DESC LIMIT 20"
Flow status: mosquitto_sub -h {url.host} -p {url.port}{auth} -t '$nexus/status/#' -v
Press Ctrl-C to stop.
"""


def _stop_flow(proc: subprocess.Popen[bytes]) -> int:
    """Drain (SIGTERM), then abort (SIGINT), then kill, each with a deadline."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def run_demo(settings: Settings, spec_path: Path, *, duration_s: float | None = None) -> int:
    spec = load_spec(spec_path)  # refuse a bad spec before anything starts
    with services(settings) as (db_url, mqtt_url), simulated_devices(spec):
        env = {
            **os.environ,
            "NEXUS_DATABASE_URL": db_url,
            "NEXUS_MQTT_URL": mqtt_url,
            "NEXUS_SPEC": str(spec_path.resolve()),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflows.telemetry:flow"],
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo, which drains the flow itself
        )
        progress = Progress(spec, mqtt_url, db_url)
        print(_banner(spec, spec_path, db_url, mqtt_url), flush=True)
        started = time.monotonic()
        last = (0, 0, 0)
        code = 0
        try:
            while duration_s is None or time.monotonic() - started < duration_s:
                time.sleep(1.0)  # the progress display ticks once a second
                if proc.poll() is not None:
                    print(f"\nthe dataflow exited with code {proc.returncode}; see its log above", flush=True)
                    code = 1
                    break
                progress.poll_db()
                now = (progress.read, progress.published, progress.stored)
                rates = [b - a for a, b in zip(last, now, strict=True)]
                last = now
                print(
                    f"  {time.monotonic() - started:6.0f}s  read {rates[0]:6d} pts/s ({now[0]})"
                    f"  published {rates[1]:6d} msg/s ({now[1]})  stored {rates[2]:6d} rows/s ({now[2]})",
                    flush=True,
                )
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
        finally:
            progress.close()
            rc = _stop_flow(proc)
            if rc not in (0, -signal.SIGTERM) and code == 0:
                code = rc
        print("stopped: dataflow, simulators, broker and database", flush=True)
        return code


def run_services(settings: Settings) -> int:
    with services(settings) as (db_url, mqtt_url):
        print(f"database  {db_url}\nbroker    {parse_mqtt_url(mqtt_url).redacted()}\nPress Ctrl-C to stop.")
        with suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


def run_simulators(spec: FlowSpec) -> int:
    with simulated_devices(spec) as sims:
        for sim in sims:
            print(f"simulating {', '.join(d.device_id for d in sim.devices)} on 127.0.0.1:{sim.port}")
        print("Press Ctrl-C to stop.")
        with suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0
