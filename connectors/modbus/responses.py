"""Register read responses decoded in one call, registered on each client through pymodbus's public
``client.register`` (the hook it offers for custom responses).

pymodbus 3.x decodes a read-registers response one ``struct.unpack`` and one ``list.append`` per
register, and formats ``str(pdu)`` — every register — for a debug line on every response, whatever the
log level. With 100 registers per read that was the largest single cost of a poll on the loop thread
(cProfile of ``python -m bench.pollpath``, BENCHMARKS.md "The poll loop's CPU per poll"). These
subclasses keep the stock classes' contract — the same function codes, the same
``ModbusIOException`` for a byte count beyond the frame, ``registers`` with one unsigned 16-bit value
per register — but hold ``registers`` as a numpy view of the frame, and print the register count
rather than the registers. Registration is per client (pymodbus copies its decoder table on the
first ``register``), so other pymodbus users in the process keep the stock classes.

>>> rr = FastHoldingRegisters()
>>> rr.decode(bytes([4, 0x12, 0x34, 0xFF, 0xFE]))
>>> rr.registers.tolist(), len(rr.registers), rr.isError()
([4660, 65534], 2, False)
>>> str(rr)
'FastHoldingRegisters(dev_id=0, transaction_id=0, registers=2)'
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

_BE_UINT16 = np.dtype(">u2")


class _Fast:
    """The shared decode and ``__str__`` (mixed in ahead of each stock response class)."""

    registers: Any
    function_code: int
    dev_id: int
    transaction_id: int

    def decode(self, data: bytes) -> None:
        """``data``: the byte count, then the registers big-endian (as the stock ``decode`` reads it)."""
        data_len = data[0]
        if data_len >= len(data):
            raise ModbusIOException(
                f"byte_count {data_len} > length of packet {len(data)}", function_code=self.function_code
            )
        self.registers = np.frombuffer(data, dtype=_BE_UINT16, count=data_len // 2, offset=1)

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id}, "
            f"registers={len(self.registers)})"
        )


class FastHoldingRegisters(_Fast, ReadHoldingRegistersResponse):
    """Response to read holding registers (function code 3)."""


class FastInputRegisters(_Fast, ReadInputRegistersResponse):
    """Response to read input registers (function code 4)."""


def register_fast_responses(client: Any) -> None:
    """Decode ``client``'s register read responses with the classes above (call before connecting)."""
    client.register(FastHoldingRegisters)
    client.register(FastInputRegisters)
