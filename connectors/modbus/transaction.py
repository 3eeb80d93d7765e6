"""One read request on a pymodbus client's connection, awaited with one timer instead of ``asyncio.wait_for``.

pymodbus 3.x's ``TransactionManager.execute`` takes a lock of its own and awaits each response through
``asyncio.wait_for``: on Python 3.11 a second future, a timer, two done-callbacks and one more pass of
the event loop per request — 17 µs against 7 µs for awaiting the response future alone, 10 µs with
one ``call_at`` timer (hot loop; BENCHMARKS.md, "The poll loop's CPU per poll").
:class:`~connectors.modbus.client.ModbusDeviceClient` already runs one request at a time
per connection (its I/O lock, held around every call), so :func:`execute` does pymodbus's steps
itself for the reads of a poll: the next transaction id, a fresh receive buffer and response future,
``pdu_send``, the wait bounded by ``timeout_s`` (one timer handle, cancelled on the answer), and the
same device-id and transaction-id checks (a mismatch raises ``ModbusIOException``, as pymodbus does).
A request that gets no answer in time raises :class:`TimeoutError`, which the client treats as the
transport error pymodbus's ``ModbusIOException`` was before (retries are off in both).

It relies on these members of pymodbus's ``TransactionManager`` (``client.ctx``): ``transport``,
``getNextTID``, ``recv_buffer``, ``response_future`` (which ``callback_data`` resolves with the decoded
response) and ``pdu_send``; ``tests/test_third_party_internals.py`` fails when one of them changes.
Writes keep pymodbus's public calls (rare; they hold the same I/O lock, so pymodbus's lock is never
contended).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

READ_REQUESTS: dict[str, type[ModbusPDU]] = {
    "holding": ReadHoldingRegistersRequest,
    "input": ReadInputRegistersRequest,
    "coil": ReadCoilsRequest,
    "discrete": ReadDiscreteInputsRequest,
}
"""The request PDU of a read, by register table (the names of :data:`connectors.modbus.config.RegisterTable`)."""


def read_request(table: str, address: int, count: int, unit: int) -> ModbusPDU:
    """The PDU reading ``count`` registers (or bits) of ``table`` from ``address`` on device ``unit``."""
    return READ_REQUESTS[table](address=address, count=count, dev_id=unit)


async def execute(client: Any, request: ModbusPDU, timeout_s: float) -> ModbusPDU:
    """Send ``request`` on ``client``'s connection and return the response (or exception response).

    The caller holds the connection's I/O lock. Raises ``ConnectionException`` when not connected,
    :class:`TimeoutError` after ``timeout_s`` without an answer, ``ModbusIOException`` for an answer
    with another device or transaction id.
    """
    ctx = client.ctx
    if not ctx.transport:
        raise ConnectionException(f"not connected: {client.comm_params.host}:{client.comm_params.port}")
    loop = asyncio.get_running_loop()
    request.transaction_id = ctx.getNextTID()
    ctx.recv_buffer = b""
    answer: asyncio.Future[ModbusPDU] = loop.create_future()
    ctx.response_future = answer
    ctx.pdu_send(request)
    timer = loop.call_at(loop.time() + timeout_s, _expire, answer, timeout_s)
    try:
        response = await answer
    finally:
        timer.cancel()
    if request.dev_id and response.dev_id != request.dev_id:
        raise ModbusIOException(
            f"request to device id {request.dev_id} answered by device id {response.dev_id}",
            function_code=request.function_code,
        )
    if response.transaction_id and response.transaction_id != request.transaction_id:
        raise ModbusIOException(
            f"request with transaction id {request.transaction_id} answered with {response.transaction_id}",
            function_code=request.function_code,
        )
    return response


def _expire(answer: asyncio.Future[ModbusPDU], timeout_s: float) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError(f"no response within {timeout_s:g} s"))
