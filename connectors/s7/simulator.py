"""A simulated S7 CPU: python-snap7's own server on a loopback port, with memory set by address.

DB, M (``MK``), I (``PE``) and Q (``PA``) areas are bytearrays registered with the server; values
are set and read back in S7 notation. Optional signals (any :class:`~connectors.signals.Signal`: sine, ramp, noise, step, constant,
counter — the same model as the Modbus and OPC UA simulators) are refreshed by a thread; faults are injected by stopping/starting the server (it comes back on the same port) and by
unregistering a DB so reads of it are answered with an item error.

>>> sim = S7Simulator(dbs={1: 64})
>>> sim.set_value("DB1.DBD20", 1.5); sim.get_value("DB1.DBD20", "REAL")
1.5
>>> sim.set_value("DB1.DBX0.3", True); sim.get_value("DB1.DBB0", "BYTE")
8.0
>>> sim.set_value("DB1.DBB30", "hi", length=10); sim.get_value("DB1.DBB30", "STRING", length=10)
'hi'
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from snap7.datatypes import S7WordLen
from snap7.server import Server
from snap7.type import SrvArea

from connectors.s7.address import S7Address, parse_address
from connectors.s7.codec import decode_value, encode_value
from connectors.signals import Signal

log = logging.getLogger(__name__)

_SRV_AREA = {"DB": SrvArea.DB, "M": SrvArea.MK, "I": SrvArea.PE, "Q": SrvArea.PA}
SignalKind = Literal["sine", "ramp", "counter"]
"""The kinds :meth:`S7Simulator.add_signal` takes by name (any :class:`Signal` may be given instead)."""


@dataclass(frozen=True, slots=True)
class _Driven:
    """An address the simulator refreshes from a signal."""

    address: S7Address
    sample: Callable[[float], float]
    wrap: bool
    """Integer types wrap around (a counter) instead of clamping."""


class _BitWrite(bytearray):
    """The data of a bit-level write (one byte, 0 or 1) with the bit it targets."""

    bit: int = 0


class BitWriteServer(Server):
    """snap7's server, writing bit-level requests (transport size BIT) as a real CPU does.

    snap7 3.3's server turns the bit address of a write into its byte and stores the request's
    data byte (``0x01``) over the whole byte, clearing the neighbouring bits. A CPU changes only the
    addressed bit, and the client relies on that (it writes a BOOL with one bit-level request, so
    bits the PLC program changes meanwhile are kept). Hooks two private methods of the server;
    ``tests/connectors/s7/test_s7_simulator.py`` checks their shape for the pinned snap7 range.
    """

    def _parse_address_specification(self, addr_spec: bytes) -> dict[str, Any]:
        parsed: dict[str, Any] = super()._parse_address_specification(addr_spec)
        if parsed and parsed.get("word_len") == S7WordLen.BIT and len(addr_spec) >= 12:
            parsed["bit"] = addr_spec[11] & 0x07  # the low three bits of the 24-bit bit address
        return parsed

    def _parse_write_address(self, request: dict[str, Any]) -> Any:
        found = super()._parse_write_address(request)
        spec = request.get("parameters", {}).get("address_spec", {})
        if found is not None and spec.get("word_len") == S7WordLen.BIT:
            area, db, start, count, data = found
            if len(data) != 1 or count != 1:
                return None  # one bit per request (what the client sends); refused as an invalid address
            bit_data = _BitWrite(data)
            bit_data.bit = int(spec.get("bit", 0))
            return area, db, start, count, bit_data
        return found

    def _write_to_memory_area(self, area: Any, db_number: int, start: int, write_data: bytearray) -> bool:
        if not isinstance(write_data, _BitWrite):
            return bool(super()._write_to_memory_area(area, db_number, start, write_data))
        key = (area, db_number)
        if key not in self.memory_areas:
            return False
        with self.area_locks[key]:
            mem = self.memory_areas[key]
            if start >= len(mem):
                return False
            mask = 1 << write_data.bit
            mem[start] = (mem[start] | mask) if write_data[0] & 1 else (mem[start] & ~mask & 0xFF)
        return True


class S7Simulator:
    """A snap7 server with ``dbs`` (number → size in bytes) and M, I, Q areas of the given sizes.

    ``port=0`` picks a free port when started (see :attr:`port`); a restart reuses it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        dbs: Mapping[int, int] | None = None,
        m_size: int = 256,
        i_size: int = 64,
        q_size: int = 64,
        signal_interval_s: float = 0.1,
    ) -> None:
        self.host = host
        self.port = port
        self.signal_interval_s = signal_interval_s
        self._memory: dict[tuple[str, int], bytearray] = {
            (("DB"), n): bytearray(size) for n, size in (dbs or {1: 256}).items()
        }
        self._memory[("M", 0)] = bytearray(m_size)
        self._memory[("I", 0)] = bytearray(i_size)
        self._memory[("Q", 0)] = bytearray(q_size)
        self._registered: set[tuple[str, int]] = set(self._memory)
        self._lock = threading.RLock()
        self._server: Server | None = None
        self._signals: list[_Driven] = []
        self._stop_signals = threading.Event()
        self._signal_thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start serving (again, on the same port after a :meth:`stop`)."""
        with self._lock:
            if self._server is not None:
                return
            server = BitWriteServer(log=False)
            server.host = self.host
            for (area, index), data in self._memory.items():
                if (area, index) in self._registered:
                    server.register_area(_SRV_AREA[area], index, data)
            server.start(tcp_port=self.port)
            assert server.server_socket is not None
            self.port = int(server.server_socket.getsockname()[1])
            self._server = server
        if self._signals and self._signal_thread is None:
            self._start_signals()
        log.info("s7 simulator listening host=%s port=%d", self.host, self.port)

    def stop(self) -> None:
        """Stop serving: the port closes and connected clients are dropped (memory is kept)."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()
        self._stop_signals.set()
        if self._signal_thread is not None:
            self._signal_thread.join(2.0)
            self._signal_thread = None
        self._stop_signals = threading.Event()

    def __enter__(self) -> S7Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- memory --------------------------------------------------------------------------------

    def set_value(
        self,
        address: str,
        value: float | bool | str,
        data_type: str | None = None,
        *,
        length: int | None = None,
    ) -> None:
        """Write ``value`` at ``address``; the data type defaults from the width and the value
        (X: BOOL, B: BYTE, W: INT, D: REAL for a float else DINT, a text: STRING)."""
        addr = self._address(address, value, data_type, length)
        data = encode_value(value, addr)
        with self._lock, self._area_lock(addr):
            mem = self._area(addr)
            if addr.bit is not None:
                mask = 1 << addr.bit
                mem[addr.byte] = (mem[addr.byte] & ~mask & 0xFF) | data[0]
            else:
                mem[addr.byte : addr.byte + len(data)] = data

    def get_value(self, address: str, data_type: str, *, length: int | None = None) -> float | str:
        """The value at ``address`` decoded as ``data_type`` (numbers as float, STRING as text)."""
        addr = parse_address(address, data_type, length)
        with self._lock, self._area_lock(addr):
            mem = self._area(addr)
            return decode_value(bytes(mem[addr.byte : addr.byte + addr.size]), addr)

    @property
    def db_numbers(self) -> list[int]:
        """The numbers of the simulated DBs, ascending."""
        return sorted(n for area, n in self._memory if area == "DB")

    def raw(self, area: str, index: int = 0) -> bytearray:
        """The live bytearray of an area (``DB`` with its number, or ``M``/``I``/``Q``)."""
        return self._memory[(area, index)]

    # -- faults --------------------------------------------------------------------------------

    def unregister_db(self, number: int) -> None:
        """Make DB ``number`` unknown to the server: reads of it get item error 0x0A."""
        with self._lock:
            self._registered.discard(("DB", number))
            if self._server is not None:
                self._server.unregister_area(SrvArea.DB, number)

    def register_db(self, number: int, size: int | None = None) -> None:
        """(Re)register DB ``number`` (a new one needs ``size``)."""
        with self._lock:
            key = ("DB", number)
            if key not in self._memory:
                if size is None:
                    raise ValueError(f"DB{number} does not exist yet: give its size")
                self._memory[key] = bytearray(size)
            self._registered.add(key)
            if self._server is not None:
                self._server.register_area(SrvArea.DB, number, self._memory[key])

    # -- signals -------------------------------------------------------------------------------

    def add_signal(
        self,
        address: str,
        kind: SignalKind | Signal,
        data_type: str = "REAL",
        *,
        period_s: float = 10.0,
        amplitude: float = 1.0,
        offset: float = 0.0,
        length: int | None = None,
    ) -> None:
        """Refresh ``address`` every ``signal_interval_s`` from a :class:`Signal`, or by name with a
        sine, a ramp or a counter (``offset`` + one per ``period_s``) of the given shape.

        Values are fitted to ``data_type``: rounded and clamped for integers (a ``counter`` wraps
        around instead), ``>= 0.5`` is true for BOOL, formatted text for STRING (``length``).
        """
        if isinstance(kind, Signal):
            signal = kind
        else:
            if kind not in ("sine", "ramp", "counter"):
                raise ValueError(f"`kind` must be 'sine', 'ramp', 'counter' or a Signal, got {kind!r}")
            if not period_s > 0:
                raise ValueError(f"`period_s` must be > 0, got {period_s}")
            signal = Signal(
                kind=kind, period_s=period_s, amplitude=1.0 if kind == "counter" else amplitude, offset=offset
            )
        addr = parse_address(address, data_type, length)
        self._area(addr)  # refuse an address outside the simulated memory now, not in the thread
        sample = signal.sampler(self.host, self.port, addr.notation())
        self._signals.append(_Driven(addr, sample, wrap=signal.kind == "counter"))
        if self._server is not None and self._signal_thread is None:
            self._start_signals()

    def update_signals(self, t: float | None = None) -> None:
        """Write every signal's value at ``t`` (seconds since the simulator was created)."""
        t = time.monotonic() - self._t0 if t is None else t
        for s in self._signals:
            self._write_signal(s.address, s.sample(t), s.wrap)

    def _write_signal(self, addr: S7Address, v: float, wrap: bool) -> None:
        value: float | bool | str
        if addr.data_type == "STRING":
            value = f"{v:g}"[: addr.length or 0]
        elif addr.data_type == "BOOL":
            value = v >= 0.5
        elif addr.data_type in ("REAL", "LREAL"):
            value = v
        else:
            low, high = _int_bounds(addr.data_type)
            iv = round(v) if math.isfinite(v) else low
            if wrap:
                iv = (iv - low) % (high - low + 1) + low
            value = float(min(max(iv, low), high))
        self.set_value(addr.notation(), value, addr.data_type, length=addr.length)

    def _start_signals(self) -> None:
        stop = self._stop_signals

        def run() -> None:
            while not stop.wait(self.signal_interval_s):
                self.update_signals()

        self.update_signals()
        self._signal_thread = threading.Thread(target=run, name="s7-sim-signals", daemon=True)
        self._signal_thread.start()

    # -- helpers -------------------------------------------------------------------------------

    def _address(
        self, address: str, value: float | bool | str, data_type: str | None, length: int | None
    ) -> S7Address:
        if data_type is None:
            text = address.strip().upper()
            width = text.split(".")[1][2] if text.startswith("DB") and "." in text else text[1:2]
            if isinstance(value, str):
                data_type = "STRING"
                length = length or max(1, len(value))
            elif ("." in text[2:] and not text.startswith("DB")) or width == "X":
                data_type = "BOOL"
            elif width == "B":
                data_type = "BYTE"
            elif width == "W":
                data_type = "INT"
            elif isinstance(value, float):
                data_type = "REAL"
            else:
                data_type = "DINT"
        return parse_address(address, data_type, length)

    def _area(self, addr: S7Address) -> bytearray:
        key = (addr.area, addr.db or 0)
        try:
            mem = self._memory[key]
        except KeyError:
            raise ValueError(
                f"{addr.notation()}: the simulator has no {addr.area}{addr.db or ''} area"
            ) from None
        if addr.byte + addr.size > len(mem):
            raise ValueError(f"{addr.notation()}: beyond the area's {len(mem)} bytes")
        return mem

    def _area_lock(self, addr: S7Address) -> _ServerAreaLock:
        return _ServerAreaLock(
            self._server, _SRV_AREA[addr.area], addr.db or 0, (addr.area, addr.db or 0) in self._registered
        )


class _ServerAreaLock:
    """Hold the server's lock of an area while its bytes change (so a read never sees half a value)."""

    def __init__(self, server: Server | None, area: SrvArea, index: int, registered: bool) -> None:
        self._args = (area, index)
        self._server = server if registered else None

    def __enter__(self) -> None:
        if self._server is not None:
            self._server.lock_area(*self._args)

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.unlock_area(*self._args)


def _int_bounds(data_type: str) -> tuple[int, int]:
    from connectors.s7.codec import value_range

    low, high = value_range(data_type)
    return int(low), int(high)
