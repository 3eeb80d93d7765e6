"""The MQTT source's ack path: QoS 1 acknowledged only once durable; a crash replays from the spool."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.mqtt.source import MqttSource, _MqttPartition
from connectors.mqtt.source_config import MqttSourceConfig, MqttSubscription, MqttTagMapping
from nexus.embedded import MosquittoBroker, free_port
from tests.connectors.mqtt.test_mqtt_source import DEV, Publisher, collect, config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not MosquittoBroker.available(), reason="needs mosquitto (persistent sessions)"),
]


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(free_port())
    b.start()
    yield b
    b.stop()


def _cfg(broker: MosquittoBroker, prefix: str) -> MqttSourceConfig:
    sub = MqttSubscription(topic_filter=f"{prefix}/v", device_id=DEV, tags=[MqttTagMapping(name="v")])
    return config(broker.url, sub, client_id=f"nexus-test-{prefix}", clean_session=False, qos=1)


def _part(
    cfg: MqttSourceConfig, spool: Path, wait_for: Callable[..., Any], resume: int | None = None
) -> _MqttPartition:
    source = MqttSource(cfg, spool_dir=str(spool))
    (key,) = source.list_parts()
    part = source.build_part("in", key, resume)
    wait_for(lambda: part.stats.subscribed, what="the subscription to be granted")
    return part


def _crash(part: _MqttPartition) -> None:
    """What a kill -9 leaves: the connection drops without DISCONNECT, nothing is flushed or closed."""
    part._client.loop_stop()
    sock = part._client.socket()
    if sock is not None:
        sock.close()
    part.spool._closed = True  # its flusher thread stops; the files stay as they are


def test_messages_not_yet_durable_are_redelivered_after_a_crash(
    broker: MosquittoBroker, prefix: str, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    cfg = _cfg(broker, prefix)
    part = _part(cfg, tmp_path / "a", wait_for)
    pub = Publisher(broker.url)
    try:
        for v in range(5):
            pub.send(f"{prefix}/v", str(v), qos=1)
        wait_for(lambda: part.stats.received == 5, what="5 messages received")
        assert part.acks_sent == 0  # received, not spooled: not acknowledged
        _crash(part)  # before next_batch: the points never reached the flow
        again = _part(cfg, tmp_path / "b", wait_for)
        try:
            assert sorted(collect(again, 5).values.tolist()) == [0, 1, 2, 3, 4]  # the broker redelivered
            wait_for(lambda: again.acks_sent == 5, what="the acks once spooled")
        finally:
            again.close()
    finally:
        pub.close()


def test_durable_messages_are_acked_and_replayed_from_the_spool_after_a_crash(
    broker: MosquittoBroker, prefix: str, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    cfg = _cfg(broker, prefix)
    spool = tmp_path / "spool"
    part = _part(cfg, spool, wait_for)
    pub = Publisher(broker.url)
    try:
        pub.send(f"{prefix}/v", "1", qos=1)
        assert collect(part, 1).values.tolist() == [1]
        state = part.snapshot()  # an epoch closes: Bytewax keeps this resume state
        pub.send(f"{prefix}/v", "2", qos=1)
        assert collect(part, 1).values.tolist() == [2]  # emitted; maybe not stored downstream yet
        wait_for(lambda: part.acks_sent == 2, what="both acked once durable")
        _crash(part)
        again = _part(cfg, spool, wait_for, resume=state)
        try:
            # the batch emitted after the snapshot comes again from the spool; the broker redelivers nothing
            assert collect(again, 1).values.tolist() == [2]
            assert again.stats.replayed_batches == 1
            pub.send(f"{prefix}/v", "3", qos=1)
            assert collect(again, 1).values.tolist() == [3]
        finally:
            again.close()
    finally:
        pub.close()


def test_snapshots_trim_the_spool(
    broker: MosquittoBroker, prefix: str, tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    part = _part(_cfg(broker, prefix), tmp_path, wait_for)
    pub = Publisher(broker.url)
    try:
        for v in range(3):
            pub.send(f"{prefix}/v", str(v), qos=1)
            collect(part, 1)
            part.snapshot()
        # the spool keeps one snapshot interval: everything before the previous snapshot is gone
        assert part.spool.pending_records == 1
    finally:
        pub.close()
        part.close()
