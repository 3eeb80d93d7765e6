"""Bytewax sink publishing point batches through a Sparkplug B edge node."""

from __future__ import annotations

from dataclasses import replace

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.sparkplug.config import EdgeNodePlan
from connectors.sparkplug.edge_node import CommandSubmitter, SparkplugEdgeNode
from core.batch import PointBatch
from core.timerslack import restore_thread

__all__ = ["SparkplugSink"]


class _SparkplugPartition(StatelessSinkPartition[PointBatch]):
    def __init__(self, node: SparkplugEdgeNode) -> None:
        self.node = node

    def write_batch(self, items: list[PointBatch]) -> None:
        for item in items:
            if isinstance(item, PointBatch):
                self.node.publish_batch(item)
            elif hasattr(item, "tags") and hasattr(item, "device_id"):
                # a hot configuration change travelling in-band ahead of the device's next batch
                self.node.device_changed(item.device_id, item.tags)

    def close(self) -> None:
        self.node.close()


class SparkplugSink(DynamicSink[PointBatch]):
    """One edge node per worker. With several workers each is its own edge node
    (``{edge_node_id}-{worker}``): a Sparkplug session cannot be shared, and each worker only sees
    the devices keyed to it, which it births at their first batch."""

    def __init__(self, plan: EdgeNodePlan, commands: CommandSubmitter | None = None) -> None:
        self.plan = plan
        self.commands = commands

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SparkplugPartition:
        restore_thread()  # (a worker thread of a cluster: see core.timerslack)
        plan = self.plan
        if worker_count > 1:
            plan = replace(plan, edge_node_id=f"{plan.edge_node_id}-{worker_index}", birth_all_devices=False)
        return _SparkplugPartition(SparkplugEdgeNode(plan, commands=self.commands).start())
