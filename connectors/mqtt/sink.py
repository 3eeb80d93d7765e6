"""Bytewax sink publishing point batches to the Unified Namespace.

``write_batch`` never waits for the broker: what cannot be published now goes to the publisher's
disk spool (see :class:`~connectors.mqtt.publisher.UnsPublisher`).
"""

from __future__ import annotations

from collections.abc import Mapping

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.publisher import UnsPublisher
from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.tags import TagInfo
from core.timerslack import restore_thread

__all__ = ["UnsSink"]


class _UnsPartition(StatelessSinkPartition[PointBatch | DeviceConfig]):
    def __init__(self, publisher: UnsPublisher) -> None:
        self.publisher = publisher

    def write_batch(self, items: list[PointBatch | DeviceConfig]) -> None:
        batches: list[PointBatch] = []
        for item in items:
            if isinstance(item, DeviceConfig):  # a hot config change: the device's tags from now on
                if batches:
                    self.publisher.publish_batches(batches)
                    batches = []
                self.publisher.update_tags(item.tags)
            else:
                batches.append(item)
        if batches:  # one hand-over to the client for all of them (QoS 0)
            self.publisher.publish_batches(batches)

    def close(self) -> None:
        self.publisher.close()


class UnsSink(DynamicSink[PointBatch | DeviceConfig]):
    """Each worker publishes through its own :class:`UnsPublisher` (its own client id)."""

    def __init__(self, config: MqttSinkConfig, tags: Mapping[int, TagInfo]) -> None:
        self.config = config
        self.tags = dict(tags)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UnsPartition:
        restore_thread()  # (a worker thread of a cluster: see core.timerslack)
        config = self.config
        if config.client_id is not None and worker_count > 1:
            config = config.model_copy(update={"client_id": f"{config.client_id}-{worker_index}"})
        if config.spool_dir is not None:  # each worker its own spool, found again after a restart
            config = config.model_copy(update={"spool_dir": f"{config.spool_dir}/w{worker_index}"})
        return _UnsPartition(UnsPublisher(config, self.tags, name=f"{step_id}-{worker_index}"))
