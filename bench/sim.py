"""Modbus simulators for the benchmark, in their own process: ``python -m bench.sim LOAD_JSON``.

Serves the load's devices (at most ``DEVICES_PER_PORT`` unit ids per port, one pymodbus server per
port) and every ``update_s`` changes ``change_rate`` of each device's registers. Prints
``READY {"ports": [...]}`` once every port accepts connections; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import numpy as np

from bench.load import DEVICES_PER_PORT, Load
from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice


def build(load: Load) -> list[ModbusSimulator]:
    tags = [SimTag(ModbusTagAddress(table="holding", address=j)) for j in range(load.tags)]
    sims = []
    for p in range(load.ports_needed):
        first = p * DEVICES_PER_PORT
        devices = [
            SimulatedDevice(load.device_id(i), load.placement(i)[1], tags)
            for i in range(first, min(load.devices, first + DEVICES_PER_PORT))
        ]
        sims.append(ModbusSimulator("127.0.0.1", 0, devices))
    return sims


def update(sims: list[ModbusSimulator], load: Load, rng: np.random.Generator) -> None:
    """Change ``change_rate`` of the registers of every device (contiguous runs, one write each)."""
    for sim in sims:
        for device in sim.devices:
            values = rng.integers(0, 65535, size=load.tags)
            changed = np.flatnonzero(rng.random(load.tags) < load.change_rate)
            if len(changed) == load.tags:
                sim.set_registers(device.device_id, "holding", 0, values.tolist())
            else:
                for j in changed.tolist():
                    sim.set_registers(device.device_id, "holding", j, [int(values[j])])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = json.loads(argv[0])
    load = Load(**config["load"])
    update_s = float(config.get("update_s", load.poll_interval_s))
    sims = build(load)
    rng = np.random.default_rng(7)
    update(sims, load, rng)
    for sim in sims:
        sim.start(timeout_s=30)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("READY " + json.dumps({"ports": [s.port for s in sims]}), flush=True)
    next_at = time.monotonic()
    while not stop.is_set():
        next_at += update_s
        if load.change_rate > 0:
            update(sims, load, rng)
        stop.wait(max(0.0, next_at - time.monotonic()))
    for sim in sims:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
