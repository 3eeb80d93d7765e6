"""Simulated Modbus devices, served by pymodbus's own async server (TCP, RTU over TCP, or RTU on a
serial line such as one end of a :func:`pty_link`).

One :class:`ModbusSimulator` listens on one port and serves several devices, told apart by unit
id (the way a gateway does). It runs in its own thread and event loop, so tests and the demo
drive it from plain synchronous code:

- signals (:class:`~connectors.signals.Signal`, shared by every protocol's simulator) refresh tag values every ``update_interval_s`` in raw register units,
  encoded with the tag's data type and word order and clamped to the type's range;
- :meth:`ModbusSimulator.set_value` / :meth:`~ModbusSimulator.set_registers` write known values;
- faults: :meth:`~ModbusSimulator.set_exception` (exception responses for an address),
  :meth:`~ModbusSimulator.set_hole` / ``SimulatedDevice.holes`` (addresses the device rejects with
  ILLEGAL_DATA_ADDRESS, the way real devices have gaps in their register map),
  :meth:`~ModbusSimulator.fail_next` (the next request(s) of a device), :meth:`~ModbusSimulator.set_stall`
  (answer late), :meth:`~ModbusSimulator.drop_connections`, and :meth:`~ModbusSimulator.stop` /
  :meth:`~ModbusSimulator.start` for an outage (values survive a restart).

Faults and value updates go through the device's ``action`` hook, pymodbus 3.16's documented way
to intervene in every access of a :class:`pymodbus.simulator.SimDevice`.

>>> sig = Signal(kind="step", step_values=[1, 2, 3], period_s=10)
>>> [sig.value_at(t, None) for t in (0, 10, 25, 31)]
[1.0, 2.0, 3.0, 1.0]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from connectors.modbus.codec import encode_tag, int_range, value_range
from connectors.modbus.config import BIT_TABLES, MAX_ADDRESS, ModbusTagAddress, RegisterTable
from connectors.signals import Signal, SignalKind

__all__ = [
    "ModbusSimulator",
    "Signal",
    "SignalKind",
    "SimTag",
    "SimTransport",
    "SimulatedDevice",
    "pty_link",
    "to_raw",
]

SimTransport = Literal["tcp", "rtu_over_tcp", "rtu"]

log = logging.getLogger(__name__)

_FC_TABLE: dict[int, RegisterTable] = {
    1: "coil", 5: "coil", 15: "coil",
    2: "discrete",
    3: "holding", 6: "holding", 16: "holding", 22: "holding", 23: "holding",
    4: "input",
}  # fmt: skip
_TABLES: tuple[RegisterTable, ...] = ("coil", "discrete", "holding", "input")  # SimDevice block order


@dataclass(frozen=True, slots=True)
class SimTag:
    """One simulated tag: where it lives and, optionally, the signal that drives it."""

    address: ModbusTagAddress
    signal: Signal | None = None


@dataclass(frozen=True, slots=True)
class SimulatedDevice:
    """A device served by a :class:`ModbusSimulator` under ``unit_id``.

    Each table holds ``table_size`` registers (bits for coils / discrete inputs), or just enough
    for the tags when ``None``; reading outside answers ``ILLEGAL_ADDRESS`` like a real device.
    ``holes`` are ``(table, address)`` pairs inside the table that answer ``ILLEGAL_ADDRESS`` too
    (for coils and discrete inputs pymodbus reports accesses by 16-bit word, so a hole rejects
    reads of its whole word).
    """

    device_id: str
    unit_id: int
    tags: Sequence[SimTag] = ()
    table_size: int | None = None
    holes: Sequence[tuple[RegisterTable, int]] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.unit_id <= 247:
            raise ValueError(f"`unit_id` must be in 1..247, got {self.unit_id}")
        if self.table_size is not None and not 16 <= self.table_size <= MAX_ADDRESS + 1:
            raise ValueError(f"`table_size` must be in 16..65536, got {self.table_size}")


def to_raw(value: float | str, address: ModbusTagAddress, *, wrap: bool = False) -> list[int]:
    """Registers for ``value`` after fitting it to the tag's type: rounded for integers, clamped
    to the type's range (or wrapped around, with ``wrap``); numbers for a string tag are formatted
    and cut to its length. ``bool`` and ``bit`` give one bit.

    >>> from connectors.modbus.config import ModbusTagAddress as A
    >>> reg = A(table="holding", address=0)
    >>> to_raw(70000.4, reg), to_raw(65537, reg, wrap=True)
    ([65535], [1])
    >>> to_raw(12.5, A(table="holding", address=0, data_type="string", length=1))
    [12594]
    """
    dt = address.data_type
    if dt == "string":
        text = value if isinstance(value, str) else f"{value:g}"
        return encode_tag(text[: 2 * (address.length or 0)], address)
    if isinstance(value, str):
        raise ValueError(f"value {value!r} is not a number, as {dt} requires")
    v: float | int
    if dt in ("bool", "bit"):
        v = 1 if value >= 0.5 else 0
    elif dt in ("float32", "float64"):
        low, high = value_range(dt)
        v = min(max(value, low), high) if math.isfinite(value) else value
    else:
        low_i, high_i = int_range(dt)
        iv = round(value) if math.isfinite(value) else low_i
        if wrap:
            iv = (iv - low_i) % (high_i - low_i + 1) + low_i
        v = min(max(iv, low_i), high_i)
    return encode_tag(v, address)


@dataclass
class _Faults:
    exceptions: dict[tuple[str, int], ExcCodes] = field(default_factory=dict)
    fail_next: deque[ExcCodes] = field(default_factory=deque)
    stall_s: float | None = None


class _DeviceState:
    """Values and faults of one device; written from any thread, applied inside the server loop."""

    def __init__(self, device: SimulatedDevice) -> None:
        self.device = device
        self.lock = threading.Lock()
        self.sizes: dict[str, int] = {}
        for table in _TABLES:
            ends = [
                t.address.address + t.address.register_count for t in device.tags if t.address.table == table
            ]
            need = max(ends, default=0)
            size = device.table_size if device.table_size is not None else max(16, -(-need // 16) * 16)
            if need > size:
                raise ValueError(
                    f"device {device.device_id!r}: a {table} tag ends at {need}, beyond table_size {size}"
                )
            self.sizes[table] = size
        self.shadow: dict[str, dict[int, int]] = {t: {} for t in _TABLES}
        """Every value ever set, by table and register (bit) index: survives a server restart."""
        self.pending: dict[str, dict[int, int]] = {t: {} for t in _TABLES}
        """Values set but not yet copied into the server's registers."""
        self.faults = _Faults()
        self.requests = 0
        """Register/bit accesses served (one per read or write request); tests count I/O with it."""
        for table, address in device.holes:
            self.faults.exceptions[(table, address)] = ExcCodes.ILLEGAL_ADDRESS
        self.signals = [
            (t.address, t.signal, t.signal.rng(device.device_id, t.address.table, t.address.address))
            for t in device.tags
            if t.signal is not None
        ]

    def write(self, table: str, address: int, raw: Sequence[int]) -> None:
        size = self.sizes[table]
        if address < 0 or address + len(raw) > size:
            raise ValueError(
                f"device {self.device.device_id!r}: {table} {address}..{address + len(raw) - 1} "
                f"is outside the table (size {size})"
            )
        with self.lock:
            for i, r in enumerate(raw):
                self.shadow[table][address + i] = int(r)
                self.pending[table][address + i] = int(r)

    def write_bit(self, table: str, address: int, bit: int, value: int) -> None:
        """Set one bit of a register (a ``bit`` tag), keeping the others."""
        with self.lock:
            current = self.shadow[table].get(address, 0)
        mask = 1 << bit
        self.write(table, address, [(current | mask) if value else (current & ~mask)])

    def write_tag(self, address: ModbusTagAddress, raw: Sequence[int]) -> None:
        if address.data_type == "bit":
            self.write_bit(address.table, address.address, address.bit or 0, raw[0])
        else:
            self.write(address.table, address.address, raw)

    def replay_all(self) -> None:
        with self.lock:
            for table in _TABLES:
                self.pending[table] = dict(self.shadow[table])

    def sim_device(self) -> SimDevice:
        blocks = []
        for table in _TABLES:
            if table in BIT_TABLES:
                blocks.append([SimData(0, count=self.sizes[table], values=False, datatype=SimDataType.BITS)])
            else:
                blocks.append([SimData(0, count=self.sizes[table], values=0, datatype=SimDataType.REGISTERS)])
        return SimDevice(self.device.unit_id, simdata=tuple(blocks), action=self.action)  # type: ignore[arg-type]

    async def action(  # noqa: PLR0917 - the signature pymodbus calls
        self,
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this on every access; ``registers`` is the live table (bits packed by 16)."""
        table = _FC_TABLE.get(func_code)
        if table is None:
            return None
        bits = table in BIT_TABLES
        with self.lock:
            self.requests += 1
            stall = self.faults.stall_s
            fail = self.faults.fail_next.popleft() if self.faults.fail_next else None
            pending, self.pending[table] = self.pending[table], {}
            if set_values and not bits:  # a client's write: keep it across a restart
                for i, v in enumerate(set_values):
                    self.shadow[table][address + i] = int(v)
            elif set_values:
                for i, v in enumerate(set_values):
                    self.shadow[table][address + i] = int(bool(v))
            exc = None
            if self.faults.exceptions:
                # for bit tables pymodbus passes the number of 16-bit words, so the range is rounded up
                end = (address // 16 + count) * 16 if bits else address + count
                exc = next(
                    (
                        code
                        for (t, a), code in self.faults.exceptions.items()
                        if t == table and address <= a < end
                    ),
                    None,
                )
        if pending:
            if bits:
                for a, v in pending.items():
                    word = a // 16 - start_address
                    mask = 1 << (a % 16)
                    registers[word] = (registers[word] | mask) if v else (registers[word] & ~mask)
            else:
                for a, v in pending.items():
                    registers[a - start_address] = v
        if stall:
            await asyncio.sleep(stall)
        if fail is not None:
            return fail
        return exc

    def refresh(self, t: float) -> None:
        """Recompute every signal at ``t`` seconds."""
        for address, signal, rng in self.signals:
            raw = to_raw(
                signal.value_at(t, rng),
                address,
                wrap=signal.kind == "counter" and address.data_type != "float32",
            )
            self.write_tag(address, raw)


class ModbusSimulator:
    """Serves ``devices`` on ``host:port`` (``port=0``: a free port, see :attr:`port` after start).

    ``transport``: ``tcp`` (Modbus TCP), ``rtu_over_tcp`` (RTU frames on a TCP port, like a serial
    gateway) or ``rtu`` (RTU on the serial device ``serial_port``, e.g. one end of :func:`pty_link`;
    ``host``/``port`` are then unused).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        devices: Sequence[SimulatedDevice] = (),
        *,
        update_interval_s: float = 0.5,
        transport: SimTransport = "tcp",
        serial_port: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        if not devices:
            raise ValueError("`devices` must not be empty")
        if transport not in ("tcp", "rtu_over_tcp", "rtu"):
            raise ValueError(f"`transport` must be 'tcp', 'rtu_over_tcp' or 'rtu', got {transport!r}")
        if (transport == "rtu") != (serial_port is not None):
            raise ValueError("`serial_port` is needed with transport 'rtu' and only with it")
        if not update_interval_s > 0:
            raise ValueError(f"`update_interval_s` must be > 0, got {update_interval_s}")
        ids = [d.device_id for d in devices]
        units = [d.unit_id for d in devices]
        if len(set(ids)) != len(ids) or len(set(units)) != len(units):
            raise ValueError(
                f"device ids and unit ids must be unique per simulator, got ids {ids} and unit ids {units}"
            )
        self.host = host
        self.port = port
        self.devices: list[SimulatedDevice] = list(devices)
        self.update_interval_s = update_interval_s
        self.transport: SimTransport = transport
        self.serial_port = serial_port
        self.baudrate = baudrate
        self._states = {d.device_id: _DeviceState(d) for d in devices}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._signal_task: asyncio.Task[None] | None = None
        self.connections_accepted = 0
        """TCP connections the server accepted so far (the start-up probe included): a client that
        keeps its connection adds none."""
        self._t0 = time.monotonic()
        for state in self._states.values():
            state.refresh(0.0)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, timeout_s: float = 5.0) -> None:
        """Start serving in a background thread; returns once the port accepts connections."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        for state in self._states.values():
            state.replay_all()
        thread = threading.Thread(target=run, name=f"modbus-sim:{self.port}", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        if not ready.wait(timeout_s) or failure:
            self._thread = None
            self._loop = None
            raise RuntimeError(f"Modbus simulator could not start on {self.host}:{self.port}: {failure}")
        deadline = time.monotonic() + timeout_s
        while self.transport != "rtu":
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"Modbus simulator on {self.host}:{self.port} does not accept connections"
                    ) from None
                time.sleep(0.01)

    async def _serve(self) -> None:
        devices = [s.sim_device() for s in self._states.values()]
        server: ModbusTcpServer | ModbusSerialServer
        if self.transport == "rtu":
            assert self.serial_port is not None
            server = ModbusSerialServer(
                devices, framer=FramerType.RTU, port=self.serial_port, baudrate=self.baudrate
            )
        else:
            framer = FramerType.RTU if self.transport == "rtu_over_tcp" else FramerType.SOCKET
            server = ModbusTcpServer(devices, framer=framer, address=(self.host, self.port))
        accept = server.callback_new_connection

        def counted() -> Any:
            self.connections_accepted += 1
            return accept()

        server.callback_new_connection = counted  # type: ignore[method-assign]
        await server.serve_forever(background=True)
        if self.port == 0 and self.transport != "rtu":
            sockets = getattr(server.transport, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
        self._server = server
        self._signal_task = asyncio.get_running_loop().create_task(self._signals())

    async def _signals(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval_s)
            t = time.monotonic() - self._t0
            for state in self._states.values():
                try:
                    state.refresh(t)
                except Exception:  # a bad signal must not stop the others
                    log.exception("simulated signal failed device=%s", state.device.device_id)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close every connection; values are kept for a later :meth:`start`."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._signal_task is not None:
                self._signal_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._signal_task
            if self._server is not None:
                await self._server.shutdown()
            # transports close in callbacks scheduled on this loop: let them run before it stops
            for _ in range(3):
                await asyncio.sleep(0.005)

        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout_s)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        self._server = None
        self._signal_task = None
        self._loop = None
        self._thread = None

    def __enter__(self) -> ModbusSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- values --------------------------------------------------------------------------------

    def set_value(self, device_id: str, address: ModbusTagAddress, value: float | str) -> None:
        """Write ``value`` (raw units, or text for a string tag) to the tag at ``address`` (a wire
        address), encoded with its type and byte order.

        Raises :class:`ValueError` if the value does not fit the type.
        """
        self._state(device_id).write_tag(address, encode_tag(value, address))

    def get_registers(self, device_id: str, table: RegisterTable, address: int, count: int) -> list[int]:
        """The last known registers (bits) ``address .. address + count - 1``: values set here or
        written by clients (0 where nothing was ever set)."""
        state = self._state(device_id)
        with state.lock:
            return [state.shadow[table].get(address + i, 0) for i in range(count)]

    def set_registers(
        self, device_id: str, table: RegisterTable, address: int, values: Sequence[int]
    ) -> None:
        """Write raw registers (0..65535), or bits (0/1) for coils and discrete inputs."""
        top = 1 if table in BIT_TABLES else 0xFFFF
        bad = [v for v in values if not 0 <= int(v) <= top]
        if bad:
            raise ValueError(f"values {bad} do not fit a {table} entry (0..{top})")
        self._state(device_id).write(table, address, [int(v) for v in values])

    def pause_signals(self, device_id: str) -> None:
        """Stop the device's signals from overwriting values (for tests that set values)."""
        state = self._state(device_id)
        with state.lock:
            state.signals = []

    # -- faults --------------------------------------------------------------------------------

    def set_hole(self, device_id: str, table: RegisterTable, address: int, hole: bool = True) -> None:
        """Make ``address`` one the device rejects with ILLEGAL_DATA_ADDRESS (or accept it again)."""
        self.set_exception(device_id, table, address, int(ExcCodes.ILLEGAL_ADDRESS) if hole else None)

    def set_exception(self, device_id: str, table: RegisterTable, address: int, code: int | None) -> None:
        """Answer every read of ``table`` that covers ``address`` with exception ``code`` (None: clear)."""
        state = self._state(device_id)
        with state.lock:
            if code is None:
                state.faults.exceptions.pop((table, address), None)
            else:
                state.faults.exceptions[(table, address)] = _exc_code(code)

    def fail_next(
        self, device_id: str, exception_code: int = ExcCodes.DEVICE_FAILURE, count: int = 1
    ) -> None:
        """Answer the device's next ``count`` requests with ``exception_code``."""
        state = self._state(device_id)
        code = _exc_code(exception_code)
        with state.lock:
            state.faults.fail_next.extend([code] * count)

    def request_count(self, device_id: str) -> int:
        """Requests the device has received so far (a stalled one counts when it arrives)."""
        state = self._state(device_id)
        with state.lock:
            return state.requests

    def set_stall(self, device_id: str, seconds: float | None) -> None:
        """Delay every answer of the device by ``seconds`` (None: answer at once)."""
        if seconds is not None and seconds < 0:
            raise ValueError(f"`seconds` must be >= 0, got {seconds}")
        state = self._state(device_id)
        with state.lock:
            state.faults.stall_s = seconds

    def drop_connections(self, timeout_s: float = 2.0) -> int:
        """Close every open client connection (clients see a transport error); returns how many."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return 0

        async def drop() -> int:
            conns = list(getattr(server, "active_connections", {}).values())
            for conn in conns:
                conn.close()
            return len(conns)

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(timeout_s)

    def _state(self, device_id: str) -> _DeviceState:
        try:
            return self._states[device_id]
        except KeyError:
            raise KeyError(f"unknown simulated device {device_id!r}; have {sorted(self._states)}") from None


def _exc_code(code: int) -> ExcCodes:
    try:
        return ExcCodes(int(code))
    except ValueError:
        raise ValueError(
            f"exception code {code} is not a Modbus exception code ({[int(c) for c in ExcCodes]})"
        ) from None


@contextlib.contextmanager
def pty_link(chunk: int = 4096) -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals wired back to back, like a null-modem cable: yields their device paths.

    Bytes written to one arrive at the other, so a serial Modbus server on one end and a serial
    client on the other talk RTU with no hardware (and no ``socat``). Relayed by a thread; POSIX only.
    """
    a_master, a_slave = os.openpty()
    b_master, b_slave = os.openpty()
    for fd in (a_slave, b_slave):
        tty.setraw(fd)
    paths = (os.ttyname(a_slave), os.ttyname(b_slave))
    stop_r, stop_w = os.pipe()
    peer = {a_master: b_master, b_master: a_master}

    def relay() -> None:
        while True:
            ready, _, _ = select.select([a_master, b_master, stop_r], [], [])
            if stop_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, chunk)
                except OSError:  # the other side closed the slave for a moment
                    continue
                if data:
                    os.write(peer[fd], data)

    thread = threading.Thread(target=relay, name="pty-link", daemon=True)
    thread.start()
    try:
        yield paths
    finally:
        os.write(stop_w, b"x")
        thread.join(2.0)
        for fd in (a_master, a_slave, b_master, b_slave, stop_r, stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
