"""The shared polling partition: writes submitted from another thread run on the partition's loop."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import numpy as np
import pytest

from connectors.polling import (
    PolledDevice,
    PollingPartition,
    PollingSource,
    WriteFailed,
    WriteRejected,
    WriteValue,
)
from core.batch import PointBatch
from core.quality import Quality


class RecordingClient:
    """A minimal DeviceClient: remembers on which thread each write ran."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, WriteValue, str]] = []
        self.closed = False

    async def poll(self) -> PointBatch:
        return PointBatch.from_values("dev", [1], [float(len(self.writes))], ts_ns=0)

    async def write(self, tag_id: int, value: WriteValue) -> None:
        if tag_id != 1:
            raise WriteRejected("dev", tag_id, "no such tag on this device")
        if value == "boom":
            raise WriteFailed("dev", tag_id, "device answered exception code 4", code=4)
        self.writes.append((tag_id, value, threading.current_thread().name))

    async def close(self) -> None:
        self.closed = True

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        return PointBatch.from_values("dev", [1], [np.nan], ts_ns=ts_ns, quality=quality)

    @property
    def stats(self) -> Any:
        return type("S", (), {"failures": 0})()


class RecordingSource(PollingSource):
    protocol = "fake"

    def __init__(self) -> None:
        super().__init__([PolledDevice("dev", 1.0)])
        self.clients: list[RecordingClient] = []

    def make_client(self, device_id: str) -> RecordingClient:  # type: ignore[override]
        self.clients.append(RecordingClient())
        return self.clients[-1]


def test_submit_write_runs_on_the_partition_loop_and_forwards_errors() -> None:
    source = RecordingSource()
    part = source.build_part("in", "fake:dev", None)
    try:
        assert source.partition("dev") is part
        part.submit_write(1, 42.0).result(5)
        assert source.submit_write("dev", 1, True).result(5) is None
        (client,) = source.clients
        assert [(t, v) for t, v, _ in client.writes] == [(1, 42.0), (1, True)]
        # the source's event loop thread, the one that runs the polls
        assert {thread for _, _, thread in client.writes} == {part._thread.name} == {"fake:poll-loop"}
        with pytest.raises(WriteRejected, match="no such tag"):
            part.submit_write(2, 1).result(5)
        with pytest.raises(WriteFailed) as exc:
            part.submit_write(1, "boom").result(5)
        assert exc.value.code == 4
    finally:
        part.close()
    fut = part.submit_write(1, 1)
    with pytest.raises(WriteFailed, match="partition is closed"):
        fut.result(1)
    assert source.clients[0].closed


def test_submit_write_to_a_device_this_process_does_not_poll() -> None:
    source = RecordingSource()
    assert source.partition("dev") is None
    fut: concurrent.futures.Future[None] = source.submit_write("other", 1, 1)
    with pytest.raises(WriteRejected, match="no such device in this process"):
        fut.result(1)


def test_partition_type_is_exported() -> None:
    assert PollingPartition.submit_write.__doc__


class TwoDeviceSource(PollingSource):
    protocol = "fake"

    def __init__(self) -> None:
        super().__init__([PolledDevice("a", 0.01), PolledDevice("b", 0.01)])
        self.clients: list[RecordingClient] = []

    def make_client(self, device_id: str) -> RecordingClient:  # type: ignore[override]
        self.clients.append(RecordingClient())
        return self.clients[-1]


def _next_poll(part: PollingPartition) -> list[PointBatch]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = part.next_batch()
        if got:
            return got
        time.sleep(0.002)
    raise AssertionError("no poll completed")


def test_partitions_of_a_source_share_one_loop_thread_until_the_last_closes() -> None:
    source = TwoDeviceSource()
    a = source.build_part("in", "fake:a", None)
    b = source.build_part("in", "fake:b", None)
    thread = a._thread
    assert b._thread is thread and thread.is_alive()
    assert threading.active_count() >= 2
    a.close()
    assert source.clients[0].closed and not source.clients[1].closed
    assert thread.is_alive()  # b still polls on it
    assert _next_poll(b) and b.submit_write(1, 5).result(5) is None
    with pytest.raises(WriteFailed, match="closed"):
        a.submit_write(1, 5).result(1)
    b.close()
    assert not thread.is_alive()  # the last partition stopped the loop
    c = source.build_part("in", "fake:a", None)  # a rebuilt partition gets a new loop thread
    try:
        assert c._thread is not thread and c._thread.is_alive() and _next_poll(c)
    finally:
        c.close()
    assert not c._thread.is_alive()
