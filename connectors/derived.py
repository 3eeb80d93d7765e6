"""Publishing and storing what operators derive: window aggregates, alerts, OEE results.

Topics follow the UNS: a tag's aggregates under ``{tag topic}/_agg/{window}``, a device's alerts on
``{device topic}/_alerts``, a machine's OEE on ``{line topic}/{machine}/_oee``.

>>> import numpy as np
>>> from core.tags import TagInfo
>>> tags = {7: TagInfo(7, "press-01", "temp", "degC", "acme/p1/a/l1/press-01/temp")}
>>> batch = AggBatch("press-01", "1m", 60 * 10**9, np.array([0]), np.array([7]), np.array([2]),
...     np.array([3.0]), np.array([1.0]), np.array([2.0]), np.array([1.0]), np.array([2.0]), np.array([1.5]))
>>> [(topic, json.loads(payload)["avg"]) for topic, payload in agg_messages(batch, tags)]
[('acme/p1/a/l1/press-01/temp/_agg/1m', 1.5)]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.historian.derived import DerivedWriter
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.publisher import UnsPublisher
from core.batch import ns_to_datetime
from core.device_config import DeviceConfig
from core.records import AggBatch, Alert, OeeResult
from core.tags import TagInfo

log = logging.getLogger(__name__)

Derived = AggBatch | Alert | OeeResult | DeviceConfig
"""What the taps emit; a :class:`DeviceConfig` (a hot config change) brings a device's new tags."""


def _iso(ts_ns: int) -> str:
    return ns_to_datetime(ts_ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _device_topic(tag: TagInfo) -> str:
    return tag.topic.rsplit("/", 1)[0]


def agg_messages(batch: AggBatch, tags: Mapping[int, TagInfo]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    avg = batch.avg
    cols = zip(
        batch.bucket_ns.tolist(),
        batch.tag_ids.tolist(),
        batch.min.tolist(),
        batch.max.tolist(),
        avg.tolist(),
        batch.count.tolist(),
        batch.sum.tolist(),
        batch.first.tolist(),
        batch.last.tolist(),
        batch.twa.tolist(),
        strict=True,
    )
    for bucket, tag_id, mn, mx, av, count, total, first, last, twa in cols:
        tag = tags.get(tag_id)
        if tag is None:
            continue
        payload = {
            "bucket": _iso(bucket),
            "window": batch.window,
            "min": _num(mn),
            "max": _num(mx),
            "avg": _num(av),
            "count": count,
            "sum": _num(total),
            "first": _num(first),
            "last": _num(last),
            "twa": _num(twa),
            "unit": tag.unit,
        }
        out.append((f"{tag.topic}/_agg/{batch.window}", json.dumps(payload)))
    return out


def alert_message(alert: Alert, tags: Mapping[int, TagInfo]) -> tuple[str, str] | None:
    tag = tags.get(alert.tag_id)
    if tag is None:
        return None
    payload = {
        "tag": tag.name,
        "kind": alert.kind,
        "state": alert.state,
        "severity": alert.severity,
        "value": _num(alert.value),
        "limit": _num(alert.limit),
        "unit": tag.unit,
        "timestamp": _iso(alert.ts_ns),
        "message": alert.message,
    }
    return f"{_device_topic(tag)}/_alerts", json.dumps(payload)


def oee_message(result: OeeResult, machine_topics: Mapping[str, str]) -> tuple[str, str] | None:
    topic = machine_topics.get(result.machine)
    if topic is None:
        return None
    payload = {
        "machine": result.machine,
        "period": result.period,
        "start": _iso(result.start_ns),
        "end": _iso(result.end_ns),
        "availability": _num(result.availability),
        "performance": _num(result.performance),
        "quality": _num(result.quality),
        "oee": _num(result.oee),
        "run_s": result.run_s,
        "planned_stop_s": result.planned_stop_s,
        "unplanned_stop_s": result.unplanned_stop_s,
        "total_count": result.total_count,
        "good_count": result.good_count,
        "reject_count": result.reject_count,
        "downtime_s": dict(result.downtime_s),
    }
    return f"{topic}/_oee", json.dumps(payload)


@dataclass(frozen=True)
class DerivedTargets:
    """Where derived records go: a broker, a database, or both (a ``None`` skips that side)."""

    mqtt: MqttSinkConfig | None
    database_url: str | None
    windows: Sequence[str] = ()
    tags: Mapping[int, TagInfo] = field(default_factory=dict)
    machine_topics: Mapping[str, str] = field(default_factory=dict)
    """OEE topic prefix per machine: ``{enterprise}/{site}/{area}/{line}/{machine}``."""


class _DerivedPartition(StatelessSinkPartition[Derived]):
    def __init__(self, targets: DerivedTargets) -> None:
        self.targets = targets
        self.tags = dict(targets.tags)
        self._publisher = UnsPublisher(targets.mqtt, targets.tags) if targets.mqtt else None
        self._writer = DerivedWriter(targets.database_url, targets.windows) if targets.database_url else None

    def write_batch(self, items: list[Derived]) -> None:
        for item in items:
            if isinstance(item, DeviceConfig):
                self.tags.update(item.tags)
        aggs = [i for i in items if isinstance(i, AggBatch)]
        alerts = [i for i in items if isinstance(i, Alert)]
        oee = [i for i in items if isinstance(i, OeeResult)]
        if self._writer is not None:
            self._writer.write_aggs(aggs)
            self._writer.write_alerts(alerts)
            self._writer.write_oee(oee)
        if self._publisher is not None:
            tags = self.tags
            messages = [m for batch in aggs for m in agg_messages(batch, tags)]
            messages += [m for m in (alert_message(a, tags) for a in alerts) if m is not None]
            messages += [
                m for m in (oee_message(r, self.targets.machine_topics) for r in oee) if m is not None
            ]
            self._publisher.publish_messages(messages)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        if self._writer is not None:
            self._writer.close()


class DerivedSink(DynamicSink[Derived]):
    """Bytewax sink for aggregates, alerts and OEE results: published and/or stored."""

    def __init__(self, targets: DerivedTargets) -> None:
        self.targets = targets

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DerivedPartition:
        return _DerivedPartition(self.targets)
