"""A simulated OPC UA server: asyncua's own server, populated from a list of variables.

:class:`OpcUaSimulator` runs the server in its own thread and event loop, so tests and the demo
drive it from plain synchronous code. Every variable lives under one object (``object_name``) in
one namespace, with a string node id ``ns=<idx>;s=<name>`` — or with the exact node id it is given
(``SimVariable.node_id``, e.g. ``ns=2;s=Line1.Temp`` or ``ns=3;i=1001``, as a flow spec names it):
namespaces are registered until every index such a node id uses exists (the simulator's own
namespace is index 2, the first one after OPC UA's and the server's; higher indexes get filler
namespaces ``<namespace>:ns<k>``). Namespace 0 belongs to the OPC UA standard and is refused.

- values: :meth:`~OpcUaSimulator.set_value` (optionally with a SourceTimestamp),
  :meth:`~OpcUaSimulator.get_value`; a variable with a ``signal`` is refreshed every
  ``update_interval_s`` with ``signal(t)`` (``t``: seconds since start) — see :func:`sine`,
  :func:`ramp` and :func:`counter`;
- security: ``security=("Basic256Sha256_SignAndEncrypt",)`` (any ``ua.SecurityPolicyType`` name)
  with a server certificate generated into ``cert_dir`` (reused when present); ``users`` switches
  to username/password authentication (anonymous sessions are refused);
- faults: :meth:`~OpcUaSimulator.outage` drops every connection and stops listening,
  :meth:`~OpcUaSimulator.restore` listens again on the same port (values and address space
  survive); :meth:`~OpcUaSimulator.set_status` gives a node a Bad (or Uncertain) status.

>>> sine(amplitude=2.0, period_s=4.0)(1.0)
2.0
>>> [counter(period_s=10.0)(t) for t in (0, 9.9, 10, 25)]
[0, 0, 1, 2]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer

from connectors.opcua.certs import ensure_application_certificate

log = logging.getLogger(__name__)

T = TypeVar("T")

SimDataType = Literal[
    "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double", "String"
]  # fmt: skip
SimValue = bool | int | float | str


def sine(amplitude: float = 1.0, period_s: float = 60.0, offset: float = 0.0) -> Callable[[float], float]:
    """``offset + amplitude * sin(2 pi t / period_s)``."""
    return lambda t: offset + amplitude * math.sin(2 * math.pi * t / period_s)


def ramp(amplitude: float = 1.0, period_s: float = 60.0, offset: float = 0.0) -> Callable[[float], float]:
    """A sawtooth from ``offset`` to ``offset + amplitude`` every ``period_s``."""
    return lambda t: offset + amplitude * (t % period_s) / period_s


def counter(period_s: float = 1.0, start: int = 0) -> Callable[[float], int]:
    """A part counter: ``start + floor(t / period_s)``."""
    return lambda t: start + int(t // period_s)


@dataclass(frozen=True, slots=True)
class SimVariable:
    """One simulated variable: its browse name, type and behaviour.

    Its node id is ``node_id`` when given (served exactly), else ``ns=<simulator's index>;s=<name>``.
    """

    name: str
    data_type: SimDataType = "Double"
    initial: SimValue = 0
    signal: Callable[[float], SimValue] | None = None
    writable: bool = False
    node_id: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("SimVariable name must not be empty")
        if not hasattr(ua.VariantType, self.data_type):
            raise ValueError(f"data_type {self.data_type!r} is not an OPC UA built-in type")
        if self.node_id is not None:
            try:
                nid = ua.NodeId.from_string(self.node_id)
            except Exception:
                raise ValueError(f"node_id {self.node_id!r} is not an OPC UA node id") from None
            if nid.NamespaceIndex == 0:
                raise ValueError(
                    f"node_id {self.node_id!r}: namespace 0 is the OPC UA standard's; use ns=1 or above"
                )


class _PasswordUsers:
    """asyncua user manager: a user is let in when the password matches."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_INT_BITS = {"SByte": (8, True), "Byte": (8, False), "Int16": (16, True), "UInt16": (16, False),
             "Int32": (32, True), "UInt32": (32, False), "Int64": (64, True), "UInt64": (64, False)}  # fmt: skip


def _variant(value: SimValue, data_type: str) -> ua.Variant:
    """``value`` fitted to ``data_type``: a float signal is rounded and clamped for an integer type,
    true from 0.5 for a Boolean, formatted for a String."""
    vt = getattr(ua.VariantType, data_type)
    if vt == ua.VariantType.Boolean:
        return ua.Variant(value >= 0.5 if isinstance(value, float) else bool(value), vt)
    if vt in (ua.VariantType.Float, ua.VariantType.Double):
        return ua.Variant(float(value), vt)
    if vt == ua.VariantType.String:
        return ua.Variant(f"{value:g}" if isinstance(value, float) else str(value), vt)
    bits, signed = _INT_BITS[data_type]
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if isinstance(value, float):
        value = round(value) if math.isfinite(value) else 0
    return ua.Variant(min(max(int(value), low), high), vt)


class OpcUaSimulator:
    """An OPC UA server on ``host:port`` (``port=0``: a free port, kept across :meth:`restore`)."""

    def __init__(
        self,
        variables: Sequence[SimVariable],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        namespace: str = "urn:nexus-edge:simulator",
        object_name: str = "Simulator",
        security: Sequence[str] = ("NoSecurity",),
        users: Mapping[str, str] | None = None,
        cert_dir: str | Path | None = None,
        application_uri: str = "urn:nexus-edge:simulator",
        update_interval_s: float = 0.5,
        path: str = "/nexus/sim",
    ) -> None:
        names = [v.name for v in variables]
        if len(set(names)) != len(names):
            raise ValueError("SimVariable names must be unique")
        explicit = [v.node_id for v in variables if v.node_id is not None]
        if len(set(explicit)) != len(explicit):
            raise ValueError("SimVariable node ids must be unique")
        if path and not path.startswith("/"):
            raise ValueError(f"`path` must start with '/', got {path!r}")
        policies = []
        for name in security:
            if not hasattr(ua.SecurityPolicyType, name):
                raise ValueError(f"security {name!r} is not a ua.SecurityPolicyType name")
            policies.append(getattr(ua.SecurityPolicyType, name))
        if any(p != ua.SecurityPolicyType.NoSecurity for p in policies) and cert_dir is None:
            raise ValueError("a secure endpoint needs `cert_dir` for the server certificate")
        if not update_interval_s > 0:
            raise ValueError(f"`update_interval_s` must be > 0, got {update_interval_s}")
        self.variables = {v.name: v for v in variables}
        self.host = host
        self.port = port or _free_port(host)
        self.namespace = namespace
        self.object_name = object_name
        self.application_uri = application_uri
        self.update_interval_s = update_interval_s
        self.path = path
        self._policies = policies
        self._users = dict(users) if users else None
        self._cert_dir = Path(cert_dir) if cert_dir is not None else None
        self.certificate_path: Path | None = None
        """The server certificate (DER) when a secure endpoint is configured: what clients trust."""
        self._server: Server | None = None
        self._ns = 0
        self._nodes: dict[str, ua.NodeId] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._signals: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()
        self.listening = False

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    def node_id(self, name: str) -> str:
        """The node id string of a variable (its ``node_id``, else ``ns=<idx>;s=<name>``)."""
        if name not in self.variables:
            raise KeyError(f"no simulated variable {name!r}")
        given = self.variables[name].node_id
        if given is not None:
            return given
        return f"ns={self._ns};s={name}" if self._ns else self._nodes[name].to_string()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> OpcUaSimulator:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"opcua-sim:{self.port}", daemon=True)
        self._thread.start()
        self._call(self._start(), timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._stop(), timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None
        self._loop = None

    def outage(self) -> None:
        """Drop every client connection and stop listening (the address space is kept)."""
        self._call(self._outage())

    def restore(self) -> None:
        """Listen again on the same port after :meth:`outage`."""
        self._call(self._restore())

    def __enter__(self) -> OpcUaSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- values ------------------------------------------------------------------------------------

    def set_value(self, name: str, value: SimValue, *, source_ts: dt.datetime | None = None) -> None:
        """Set a variable (Good status) with ``source_ts`` (default: now) as its SourceTimestamp."""
        self._call(self._write(name, value, ua.StatusCodes.Good, source_ts))

    def set_values(self, values: Mapping[str, SimValue]) -> None:
        """Set many variables in one call into the server's loop."""

        async def write_all() -> None:
            for name, value in values.items():
                await self._write(name, value, ua.StatusCodes.Good, None)

        self._call(write_all())

    def set_status(self, name: str, status: str | int, value: SimValue | None = None) -> None:
        """Give a variable a status (a ``ua.StatusCodes`` name or value), keeping or replacing its value."""
        code = getattr(ua.StatusCodes, status) if isinstance(status, str) else status
        self._call(self._write(name, value, code, None))

    def get_value(self, name: str) -> Any:
        """The variable's current value (what a client would read)."""
        assert self._server is not None
        dv = self._server.read_attribute_value(self._nodes[name])
        return dv.Value.Value if dv.Value is not None else None

    def get_data_value(self, name: str) -> ua.DataValue:
        assert self._server is not None
        return self._server.read_attribute_value(self._nodes[name])

    # -- internals ---------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("simulator is not running")
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    async def _start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("NEXUS Edge OPC UA simulator")
        await server.set_application_uri(self.application_uri)
        server.set_security_policy(self._policies)
        if self._cert_dir is not None and any(p != ua.SecurityPolicyType.NoSecurity for p in self._policies):
            cert, key = await asyncio.to_thread(
                ensure_application_certificate, self._cert_dir, self.application_uri, server=True
            )
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            self.certificate_path = cert
        if self._users is not None:
            server.iserver.set_user_manager(_PasswordUsers(self._users))  # type: ignore[arg-type]
            server.set_identity_tokens([ua.UserNameIdentityToken])
        self._ns = await server.register_namespace(self.namespace)
        nids = {
            v.name: ua.NodeId.from_string(v.node_id)
            if v.node_id is not None
            else ua.NodeId(ua.String(v.name), ua.Int16(self._ns))
            for v in self.variables.values()
        }
        top = max((n.NamespaceIndex for n in nids.values()), default=self._ns)
        index = self._ns
        while index < top:  # filler namespaces so the node ids' indexes exist
            index = await server.register_namespace(f"{self.namespace}:ns{index + 1}")
        obj_nid = ua.NodeId(ua.String(self.object_name), ua.Int16(self._ns))
        if obj_nid in nids.values():
            obj_nid = ua.NodeId(ua.String(f"{self.object_name}.Folder"), ua.Int16(self._ns))
        obj = await server.nodes.objects.add_object(obj_nid, self.object_name)
        for v in self.variables.values():
            nid = nids[v.name]
            node = await obj.add_variable(
                nid, ua.QualifiedName(v.name, nid.NamespaceIndex), _variant(v.initial, v.data_type).Value,
                varianttype=getattr(ua.VariantType, v.data_type),
            )  # fmt: skip
            if v.writable:
                await node.set_writable()
            self._nodes[v.name] = nid
        await server.start()
        self._server = server
        self.listening = True
        self._t0 = time.monotonic()
        if any(v.signal is not None for v in self.variables.values()):
            self._signals = asyncio.create_task(self._signal_loop())
        log.info("opcua simulator listening endpoint=%s variables=%d", self.endpoint, len(self.variables))

    async def _stop(self) -> None:
        if self._signals is not None:
            self._signals.cancel()
            with contextlib.suppress(BaseException):
                await self._signals
        if self._server is not None:
            if not self.listening:  # the binary server is already closed
                self._server.bserver = None
            await self._server.stop()
        self.listening = False

    async def _outage(self) -> None:
        server = self._server
        assert server is not None
        if self.listening and server.bserver is not None:
            await server.bserver.stop()
        self.listening = False
        log.info("opcua simulator outage endpoint=%s", self.endpoint)

    async def _restore(self) -> None:
        server = self._server
        assert server is not None
        if self.listening:
            return
        bserver = BinaryServer(server.iserver, self.host, self.port, server.limits)
        bserver.set_policies(server._policies)
        await bserver.start()
        server.bserver = bserver
        self.listening = True
        log.info("opcua simulator restored endpoint=%s", self.endpoint)

    async def _write(
        self, name: str, value: SimValue | None, code: int, source_ts: dt.datetime | None
    ) -> None:
        server = self._server
        assert server is not None
        v = self.variables[name]
        nid = self._nodes[name]
        variant = server.read_attribute_value(nid).Value if value is None else _variant(value, v.data_type)
        now = dt.datetime.now(dt.UTC)
        dv = ua.DataValue(
            variant,
            StatusCode=ua.StatusCode(ua.UInt32(code)),
            SourceTimestamp=source_ts or now,  # type: ignore[arg-type]
            ServerTimestamp=now,  # type: ignore[arg-type]
        )
        await server.write_attribute_value(nid, dv)

    async def _signal_loop(self) -> None:
        while True:
            t = time.monotonic() - self._t0
            for v in self.variables.values():
                if v.signal is not None:
                    try:
                        await self._write(v.name, v.signal(t), ua.StatusCodes.Good, None)
                    except Exception:
                        log.exception("opcua simulator signal failed variable=%s", v.name)
            await asyncio.sleep(self.update_interval_s)
