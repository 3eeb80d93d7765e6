"""Hot parameter swaps of every stateful step: a DeviceConfig item swaps the device's parameters;
the state of tags that stay is kept, removed tags are forgotten, new tags start fresh; the swapped
parameters travel in the snapshot (and yield to the spec when it is at least as new)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from bytewax.operators import StatefulLogic

from core.batch import PointBatch, tag_id_for
from core.device_config import DeviceConfig
from core.records import AggBatch, Alert
from core.tags import TagInfo
from operators.analytics_bytewax import CalculatedLogic, SwingingDoorLogic
from operators.anomaly import AnomalyDetector, RangeCheck, TagChecks
from operators.anomaly_bytewax import AnomalyLogic
from operators.bytewax_ops import DeadbandLogic, HotNormalizer
from operators.deadband import Deadband, DeadbandParams
from operators.expressions import CalculatedTags
from operators.hot import Swapped, keep_tags
from operators.normalize import NormalizeParams, Normalizer
from operators.swinging_door import SwingingDoor, SwingingDoorParams
from operators.window import WindowAggregator
from operators.window_bytewax import WindowLogic

S = 1_000_000_000
DEV = "press-01"


def cfg(version: int, tags: list[int], **params: Any) -> DeviceConfig:
    return DeviceConfig(
        DEV, version, {t: TagInfo(t, DEV, f"t{t}", "", f"a/b/c/d/{DEV}/t{t}") for t in tags}, params
    )


def batch(pairs: dict[int, float], ts_s: float, device: str = DEV) -> PointBatch:
    return PointBatch.from_values(device, list(pairs), list(pairs.values()), ts_ns=int(ts_s * S))


def points(out: Any) -> dict[int, float]:
    got: dict[int, float] = {}
    for item in out:
        if isinstance(item, PointBatch):
            got.update(zip(item.tag_ids.tolist(), item.values.tolist(), strict=True))
    return got


def test_deadband_swap_keeps_the_state_of_tags_that_stay() -> None:
    logic = DeadbandLogic(Deadband({1: DeadbandParams(absolute=1.0), 2: DeadbandParams(absolute=1.0)}))
    logic.on_item(batch({1: 10.0, 2: 20.0}, 0))
    item = cfg(4, [1, 3], deadband={1: DeadbandParams(absolute=5.0), 3: DeadbandParams(absolute=1.0)})
    out, keep = logic.on_item(item)
    assert list(out) == [item] and keep is StatefulLogic.RETAIN  # passed on, in order
    assert logic.state.tag_ids.tolist() == [1]  # tag 2 forgotten
    # 13 is within the new band of the kept 10 (the old band of 1 would publish it); tag 3 is new.
    assert points(logic.on_item(batch({1: 13.0, 3: 7.0}, 1))[0]) == {3: 7.0}
    assert points(logic.on_item(batch({1: 16.0}, 2))[0]) == {1: 16.0}
    snap = logic.snapshot()
    assert isinstance(snap, Swapped) and snap.version == 4
    spec = Deadband({1: DeadbandParams(absolute=1.0)})
    resumed = DeadbandLogic(spec, pickle.loads(pickle.dumps(snap)), start_version=3)
    assert points(resumed.on_item(batch({1: 19.0}, 3))[0]) == {}  # the swapped band of 5 resumed
    newer_spec = DeadbandLogic(spec, pickle.loads(pickle.dumps(snap)), start_version=4)
    assert points(newer_spec.on_item(batch({1: 18.0}, 3))[0]) == {1: 18.0}  # the spec's band of 1


def test_swinging_door_swap_keeps_held_points_of_tags_that_stay() -> None:
    spec = SwingingDoor({1: SwingingDoorParams(1.0), 2: SwingingDoorParams(1.0)})
    logic = SwingingDoorLogic(spec, None)
    for i in range(3):
        logic.on_item(batch({1: 10.0 + i * 0.1, 2: 5.0}, i))
    held_before = dict(zip(logic.state.tag_ids.tolist(), logic.state.held.tolist(), strict=True))
    assert held_before == {1: True, 2: True}
    logic.on_item(cfg(2, [1], swinging_door={1: SwingingDoorParams(2.0)}))
    assert logic.state.tag_ids.tolist() == [1] and bool(logic.state.held[0])
    assert logic.core.params[1].deviation == 2.0
    out, _ = logic.on_eof()  # the held point of the kept tag is archived; tag 2's is gone
    assert set(points(out)) == {1}


def test_calculated_swap_adds_and_removes_calculations_keeping_input_values() -> None:
    ids = {"a": tag_id_for(DEV, "a"), "b": tag_id_for(DEV, "b")}
    cores = {DEV: CalculatedTags(DEV, {"c": "a + b"}, ids)}
    logic = CalculatedLogic(cores, None)
    out, _ = logic.on_item(batch({ids["a"]: 1.0, ids["b"]: 2.0}, 0))
    assert points(out)[tag_id_for(DEV, "c")] == 3.0
    new_core = CalculatedTags(DEV, {"c": "a + b", "d": "a * 10"}, ids)
    logic.on_item(cfg(2, [*ids.values(), tag_id_for(DEV, "c"), tag_id_for(DEV, "d")], calculate=new_core))
    got = points(logic.on_item(batch({ids["b"]: 5.0}, 1))[0])
    assert got[tag_id_for(DEV, "c")] == 6.0  # a = 1 was kept
    got = points(logic.on_item(batch({ids["a"]: 2.0}, 2))[0])
    assert got[tag_id_for(DEV, "d")] == 20.0 and got[tag_id_for(DEV, "c")] == 7.0
    snap = logic.snapshot()
    assert isinstance(snap, Swapped)
    resumed = CalculatedLogic(cores, pickle.loads(pickle.dumps(snap)), start_version=1)
    got = points(resumed.on_item(batch({ids["a"]: 3.0}, 3))[0])
    assert got[tag_id_for(DEV, "d")] == 30.0 and got[tag_id_for(DEV, "c")] == 8.0
    # All calculations removed: batches pass through, and the logic remembers it (not the spec's).
    out, keep = logic.on_item(cfg(3, list(ids.values()), calculate=None))
    assert keep is StatefulLogic.RETAIN
    out, keep = logic.on_item(batch({ids["a"]: 4.0}, 4))
    assert points(out) == {ids["a"]: 4.0} and keep is StatefulLogic.RETAIN


def test_window_swap_drops_open_buckets_of_removed_tags_only() -> None:
    t0 = 1_700_000_000 * S
    logic = WindowLogic(WindowAggregator([60]), lambda: t0 + 10 * S, None)
    logic.on_item(PointBatch.from_values(DEV, [1, 2], [1.0, 2.0], ts_ns=t0 + S))
    logic.on_item(PointBatch.from_values(DEV, [1, 2], [3.0, 4.0], ts_ns=t0 + 2 * S))
    item = cfg(2, [1, 3])
    out, _ = logic.on_item(item)
    assert list(out) == [("config", item)]  # on the aggregates' side, for their sink
    logic.on_item(PointBatch.from_values(DEV, [3], [9.0], ts_ns=t0 + 3 * S))
    aggs = [a for kind, a in logic.on_eof()[0] if kind == "agg"]
    assert isinstance(aggs[0], AggBatch)
    counts = {int(t): int(c) for a in aggs for t, c in zip(a.tag_ids, a.count, strict=True)}
    assert counts == {1: 2, 3: 1}  # tag 1 kept both samples, tag 2 is gone, tag 3 starts fresh


def test_anomaly_swap_keeps_alarm_state_against_new_limits() -> None:
    spec = AnomalyDetector(
        {1: TagChecks(range=RangeCheck(high=10.0)), 2: TagChecks(range=RangeCheck(high=10.0))}
    )
    logic = AnomalyLogic.resume(spec, None)
    alerts, _ = logic.on_item(batch({1: 15.0, 2: 15.0}, 0))
    assert {(a.tag_id, a.state) for a in alerts if isinstance(a, Alert)} == {(1, "raised"), (2, "raised")}
    item = cfg(2, [1], anomaly={1: TagChecks(range=RangeCheck(high=20.0))})
    out, _ = logic.on_item(item)
    assert list(out) == [item]
    assert logic.state is not None and logic.state.tag_ids.tolist() == [1]
    alerts, _ = logic.on_item(batch({1: 15.0, 2: 30.0}, 1))
    # Tag 1's raised alarm was kept and clears against the new limit; tag 2 is not checked any more.
    assert [(a.tag_id, a.state) for a in alerts] == [(1, "cleared")]
    resumed = AnomalyLogic.resume(spec, pickle.loads(pickle.dumps(logic.snapshot())), start_version=1)
    assert resumed.core.checks[1].range == RangeCheck(high=20.0)


def test_normalizer_swap_is_per_device() -> None:
    step = HotNormalizer(Normalizer({1: NormalizeParams(scale=0.1), 2: NormalizeParams(scale=0.1)}))
    assert step(batch({1: 100.0}, 0)).values.tolist() == [10.0]
    item = cfg(2, [1], normalize={1: NormalizeParams(scale=2.0)})
    assert step(item) is item
    assert step(batch({1: 100.0}, 1)).values.tolist() == [200.0]
    assert step(batch({2: 100.0}, 1, device="other")).values.tolist() == [10.0]


@pytest.mark.parametrize("keep", [[1, 2, 3], [2], []])
def test_keep_tags_keeps_rows_aligned(keep: list[int]) -> None:
    core = Deadband({t: DeadbandParams(absolute=0.1) for t in (1, 2, 3)})
    state, _ = core.process(core.initial_state(), batch({1: 1.0, 2: 2.0, 3: 3.0}, 0))
    kept = keep_tags(state, np.array(keep, dtype=np.int64))
    assert kept.tag_ids.tolist() == keep
    assert kept.value.tolist() == [float(t) for t in keep]
    assert (kept is state) == (len(keep) == 3)
