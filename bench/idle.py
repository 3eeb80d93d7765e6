"""Idle cost of a windowed flow: 10 tags at 1 Hz with 1-minute windows, in CPU % of one core.

Runs the real ``python -m bytewax.run`` on a compiled spec against a pymodbus simulator, twice —
with the window (+ anomaly) taps and without them — and reports the CPU each process used over the
measuring window (``/proc`` via psutil, after a warm-up)::

    python -m bench.idle --seconds 60

The sinks are replaced by ones that discard, so no database or broker is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import psutil
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.signals import Signal
from dataflows.compiler import Runtime, compile_flow
from dataflows.spec import parse_spec

TAGS = 10


class _Discard(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                pass

        return Part()


def spec_doc(port: int, windows: bool) -> dict[str, Any]:
    tags = [
        {"name": f"t{i}", "table": "holding", "address": i, "data_type": "int16", "scale": 0.1,
         "alarms": {"high": 1e6}}
        for i in range(TAGS)
    ]  # fmt: skip
    operators: list[dict[str, Any]] = [{"id": "normalize", "type": "normalize"}]
    if windows:
        operators += [{"id": "agg", "type": "window", "windows": ["1m"]}, {"id": "alarms", "type": "anomaly"}]
    return {
        "version": 1,
        "id": "idle",
        "devices": [
            {
                "id": "d1",
                "connection": {"host": "127.0.0.1", "port": port},
                "poll_interval_s": 1.0,
                "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
                "tags": tags,
            }
        ],
        "operators": operators,
        "sinks": [{"id": "out", "type": "mqtt_uns"}],
    }


def flow() -> Dataflow:
    """The flow ``bytewax.run`` loads: port and variant from the environment."""
    port = int(os.environ["NEXUS_IDLE_PORT"])
    windows = os.environ.get("NEXUS_IDLE_WINDOWS") == "1"
    spec = parse_spec(spec_doc(port, windows))
    return compile_flow(spec, Runtime(sinks={"out": _Discard(), "derived": _Discard()}))


def measure(port: int, windows: bool, warmup_s: float, seconds: float) -> float:
    env = {**os.environ, "NEXUS_IDLE_PORT": str(port), "NEXUS_IDLE_WINDOWS": "1" if windows else "0"}
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "bench.idle:flow()"], env=env)
    try:
        p = psutil.Process(proc.pid)
        time.sleep(warmup_s)  # let imports and the first polls settle before measuring
        t0 = sum(p.cpu_times()[:2])
        w0 = time.monotonic()
        time.sleep(seconds)  # the measuring window
        used = sum(p.cpu_times()[:2]) - t0
        return 100.0 * used / (time.monotonic() - w0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window per variant")
    parser.add_argument("--warmup", type=float, default=10.0)
    args = parser.parse_args(argv)
    sine = Signal(kind="sine", amplitude=100, offset=200, period_s=30, noise=2)
    device = SimulatedDevice(
        "d1",
        1,
        [SimTag(ModbusTagAddress(table="holding", address=i, data_type="int16"), sine) for i in range(TAGS)],
    )
    with ModbusSimulator(port=0, devices=[device]) as sim:
        base = measure(sim.port, False, args.warmup, args.seconds)
        win = measure(sim.port, True, args.warmup, args.seconds)
    result = {"tags": TAGS, "poll_interval_s": 1.0, "cpu_percent_without_windows": round(base, 2),
              "cpu_percent_with_windows": round(win, 2), "load_average": os.getloadavg()}  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
