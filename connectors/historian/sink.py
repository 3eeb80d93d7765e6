"""Bytewax sink writing point batches to the historian."""

from __future__ import annotations

from collections.abc import Mapping

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.historian.config import HistorianConfig
from connectors.historian.writer import HistorianWriter
from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.tags import TagInfo
from core.timerslack import restore_thread

__all__ = ["HistorianSink"]


class _HistorianPartition(StatelessSinkPartition[PointBatch | DeviceConfig]):
    def __init__(self, writer: HistorianWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[PointBatch | DeviceConfig]) -> None:
        batches: list[PointBatch] = []
        for item in items:
            if isinstance(item, DeviceConfig):  # a hot config change: register the device's tags
                self.writer.write_many(batches)  # before it: the points that came before it
                batches = []
                self.writer.add_tags(item.tags.values())
            else:
                batches.append(item)
        self.writer.write_many(batches)

    def close(self) -> None:
        self.writer.close()


class HistorianSink(DynamicSink[PointBatch | DeviceConfig]):
    """Each worker writes through its own :class:`HistorianWriter` (its own connection)."""

    def __init__(self, config: HistorianConfig, tags: Mapping[int, TagInfo]) -> None:
        self.config = config
        self.tags = dict(tags)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _HistorianPartition:
        restore_thread()  # (a worker thread of a cluster: see core.timerslack)
        config = self.config
        if config.spool_dir is not None:  # each worker its own spool, found again after a restart
            config = config.model_copy(update={"spool_dir": f"{config.spool_dir}/w{worker_index}"})
        return _HistorianPartition(HistorianWriter(config, self.tags, name=f"{step_id}-{worker_index}"))
