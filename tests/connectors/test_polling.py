"""The shared polling partition: writes submitted from another thread run on the partition's loop."""

from __future__ import annotations

import concurrent.futures
import threading
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
        assert {thread for _, _, thread in client.writes} == {"fake:dev"}  # the partition's own thread
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
