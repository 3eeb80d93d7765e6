"""The fused chain as one Bytewax step gives what the four per-operator steps give."""

from __future__ import annotations

import pickle
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.connectors.files import FileSink
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, TestingSource, run_main

from core import wakeups
from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.tags import TagInfo
from operators import bytewax_ops
from operators.anomaly import AnomalyDetector
from operators.anomaly_bytewax import detect_anomalies
from operators.chain import ChainState, OperatorChain
from operators.chain_bytewax import DUE_GRID_NS, ChainLogic, Picked, operator_chain, output_picked
from operators.deadband import DeadbandParams
from operators.hot import Swapped
from operators.normalize import NormalizeParams
from operators.window import WindowAggregator
from operators.window_bytewax import tumbling_aggregate
from tests.operators.test_fast_paths import T0, S, cores, polls, same_output

NOW = T0 + 10_000 * S  # the windows' clock: far ahead, so idle closing never interferes


def _device(b: PointBatch) -> str:
    return b.device_id


def run(batches: list[PointBatch], fused: bool) -> dict[str, list[Any]]:
    norm, db, win, det = cores()
    flow = Dataflow("chain_test")
    s = op.input("in", flow, TestingSource(batches, batch_size=7))
    got: dict[str, list[Any]] = {"points": [], "aggs": [], "alerts": []}
    if fused:
        out = operator_chain(
            "chain", op.key_on("key", s, _device), OperatorChain(norm, db, win, det), clock=lambda: NOW
        )
        points, aggs, alerts = out.points, out.aggs, out.alerts
    else:
        keyed = op.key_on("key", bytewax_ops.normalize("normalize", s, norm), _device)
        points = bytewax_ops.deadband("deadband", keyed, db)
        aggs, _late = tumbling_aggregate("window", points, win, clock=lambda: NOW)
        alerts = detect_anomalies("checks", points, det)
    for name, stream in (("points", points), ("aggs", aggs), ("alerts", alerts)):
        op.output(name, stream, TestingSink(got[name]))
    run_main(flow)
    return got


def test_one_step_equals_four_steps() -> None:
    batches = polls(2, n_polls=90)
    fused, separate = run(batches, True), run(batches, False)
    assert len(fused["points"]) > 100 and fused["alerts"] and fused["aggs"]
    for name in fused:
        by_key = sorted(fused[name], key=lambda kv: kv[0]), sorted(separate[name], key=lambda kv: kv[0])
        assert same_output(*by_key), name


def test_snapshot_resumes_the_same_chain() -> None:
    """A device's logic rebuilt from its snapshot continues exactly as the original."""
    chain = OperatorChain(*cores())
    batches = [b for b in polls(4, n_polls=40) if b.device_id == "d0"]
    a = ChainLogic(chain, lambda: NOW, None)
    for b in batches[:20]:
        a.on_item(b)
    b_logic = ChainLogic(chain, lambda: NOW, pickle.loads(a.snapshot()))
    for b in batches[20:]:
        assert same_output(list(a.on_item(b)[0]), list(b_logic.on_item(b)[0]))
    assert same_output(a.on_eof()[0], b_logic.on_eof()[0])


def _config(version: int, tags: list[int], params: dict[str, Any]) -> DeviceConfig:
    infos = {t: TagInfo(t, "d0", f"t{t}", "", f"e/s/a/l/d0/t{t}") for t in tags}
    return DeviceConfig("d0", version, infos, params)


def test_a_config_item_swaps_the_device_and_keeps_the_state_of_tags_that_stay() -> None:
    """Scale and limits swap for the device; its deadband, window and checks keep the rows of
    the tags that stay and drop the others; the item comes out as is, and the snapshot carries the
    swapped parameters (resumed only when newer than the version the process starts with)."""
    chain = OperatorChain(*cores())
    batches = [b for b in polls(2, n_polls=30) if b.device_id == "d0"]
    logic = ChainLogic(chain, lambda: NOW, None)
    for b in batches[:20]:
        logic.on_item(b)
    tags = sorted(logic.state.deadband.tag_ids.tolist())
    keep = tags[: len(tags) // 2]
    item = _config(
        3,
        keep,
        {
            "normalize": {t: NormalizeParams(scale=1.0) for t in keep},
            "deadband": {t: DeadbandParams(absolute=1e9) for t in keep},  # nothing moves that far
            "anomaly": {},
        },
    )
    out, discard = logic.on_item(item)
    assert list(out) == [item] and discard is False
    assert logic.state.deadband.tag_ids.tolist() == keep
    assert logic.state.anomaly is not None and set(logic.state.anomaly.tag_ids.tolist()) <= set(keep)
    window = logic.state.window
    assert window is not None
    assert all(set(acc.tag_ids.tolist()) <= set(keep) for wb in window.windows for acc in wb.open)
    assert logic.core is not chain and logic.core.detector.checks == {}
    later = batches[20]
    (res,), _ = logic.on_item(later)
    points, _aggs, _late, alerts = res
    assert alerts == []
    # kept tags: within the swapped band of their kept value (nothing passes); the others are new
    assert set(points.tag_ids.tolist()) == set(later.tag_ids.tolist()) - set(keep)
    snap = logic.snapshot()
    assert isinstance(snap, Swapped) and snap.version == 3
    assert ChainLogic.resume(chain, lambda: NOW, snap, start_version=2).core.detector.checks == {}
    assert ChainLogic.resume(chain, lambda: NOW, snap, start_version=3).core is chain


def test_a_quiet_device_loses_its_window_state_only() -> None:
    """When the windows expire a quiet device (nothing open, nothing for ``tag_ttl_s``), the step
    keeps the key: its deadband and checks state and its swapped parameters stay."""
    norm, db, _win, det = cores()
    clock = [NOW]
    chain = OperatorChain(norm, db, WindowAggregator([60.0], lateness_s=0.0, tag_ttl_s=10.0), det)
    logic = ChainLogic(chain, lambda: clock[0], None)
    batches = [b for b in polls(2, n_polls=10) if b.device_id == "d0"]
    for b in batches[:5]:
        logic.on_item(b)
    logic.on_item(_config(2, logic.state.deadband.tag_ids.tolist(), {"deadband": {}}))
    swapped, deadband = logic.core, logic.state.deadband
    clock[0] += 10**15
    _aggs, discard = logic.on_notify()  # closes the open buckets
    _aggs, discard = logic.on_notify()  # then the windows expire
    assert discard is False and logic.state.window is None
    assert logic.core is swapped and logic.state.deadband is deadband and logic.notify_at() is None


def test_a_chain_without_checks_snapshots_without_pickling_and_resumes_the_same() -> None:
    """Without an anomaly part (changed in place) the snapshot is a new container around the same,
    never-changed states: later polls do not reach into it, and a logic resumed from it (or from
    its pickle, as Bytewax's recovery stores it) continues exactly as the original."""
    norm, db, win, _det = cores()
    chain = OperatorChain(norm, db, win, AnomalyDetector({}))
    batches = [b for b in polls(4, n_polls=40) if b.device_id == "d0"]
    a = ChainLogic(chain, lambda: NOW, None)
    for b in batches[:20]:
        a.on_item(b)
    snap = a.snapshot()
    assert isinstance(snap, ChainState) and snap is not a.state and snap.anomaly is None
    deadband, window = snap.deadband, snap.window
    resumed = ChainLogic.resume(chain, lambda: NOW, snap)
    from_disk = ChainLogic.resume(chain, lambda: NOW, pickle.loads(pickle.dumps(snap)))
    for b in batches[20:]:
        want = list(a.on_item(b)[0])
        assert same_output(want, list(resumed.on_item(b)[0]))
        assert same_output(want, list(from_disk.on_item(b)[0]))
    assert snap.deadband is deadband and snap.window is window  # the snapshot did not move on
    assert a.state.deadband is not deadband


class Recording(DynamicSink[Any]):
    """Records the step ids it is built under, each write and each close (a close may fail)."""

    def __init__(self, fail_close: bool = False) -> None:
        self.built: list[str] = []
        self.writes: list[list[Any]] = []
        self.closed = 0
        self.fail_close = fail_close

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        self.built.append(step_id)
        owner = self

        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                owner.writes.append(list(items))

            def close(self) -> None:
                owner.closed += 1
                if owner.fail_close:
                    raise RuntimeError("close failed")

        return Part()


def _evens(xs: list[int]) -> list[int]:
    return [x for x in xs if x % 2 == 0]


def _odds(xs: list[int]) -> list[int]:
    return [x for x in xs if x % 2]


def test_picked_sinks_share_one_output_step_and_keep_their_names() -> None:
    flow = Dataflow("picked")
    up = op.input("in", flow, TestingSource(list(range(1, 9)), batch_size=3))
    evens, odds, never = Recording(), Recording(), Recording()
    output_picked(
        "out",
        up,
        [Picked("evens", evens, _evens), Picked("odds", odds, _odds), Picked("never", never, lambda xs: [])],
    )
    assert [s.step_id for s in flow.substeps] == ["picked.in", "picked.out"]
    run_main(flow)
    # each sink is built under the step id it would have as a step of its own
    assert (evens.built, odds.built, never.built) == (["picked.evens"], ["picked.odds"], ["picked.never"])
    assert [x for w in evens.writes for x in w] == [2, 4, 6, 8]
    assert [x for w in odds.writes for x in w] == [1, 3, 5, 7]
    assert never.writes == []  # an empty pick writes nothing
    assert (evens.closed, odds.closed, never.closed) == (1, 1, 1)


def test_every_picked_sink_closes_when_one_fails_to() -> None:
    flow = Dataflow("picked")
    up = op.input("in", flow, TestingSource([1, 2]))
    first, second = Recording(fail_close=True), Recording()
    output_picked("out", up, [Picked("first", first, _evens), Picked("second", second, _odds)])
    with pytest.raises(Exception) as err:
        run_main(flow)
    assert "close failed" in "".join(str(e) for e in _causes(err.value))
    assert (first.closed, second.closed) == (1, 1)
    assert second.writes == [[1]]


def _causes(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def test_a_sink_that_is_not_dynamic_is_refused_by_name(tmp_path: Any) -> None:
    flow = Dataflow("picked")
    up = op.input("in", flow, TestingSource([1]))
    with pytest.raises(TypeError, match="sink 'file': a DynamicSink is needed here, got FileSink"):
        output_picked("out", up, [Picked("file", FileSink(tmp_path / "out.txt"), _odds)])


def test_the_timer_is_rounded_up_to_its_grid_and_announced_once_while_it_stays() -> None:
    """``notify_at`` rounds the windows' deadline up (never early) to ``DUE_GRID_NS``; asked again
    with nothing changed, it hands back the same object without announcing it to the nap again, but
    after ``on_notify`` (the nap drops a timer it reached) it announces it again; a device whose
    windows expire announces that it has no timer."""
    norm, db, _win, det = cores()
    windows = WindowAggregator([60.0], lateness_s=2.0, tag_ttl_s=10.0)
    logic = ChainLogic(OperatorChain(norm, db, windows, det), time.time_ns, None)
    seen: list[tuple[object, datetime | None]] = []
    previous = list(wakeups._listener)
    wakeups.listen(lambda owner, at: seen.append((owner, at)))
    try:
        for b in [b for b in polls(2, n_polls=6) if b.device_id == "d0"]:
            logic.on_item(b)
        first, window = logic.notify_at(), logic.state.window
        assert first is not None and window is not None
        raw = windows.next_deadline(window)
        assert raw is not None
        at_ns = (first - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
        assert raw <= at_ns < raw + DUE_GRID_NS and at_ns % DUE_GRID_NS == 0
        assert logic.notify_at() is first and logic.notify_at() is first
        assert seen == [(logic, first)]
        logic.on_notify()  # (nothing due yet) the nap dropped the timer that woke it: announced again
        assert logic.notify_at() == first and seen[1:] == [(logic, first)]
        logic.state.window = None  # (what ``on_notify`` leaves of an expired device)
        assert logic.notify_at() is None and seen[2:] == [(logic, None)]
    finally:
        wakeups._listener[:] = previous
