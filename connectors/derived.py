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
import pickle
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.historian.derived import DerivedWriter
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.publisher import UnsPublisher, json_numbers
from connectors.resilience import Backoff
from connectors.spool import Spool
from core.batch import ns_to_datetime
from core.device_config import DeviceConfig
from core.records import AggBatch, Alert, OeeResult
from core.tags import TagInfo
from core.timerslack import restore_thread

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
    """One JSON message per aggregate (the same text ``json.dumps`` of the payload dict gives, built
    from a template: a closing window emits every tag's aggregate at once)."""
    out: list[tuple[str, str]] = []
    window = batch.window
    window_json = json.dumps(window)
    buckets: dict[int, str] = {}
    units: dict[str, str] = {}
    cols = zip(
        batch.bucket_ns.tolist(),
        batch.tag_ids.tolist(),
        json_numbers(batch.min),  # each column formatted in one call (a per-value repr cost ~5x)
        json_numbers(batch.max),
        json_numbers(batch.avg),
        batch.count.tolist(),
        json_numbers(batch.sum),
        json_numbers(batch.first),
        json_numbers(batch.last),
        json_numbers(batch.twa),
        strict=True,
    )
    for bucket, tag_id, mn, mx, av, count, total, first, last, twa in cols:
        tag = tags.get(tag_id)
        if tag is None:
            continue
        stamp = buckets.get(bucket)
        if stamp is None:
            stamp = buckets[bucket] = json.dumps(_iso(bucket))
        unit = units.get(tag.unit)
        if unit is None:
            unit = units[tag.unit] = json.dumps(tag.unit)
        out.append(
            (
                f"{tag.topic}/_agg/{window}",
                f'{{"bucket": {stamp}, "window": {window_json}, "min": {mn}, "max": {mx}, '
                f'"avg": {av}, "count": {count!r}, "sum": {total}, "first": {first}, '
                f'"last": {last}, "twa": {twa}, "unit": {unit}}}',
            )
        )
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
    spool_dir: str | None = None
    """Disk spool of the database side (``None``: a temporary folder that does not survive the process)."""
    spool_max_bytes: int = 1 << 30
    spool_max_age_s: float = 7 * 86400.0


_IDLE_S = 5.0
"""The store's thread waits this long for an append when the spool is empty (a safety net: every
append wakes it at once). It used to poll twice a second: 0.0002-0.0003 cores of a 10-device flow."""


class _DerivedStore:
    """The database side: records go to a disk spool, a thread writes them in order and acknowledges.

    Derived records are few (one aggregate row per tag and window, alerts, OEE periods), so they are
    pickled whole. ``write`` never waits for the database; while it is away the spool grows, bounded
    like every spool. A record the database refuses for another reason than the connection is
    retried a few times, then skipped with an ERROR log (counted), so one bad record cannot block the
    rest forever.
    """

    MAX_ATTEMPTS = 5

    def __init__(self, targets: DerivedTargets, name: str) -> None:
        assert targets.database_url is not None
        self._writer = DerivedWriter(targets.database_url, targets.windows)
        self.spool = Spool(
            targets.spool_dir, name=name, max_bytes=targets.spool_max_bytes, max_age_s=targets.spool_max_age_s
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.records_written = 0
        self.records_skipped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._thread.start()

    def write(self, items: list[Derived]) -> None:
        if items:
            self.spool.append(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
            self._wake.set()

    def _run(self) -> None:
        backoff = Backoff(initial_s=0.2, max_s=30.0)
        attempts = 0
        try:
            self._writer.connect()
        except psycopg.Error as exc:  # the database is away: the first write retries
            log.warning(
                "derived store: database not reachable at start (%s); writes will retry", type(exc).__name__
            )
        while not self._stop.is_set():
            self._wake.clear()  # before the read: an append from now on wakes the wait below
            records = self.spool.read(max_records=32)
            if not records:
                self._wake.wait(_IDLE_S)
                continue
            seq, rec = records[0]
            try:
                items: list[Derived] = pickle.loads(rec)
                self._writer.write_aggs([i for i in items if isinstance(i, AggBatch)])
                self._writer.write_alerts([i for i in items if isinstance(i, Alert)])
                self._writer.write_oee([i for i in items if isinstance(i, OeeResult)])
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.errors += 1
                attempts += 1
                operational = isinstance(exc, psycopg.OperationalError)
                if not operational and attempts >= self.MAX_ATTEMPTS:
                    log.error("derived store: record %d refused %d times (%r); skipped", seq, attempts, exc)
                    self.records_skipped += 1
                    self.spool.ack(seq)
                    attempts = 0
                    continue
                delay = backoff.next_delay()
                log.warning(
                    "derived store: write failed (%r); kept in the spool, retrying in %.1f s", exc, delay
                )
                self._stop.wait(delay)
                continue
            attempts = 0
            backoff = Backoff(initial_s=0.2, max_s=30.0)
            self.records_written += 1
            self.spool.ack(seq)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.spool.pending_records:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def close(self, timeout: float = 10.0) -> None:
        if not self.flush(timeout):
            log.warning("derived store: %d records not written at close", self.spool.pending_records)
        self._stop.set()
        self._wake.set()
        self._writer.close()
        self._thread.join(timeout=5)
        self.spool.close()

    def stats(self) -> dict[str, int]:
        return {
            "records_written": self.records_written,
            "records_skipped": self.records_skipped,
            "errors": self.errors,
            **self.spool.stats(),
        }


class _DerivedPartition(StatelessSinkPartition[Derived]):
    def __init__(self, targets: DerivedTargets, name: str = "derived") -> None:
        self.targets = targets
        self.tags = dict(targets.tags)
        """Tag metadata, grown by the in-band config items of hot device changes (new tags)."""
        self._publisher = (
            UnsPublisher(targets.mqtt, targets.tags, name=f"{name}-uns") if targets.mqtt else None
        )
        self._store = _DerivedStore(targets, f"{name}-db") if targets.database_url else None

    def write_batch(self, items: list[Derived]) -> None:
        configs = [i for i in items if isinstance(i, DeviceConfig)]
        for config in configs:
            self.tags.update(config.tags)
        if configs:
            items = [i for i in items if not isinstance(i, DeviceConfig)]
        if self._store is not None:
            self._store.write(items)
        if self._publisher is not None:
            aggs = [i for i in items if isinstance(i, AggBatch)]
            alerts = [i for i in items if isinstance(i, Alert)]
            oee = [i for i in items if isinstance(i, OeeResult)]
            tags = self.tags
            messages = [m for batch in aggs for m in agg_messages(batch, tags)]
            messages += [m for m in (alert_message(a, tags) for a in alerts) if m is not None]
            messages += [
                m for m in (oee_message(r, self.targets.machine_topics) for r in oee) if m is not None
            ]
            self._publisher.publish_messages(messages)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._publisher is not None:
            out["uns"] = self._publisher.stats()
        if self._store is not None:
            out["db"] = self._store.stats()
        return out

    def close(self) -> None:
        try:
            if self._publisher is not None:
                self._publisher.close()
        finally:
            if self._store is not None:
                self._store.close()


class DerivedSink(DynamicSink[Derived]):
    """Bytewax sink for aggregates, alerts and OEE results: published and/or stored, through spools."""

    def __init__(self, targets: DerivedTargets) -> None:
        self.targets = targets

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DerivedPartition:
        restore_thread()  # (a worker thread of a cluster: see core.timerslack)
        targets = self.targets
        if targets.spool_dir is not None:
            targets = replace(targets, spool_dir=f"{targets.spool_dir}/w{worker_index}")
        if targets.mqtt is not None and targets.mqtt.spool_dir is not None:
            mqtt = targets.mqtt.model_copy(update={"spool_dir": f"{targets.mqtt.spool_dir}/w{worker_index}"})
            targets = replace(targets, mqtt=mqtt)
        return _DerivedPartition(targets, f"{step_id}-{worker_index}")
