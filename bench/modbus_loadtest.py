"""Scale check: many simulated Modbus devices polled by :class:`ModbusSource` in a Bytewax flow.

Simulators run in separate processes (one per port, devices spread over unit ids); this process runs
the dataflow with a counting sink and reports polls, skipped polls, poll latency and its own CPU::

    python -m bench.modbus_loadtest --devices 200 --tags 50 --interval 1 --duration 60

Every device has ``--tags`` int16 holding registers (coalesced into one read per poll unless the
tags exceed 125 registers); a few of them follow a sine signal so the values move.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import bytewax.operators as op
import numpy as np
import psutil
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, Signal, SimTag, SimulatedDevice
from connectors.modbus.source import ModbusSource
from core.batch import PointBatch

log = logging.getLogger(__name__)


def _tags(n: int) -> list[ModbusTagAddress]:
    return [ModbusTagAddress(table="holding", address=i, data_type="int16") for i in range(n)]


def _serve(devices: list[tuple[str, int]], n_tags: int, ports: Any, stop: MpEvent) -> None:
    """A simulator process: one port, ``devices`` as ``(device_id, unit_id)``."""
    tags = _tags(n_tags)
    sims = [
        SimulatedDevice(
            device_id,
            unit,
            [
                SimTag(t, Signal(kind="sine", amplitude=1000, period_s=30) if i < 5 else None)
                for i, t in enumerate(tags)
            ],
        )
        for device_id, unit in devices
    ]
    sim = ModbusSimulator("127.0.0.1", 0, sims, update_interval_s=1.0)
    sim.start(timeout_s=30)
    ports.put(sim.port)
    stop.wait()
    sim.stop()


class _CountingSink(DynamicSink[PointBatch]):
    def __init__(self) -> None:
        self.batches = 0
        self.points = 0
        self.good = 0
        self._lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPartition:
        return _CountingPartition(self)


class _CountingPartition(StatelessSinkPartition[PointBatch]):
    def __init__(self, sink: _CountingSink) -> None:
        self._sink = sink

    def write_batch(self, items: list[PointBatch]) -> None:
        with self._sink._lock:
            for b in items:
                self._sink.batches += 1
                self._sink.points += len(b)
                self._sink.good += int(np.count_nonzero(b.quality < 64))


class _TimedClient(ModbusDeviceClient):
    """Records every poll's latency (the loop's view, connect included)."""

    latencies: list[float]

    async def poll(self) -> PointBatch:
        t0 = time.perf_counter()
        batch = await super().poll()
        self.latencies.append(time.perf_counter() - t0)
        return batch


class _TimedSource(ModbusSource):
    def __init__(self, devices: Sequence[ModbusDevicePlan], **kwargs: Any) -> None:
        super().__init__(devices, **kwargs)
        self.latencies: list[float] = []

    def make_client(self, device_id: str) -> ModbusDeviceClient:
        plan = self._plans[device_id]
        assert isinstance(plan, ModbusDevicePlan)
        client = _TimedClient(plan, metrics=True)
        client.latencies = self.latencies
        return client


@dataclass
class Result:
    devices: int
    tags: int
    interval_s: float
    duration_s: float
    polls: int
    completed: int
    skipped: int
    failures: int
    points: int
    good_points: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_percent: float
    threads: int

    def report(self) -> str:
        expected = self.devices * self.duration_s / self.interval_s
        return (
            f"devices={self.devices} tags/device={self.tags} interval={self.interval_s:g}s "
            f"duration={self.duration_s:.1f}s\n"
            f"polls={self.polls} (expected ~{expected:.0f}) completed={self.completed} "
            f"skipped={self.skipped} failed_polls={self.failures}\n"
            f"points={self.points} good={self.good_points} ({self.points / self.duration_s:.0f} points/s)\n"
            f"poll latency p50={self.p50_ms:.2f} ms p99={self.p99_ms:.2f} ms max={self.max_ms:.2f} ms\n"
            f"polling process CPU={self.cpu_percent:.1f}% of one core "
            f"(over {psutil.cpu_count()} cores), threads={self.threads}"
        )


def run(*, devices: int, tags: int, interval: float, duration: float, ports: int, warmup: float) -> Result:
    ids = [f"load-{i:04d}" for i in range(devices)]
    groups: list[list[tuple[str, int]]] = [[] for _ in range(ports)]
    for i, device_id in enumerate(ids):
        groups[i % ports].append((device_id, len(groups[i % ports]) + 1))
    if max(len(g) for g in groups) > 247:
        raise SystemExit(
            f"need more --ports: at most 247 devices per port, got {max(len(g) for g in groups)}"
        )
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    queues = [ctx.Queue() for _ in groups]
    procs = [
        ctx.Process(target=_serve, args=(g, tags, q, stop), daemon=True)
        for g, q in zip(groups, queues, strict=True)
    ]
    for p in procs:
        p.start()
    try:
        port_of = [q.get(timeout=60) for q in queues]
        plans = []
        tag_list = _tags(tags)
        for g, port in zip(groups, port_of, strict=True):
            conn = ModbusConnection(host="127.0.0.1", port=port, timeout_s=1.0)
            for device_id, unit in g:
                plans.append(
                    ModbusDevicePlan(
                        device_id,
                        conn.model_copy(update={"unit_id": unit}),
                        interval,
                        tuple((1000 + i, t) for i, t in enumerate(tag_list)),
                    )
                )
        stop_flow = threading.Event()
        source = _TimedSource(plans, stop_event=stop_flow)
        sink = _CountingSink()
        flow = Dataflow("modbus_loadtest")
        op.output("count", op.input("devices", flow, source), sink)

        me = psutil.Process()
        marks: dict[str, Any] = {}

        def clock() -> None:
            time.sleep(warmup)
            marks["t0"], marks["cpu0"] = time.monotonic(), me.cpu_times()
            marks["stats0"] = source.stats()
            marks["lat0"], marks["sink0"] = len(source.latencies), (sink.points, sink.good)
            time.sleep(duration)
            marks["t1"], marks["cpu1"] = time.monotonic(), me.cpu_times()
            marks["stats1"] = source.stats()
            marks["lat1"], marks["sink1"] = len(source.latencies), (sink.points, sink.good)
            marks["threads"] = me.num_threads()
            stop_flow.set()

        timer = threading.Thread(target=clock, daemon=True)
        timer.start()
        run_main(flow)
        timer.join()
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()

    wall = marks["t1"] - marks["t0"]
    cpu = (marks["cpu1"].user + marks["cpu1"].system) - (marks["cpu0"].user + marks["cpu0"].system)
    s0, s1 = marks["stats0"], marks["stats1"]

    def delta(field: str) -> int:
        return sum(getattr(s, field) for s in s1.values()) - sum(getattr(s, field) for s in s0.values())

    lat = np.array(source.latencies[marks["lat0"] : marks["lat1"]]) * 1000
    return Result(
        devices=devices,
        tags=tags,
        interval_s=interval,
        duration_s=wall,
        polls=delta("polls"),
        completed=delta("completed"),
        skipped=delta("skipped_polls"),
        failures=delta("failures"),
        points=marks["sink1"][0] - marks["sink0"][0],
        good_points=marks["sink1"][1] - marks["sink0"][1],
        p50_ms=float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        p99_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        max_ms=float(lat.max()) if len(lat) else float("nan"),
        cpu_percent=100.0 * cpu / wall,
        threads=marks["threads"],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds (after warm-up)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (connects)")
    parser.add_argument("--ports", type=int, default=8, help="simulator processes, one port each")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(
        devices=args.devices,
        tags=args.tags,
        interval=args.interval,
        duration=args.duration,
        ports=args.ports,
        warmup=args.warmup,
    )
    print(result.report())


if __name__ == "__main__":
    main()
