"""Issue 11 (c): a broker killed under QoS 0 load — the replay keeps each tag's order.

Real mosquitto (its own process, stopped with SIGSTOP so paho's queue fills, then SIGKILL), the real
publisher and its real disk spool. The spool is first-in first-out, so the order records are
appended in is the order they are replayed in: blobs paho discarded at the disconnect must be
appended before any message spooled after it (they used to go in at the reconnect, behind them).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.chaos import Mosquitto
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.publisher import _KIND_BATCH, UnsPublisher, decode_messages
from connectors.spool import decode_batch
from core.batch import PointBatch
from core.tags import TagInfo
from nexus.embedded import free_port

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000
TAGS = {i: TagInfo(i, "press-01", f"t{i}", "", f"acme/order/press-01/t{i}") for i in range(1, 101)}


def _timestamps(record: bytes) -> list[tuple[str, str]]:
    """(topic, timestamp) of every message of one spool record, in record order."""
    if record[:1] == _KIND_BATCH:
        b = decode_batch(record[1:])
        return [(TAGS[int(t)].topic, str(int(ts))) for t, ts in zip(b.tag_ids, b.ts_ns, strict=True)]
    out = []
    for topic, payload in decode_messages(record):
        at = payload.index(b'"timestamp":"') + 13
        out.append((topic, payload[at : at + 27].decode()))
    return out


@pytest.mark.parametrize("qos", [0, 1])
def test_messages_lost_at_a_broker_kill_are_replayed_before_later_ones(
    qos: int, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    """QoS 0: blobs paho never wrote; QoS 1: messages the broker never acknowledged."""
    broker = Mosquitto(tmp_path / "broker", free_port())
    broker.start()
    cfg = MqttSinkConfig(
        url=broker.url, qos=qos, max_queue=5_000_000, spool_dir=str(tmp_path / "spool"), reconnect_max_s=1
    )
    pub = UnsPublisher(cfg, TAGS)
    appended: list[bytes] = []
    real_append_many = pub.spool.append_many

    def recording_append_many(payloads: Any) -> int | None:
        payloads = [bytes(p) for p in payloads]
        appended.extend(payloads)
        return real_append_many(payloads)

    pub.spool.append_many = recording_append_many  # type: ignore[method-assign]
    ids = np.array(list(TAGS), dtype=np.int64)
    n = [0]

    def publish() -> None:
        n[0] += 1  # one poll: every tag, one timestamp, later than the last poll's
        pub.publish_batch(PointBatch.from_values("press-01", ids, np.ones(len(ids)), ts_ns=T0 + n[0] * 1000))

    try:
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)  # it stops reading: the socket fills, paho queues

        def flood() -> bool:
            for _ in range(50):
                publish()
            # QoS 1: below the publisher's window of unacknowledged messages (beyond it, it spools)
            return pub.outstanding >= (100_000 if qos == 0 else 20_000)

        wait_for(flood, timeout=120, what="paho's queue filling")
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait(10)
        broker.proc = None
        wait_for(lambda: publish() or not pub.connected, timeout=60, what="the disconnect")
        for _ in range(20):  # spooled while the broker is away: later than everything paho held
            publish()
        broker.start()
        assert pub.wait_drained(120), pub.stats()
        wait_for(lambda: pub.outstanding == 0, timeout=60, what=f"outstanding back to 0: {pub.stats()}")
        s = pub.stats()
    finally:
        pub.close(timeout=5)
        broker.stop()
    assert s["lost"] > 0, s  # the case under test happened: unsent or unacknowledged messages at the kill
    assert s["respooled"] == s["lost"] and s["dropped"] == 0, s
    last: dict[str, str] = {}
    behind = 0
    for record in appended:
        for topic, ts in _timestamps(record):
            if topic in last and _key(ts) < _key(last[topic]):
                behind += 1
            last[topic] = ts
    assert behind == 0, f"{behind} spooled messages are older than one spooled before them"


def _key(ts: str) -> int:
    """Batch records carry ns integers, message records ISO text: compare both as microseconds."""
    if ts.isdigit():
        return int(ts) // 1000
    return int(np.datetime64(ts.rstrip("Z"), "us").astype(np.int64))


def test_a_broker_kill_during_the_replay_resends_only_what_was_lost(
    tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    """The drain re-publishes from the first message the dead connection lost, not its whole read.

    QoS 1, so "lost" is exact: the stopped broker acknowledges nothing. (At QoS 0 one drain read,
    64 records, fits in the sockets' buffers, so a kill loses it there — not countable.) Every
    spooled message is then acknowledged exactly once: ``acked`` equals the number spooled. (The
    drain used to re-read and re-publish its whole read, and the lost ones were also re-spooled.)

    Whether the kill cuts the replay is a race (about 1 run in 6 the replay was fully acknowledged
    first, on main too, not understood yet): the scenario runs up to three times, every run must keep
    the exactly-once counts, and one of them must have cut the replay.
    """
    runs = []
    for attempt in range(3):
        s, total = _kill_during_replay(tmp_path / f"run{attempt}", wait_for)
        assert s["acked"] == total, s  # each spooled message written / acknowledged once
        assert s["rewound"] == s["lost"] and s["respooled"] == 0 and s["replayed"] == total, s
        runs.append(s)
        if s["lost"] > 0:
            break
    assert runs[-1]["lost"] > 0, runs  # the case under test happened: the kill cut the replay


def _kill_during_replay(folder: Path, wait_for: Callable[..., Any]) -> tuple[dict[str, Any], int]:
    qos = 1
    port = free_port()
    cfg = MqttSinkConfig(
        url=f"mqtt://127.0.0.1:{port}", qos=qos, max_queue=200_000, connect_timeout_s=0.2,
        spool_dir=str(folder / "spool"), reconnect_max_s=1, drain_messages_per_s=1_000_000,
    )  # fmt: skip
    pub = UnsPublisher(cfg, TAGS)  # no broker yet: everything goes to the spool
    broker = Mosquitto(folder / "broker", port)
    ids = np.array(list(TAGS), dtype=np.int64)
    try:
        for i in range(1, 601):  # 60,000 messages, 600 records: several drain reads
            pub.publish_batch(PointBatch.from_values("press-01", ids, np.ones(len(ids)), ts_ns=T0 + i * 1000))
        total = pub.spooled
        broker.start()
        assert broker.proc is not None
        wait_for(lambda: pub.connected, timeout=30, what="the connection")
        os.kill(broker.proc.pid, signal.SIGSTOP)  # mid-replay: what is written stays unread
        wait_for(lambda: pub.outstanding > 0, timeout=60, what="replayed messages awaiting their PUBACK")
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait(10)
        broker.proc = None
        wait_for(lambda: not pub.connected, timeout=30, what="the disconnect")
        broker.start()
        assert pub.wait_drained(120), pub.stats()
        wait_for(lambda: pub.outstanding == 0, timeout=60, what=f"outstanding back to 0: {pub.stats()}")
        return pub.stats(), total
    finally:
        pub.close(timeout=5)
        broker.stop()
