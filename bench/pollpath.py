"""Hot microbenchmark of the poll-loop thread: its CPU per poll, next to a bare pymodbus loop (issue 16).

The cost stage measures the whole flow process; this isolates the one thread that polls. N devices
(``--devices``, 100 holding registers each at ``--interval``) on the benchmark's Modbus simulators (their
own process, as the cost stage runs them) are polled by a :class:`~connectors.devices.DeviceSource`'s
partitions in one :class:`~connectors.polling.PollGroup`, whose ready queue a plain thread drains as the
Bytewax worker would (``next_batch`` in a loop, napping as configured by ``NEXUS_SOURCE_MAX_WAIT_MS``).
The figure is ``time.thread_time()`` read inside the loop thread at both ends of the window, divided by
the polls completed in it: everything the loop does per poll (timer, scheduling, client, pymodbus,
decode, batch, hand-over, notify).

Next to it, in the same run and against the same simulators, the bare baseline of the cost stage
(:mod:`bench.cost_bare`): one event loop thread that wakes once per interval and gathers
``read_holding_registers(0, count=100)`` of every device (no schedule, decoding or batch). Each
side runs in a process of its own, so one's garbage and caches do not bill the other.

``--a`` / ``--b`` compare two checkouts (``--a /work/main --b .``): the source side runs from each
checkout's code (``PYTHONPATH``), alternating A B / B A round after round; the bare side once per round.

    python -m bench.pollpath --devices 10,100 --a /work/main --b . --rounds 2
    python -m bench.pollpath --devices 100 --profile 30   # + cProfile of the loop thread, top 30

``--profile N`` runs cProfile inside the loop thread over the window (the figure of that run is then
inflated by the profiler) and prints its top ``N`` functions by own time to stderr. Prints one JSON
document; run it under the shared measurement lock.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TAGS = 100


def _plans(devices: int, tags: int, interval: float, ports: list[int]) -> list[Any]:
    from bench.load import Load
    from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress

    load = Load(devices=devices, tags=tags, poll_interval_s=interval)
    plans = []
    for i in range(devices):
        port_index, unit = load.placement(i)
        connection = ModbusConnection(host="127.0.0.1", port=ports[port_index], unit_id=unit, timeout_s=2.0)
        tag_ids = load.tag_ids(i).tolist()
        addresses = tuple(
            (tag_id, ModbusTagAddress(table="holding", address=j)) for j, tag_id in enumerate(tag_ids)
        )
        plans.append(ModbusDevicePlan(load.device_id(i), connection, interval, addresses))
    return plans


def _profiled(profile: int) -> tuple[Any, Any]:
    """(start, stop) callables to run in the thread to profile; ``stop`` returns the report text."""
    if not profile:
        return (lambda: None), (lambda: "")
    prof = cProfile.Profile()

    def stop() -> str:
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(profile)
        return out.getvalue()

    return prof.enable, stop


def run_source(cfg: dict[str, Any]) -> dict[str, Any]:
    """The production source path: partitions of one group on the shared loop thread, drained by a thread."""
    from connectors.devices import DeviceSource

    stop = threading.Event()
    source = DeviceSource(_plans(cfg["devices"], cfg["tags"], cfg["interval"], cfg["ports"]), stop_event=stop)
    parts = source.build_parts("pollpath", source.list_parts())
    first = next(iter(parts.values()))
    loop: asyncio.AbstractEventLoop = first._loop  # the shared loop thread's loop: to read its thread_time
    handed = [0, 0]  # batches, points

    def drain() -> None:
        while True:
            try:
                out = first.next_batch()
            except StopIteration:
                return
            handed[0] += len(out)
            handed[1] += sum(len(b) for b in out)
            if not out and first.poll_group._nap is None:  # no nap: do not spin
                time.sleep(0.002)

    def in_loop(fn: Any) -> Any:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: fut.set_result(fn()))
        return fut.result(5)

    def completed() -> int:
        return sum(s.completed for s in source.stats().values())

    def skipped() -> int:
        return sum(s.skipped_polls for s in source.stats().values())

    drainer = threading.Thread(target=drain, name="pollpath-drain", daemon=True)
    drainer.start()
    time.sleep(cfg["warmup"])
    start_profile, stop_profile = _profiled(cfg["profile"])
    polls0, skipped0, load0 = completed(), skipped(), os.getloadavg()[0]
    cpu0 = in_loop(lambda: (start_profile(), time.thread_time())[1])
    time.sleep(cfg["seconds"])
    cpu1, report = in_loop(lambda: (time.thread_time(), stop_profile()))
    polls, skips = completed() - polls0, skipped() - skipped0
    stop.set()
    drainer.join(10)
    for part in parts.values():
        part.close()
    if report:
        print(report, file=sys.stderr)
    return _figures(cpu1 - cpu0, polls, cfg, load0) | {"skipped": skips, "points": handed[1]}


def run_bare(cfg: dict[str, Any]) -> dict[str, Any]:
    """The bare baseline, as the cost stage's: every interval one wake-up reads every device at once
    (``asyncio.gather`` of one ``read_holding_registers`` per device, one connection each)."""
    from pymodbus.client import AsyncModbusTcpClient

    from bench.load import Load

    load = Load(devices=cfg["devices"], tags=cfg["tags"], poll_interval_s=cfg["interval"])
    polls = [0]

    async def read_all(clients: list[tuple[Any, int]]) -> None:
        loop = asyncio.get_running_loop()
        origin, k = loop.time(), 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, origin + k * load.poll_interval_s - loop.time()))
            replies = await asyncio.gather(
                *(c.read_holding_registers(0, count=load.tags, device_id=u) for c, u in clients)
            )
            polls[0] += sum(not r.isError() for r in replies)

    async def main() -> dict[str, Any]:
        clients = []
        for i in range(load.devices):
            port_index, unit = load.placement(i)
            client = AsyncModbusTcpClient("127.0.0.1", port=cfg["ports"][port_index], retries=0, timeout=2)
            await client.connect()
            clients.append((client, unit))
        task = asyncio.create_task(read_all(clients))
        await asyncio.sleep(cfg["warmup"])
        polls0, cpu0, load0 = polls[0], time.thread_time(), os.getloadavg()[0]
        await asyncio.sleep(cfg["seconds"])
        cpu, n = time.thread_time() - cpu0, polls[0] - polls0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for client, _ in clients:
            client.close()
        return _figures(cpu, n, cfg, load0)

    return asyncio.run(main())


def _figures(cpu_s: float, polls: int, cfg: dict[str, Any], load0: float) -> dict[str, Any]:
    return {
        "loop_cpu_s": round(cpu_s, 4),
        "polls": polls,
        "us_per_poll": round(cpu_s / polls * 1e6, 1) if polls else None,
        "cores": round(cpu_s / cfg["seconds"], 4),
        "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _side(root: Path, kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One side in its own process, from checkout ``root``'s code."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, __file__, "--run", json.dumps({**cfg, "kind": kind})],
        env=env, cwd=root, stdout=subprocess.PIPE, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="10,100")
    p.add_argument("--tags", type=int, default=TAGS)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--a", default=None, help="baseline checkout (its source side runs next to --b's)")
    p.add_argument("--b", default=".", help="checkout under test (default: this one)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--profile", type=int, default=0, help="cProfile the loop thread; print the top N")
    p.add_argument("--run", help=argparse.SUPPRESS)  # one side, in its own process
    args = p.parse_args(argv)
    if args.run:
        cfg = json.loads(args.run)
        print(json.dumps(run_source(cfg) if cfg["kind"] == "source" else run_bare(cfg)))
        return

    from bench import cli
    from bench.load import Load

    sides = {"b": Path(args.b).resolve()} | ({"a": Path(args.a).resolve()} if args.a else {})
    here = Path(__file__).resolve().parents[1]
    result: dict[str, Any] = {"a": args.a, "b": args.b, "loads": {}}
    for devices in [int(x) for x in args.devices.split(",") if x]:
        load = Load(devices=devices, tags=args.tags, poll_interval_s=args.interval)
        sim, ports = cli.start_sim(load)
        cfg = {
            "devices": devices, "tags": args.tags, "interval": args.interval, "ports": ports,
            "warmup": args.warmup, "seconds": args.seconds, "profile": args.profile,
        }  # fmt: skip
        rounds = []
        try:
            for r in range(args.rounds):
                order = sorted(sides) if r % 2 == 0 else sorted(sides, reverse=True)
                row: dict[str, Any] = {"bare": _side(here, "bare", cfg)}
                for side in order:
                    row[side] = _side(sides[side], "source", cfg)
                    row[f"{side}_over_bare"] = _ratio(row[side], row["bare"])
                if "a" in row:
                    row["b_over_a"] = _ratio(row["b"], row["a"])
                rounds.append(row)
                print(f"{devices} devices round {r + 1}: {json.dumps(row)}", file=sys.stderr)
        finally:
            cli._stop_sim(sim)
        summary: dict[str, Any] = {"rounds": rounds}
        for key in ("bare", *sides):
            summary[f"median_us_{key}"] = statistics.median(x[key]["us_per_poll"] or 0 for x in rounds)
        if args.a:
            summary["median_b_over_a"] = statistics.median(x["b_over_a"] for x in rounds)
        result["loads"][str(devices)] = summary
    print(json.dumps(result, indent=1))


def _ratio(x: dict[str, Any], base: dict[str, Any]) -> float | None:
    a, b = x["us_per_poll"], base["us_per_poll"]
    return round(a / b, 3) if a and b else None


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script by _side: import from the checkout, not bench/
        sys.path[0] = os.environ.get("PYTHONPATH", ".")
    main()
