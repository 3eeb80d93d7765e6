"""The bare baselines of the ``cost`` stage, each in its own process so its CPU time is its own.

``python -m bench.cost_bare '<json>'`` with ``{"kind": "modbus" | "paho", "load": {...}, "warmup": s,
"seconds": s, ...}`` paces the same load as the flow (every device every ``poll_interval_s``) and prints
one JSON line: ``points`` handled in the measuring window, its ``seconds`` and the process's
``cpu_s`` (user + system, every thread) over it.

- ``modbus`` (``"ports"``): a bare pymodbus read of every device's registers per interval, all devices at
  once on one event loop, one connection per device (no decoding, no batch objects);
- ``paho`` (``"url"``): the UNS messages of the same polls, formatted *before* the measuring window,
  published with ``client.publish`` at QoS 0, one interval's worth at a time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.load import Load


def _measure(tick: Callable[[], int], interval: float, warmup: float, seconds: float) -> dict[str, float]:
    """Call ``tick`` (one interval's work, returns points) every ``interval`` s; CPU over the window."""
    points = 0
    start = time.monotonic()
    t_mark = start + warmup
    cpu0 = wall0 = None
    k = 0
    while True:
        now = time.monotonic()
        if cpu0 is None and now >= t_mark:
            cpu0, wall0, points = time.process_time(), now, 0
        if wall0 is not None and now - wall0 >= seconds:
            return {"points": points, "seconds": now - wall0, "cpu_s": time.process_time() - cpu0}  # type: ignore[operator]
        points += tick()
        k += 1
        time.sleep(max(0.0, start + k * interval - time.monotonic()))


def modbus(load: Load, ports: list[int], warmup: float, seconds: float) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient

    loop = asyncio.new_event_loop()
    clients: list[tuple[Any, int]] = []

    async def connect() -> None:
        for i in range(load.devices):
            port_index, unit = load.placement(i)
            client = AsyncModbusTcpClient("127.0.0.1", port=ports[port_index], retries=0, timeout=2)
            await client.connect()
            clients.append((client, unit))

    async def read_all() -> int:
        replies = await asyncio.gather(
            *(c.read_holding_registers(0, count=load.tags, device_id=u) for c, u in clients)
        )
        return sum(load.tags for r in replies if not r.isError())

    loop.run_until_complete(connect())
    try:
        return _measure(lambda: loop.run_until_complete(read_all()), load.poll_interval_s, warmup, seconds)
    finally:
        for c, _ in clients:
            c.close()
        loop.close()


def paho(load: Load, url: str, warmup: float, seconds: float) -> dict[str, float]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from bench.baselines import messages_for
    from connectors.mqtt.url import parse_mqtt_url
    from dataflows.spec import parse_spec

    tags = parse_spec(load.spec({"modbus": [1] * load.ports_needed})).tag_infos()
    polls = 5
    messages = messages_for(load.batches(polls, time.time_ns()), tags)
    per_poll = len(messages) // polls
    chunks = [messages[i * per_poll : (i + 1) * per_poll] for i in range(polls)]
    broker = parse_mqtt_url(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-cost-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    k = [0]

    def tick() -> int:
        publish = client.publish
        chunk = chunks[k[0] % polls]
        k[0] += 1
        for topic, payload in chunk:
            publish(topic, payload, 0)
        return len(chunk)

    try:
        return _measure(tick, load.poll_interval_s, warmup, seconds)
    finally:
        client.disconnect()
        client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    cfg = json.loads((sys.argv[1:] if argv is None else argv)[0])
    load = Load(**cfg["load"])
    if cfg["kind"] == "modbus":
        out = modbus(load, cfg["ports"], cfg["warmup"], cfg["seconds"])
    elif cfg["kind"] == "paho":
        out = paho(load, cfg["url"], cfg["warmup"], cfg["seconds"])
    else:
        raise SystemExit(f"unknown baseline kind {cfg['kind']!r}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
