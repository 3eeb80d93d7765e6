"""The worker nap: the sleeper waits for an event, a due time or its cap; a napping flow still
hands over MQTT messages and window aggregates and drains on its stop event."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from connectors.devices import DeviceSource
from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.source import MqttSource
from connectors.mqtt.source_config import MqttSourceConfig, MqttSubscription, MqttTagMapping
from connectors.mqtt.url import parse_mqtt_url
from connectors.nap import ALONE_MAX_WAIT_S, WorkerNap, set_worker_count, wake_all, worker_nap
from connectors.polling import schedule_offset
from core import wakeups
from core.batch import PointBatch, tag_id_for
from core.records import AggBatch
from dataflows.routing import WorkerLocalSource, worker_local_input
from operators.window import WindowAggregator
from operators.window_bytewax import tumbling_aggregate


def napping(nap: WorkerNap, owner: object) -> threading.Thread:
    t = threading.Thread(target=nap.nap, args=(owner,), daemon=True)
    t.start()
    return t


def ended(t: threading.Thread, timeout: float = 10.0) -> bool:
    t.join(timeout)
    return not t.is_alive()


def test_only_the_sleeper_naps_and_an_event_wakes_it() -> None:
    nap = WorkerNap(max_wait_s=60.0, quiet_calls=0)
    sleeper, other = object(), object()
    assert nap.attach(sleeper) and not nap.attach(other)
    nap.nap(other)  # not the sleeper: returns at once
    t = napping(nap, sleeper)
    deadline = time.monotonic() + 10
    while nap.naps == 0:  # asleep (the count goes up before the wait)
        assert time.monotonic() < deadline, "the sleeper never went to sleep"
        time.sleep(0.001)
    nap.notify()
    assert ended(t), "a notify did not wake the sleeper"


def test_an_event_before_the_nap_is_not_slept_through() -> None:
    nap = WorkerNap(max_wait_s=60.0, quiet_calls=0)
    sleeper = object()
    nap.attach(sleeper)
    nap.notify()  # e.g. a poll finished while the worker was busy elsewhere
    assert ended(napping(nap, sleeper))
    assert nap.naps == 0


def test_the_earliest_due_time_bounds_the_nap() -> None:
    nap = WorkerNap(max_wait_s=60.0, quiet_calls=0)
    sleeper, part = object(), object()
    nap.attach(sleeper)
    nap.set_due(part, time.time() + 0.05)
    nap.set_due(part, time.time() + 3600)  # superseded: the later time counts
    assert nap.earliest_due() is not None and nap.earliest_due() > time.time() + 3000  # type: ignore[operator]
    nap.set_due(part, time.time() + 0.05)
    assert ended(napping(nap, sleeper)), "the nap outlasted a partition's due time"
    nap.set_due(part, None)
    assert nap.earliest_due() is None


def test_after_a_hand_over_the_sleeper_skips_its_quiet_calls() -> None:
    nap = WorkerNap(max_wait_s=60.0, quiet_calls=2)
    sleeper = object()
    nap.attach(sleeper)
    nap.handed_over()
    for _ in range(2):  # the hand-over resets the count; two quiet calls follow, neither sleeps
        nap.nap(sleeper)
    assert nap.naps == 0
    t = napping(nap, sleeper)
    deadline = time.monotonic() + 10
    while nap.naps == 0:
        assert time.monotonic() < deadline, "the sleeper never went to sleep"
        time.sleep(0.001)
    nap.notify()
    assert ended(t)


def test_a_released_or_stale_sleeper_gives_up_its_role(monkeypatch: pytest.MonkeyPatch) -> None:
    nap = WorkerNap(max_wait_s=60.0)
    a, b = object(), object()
    assert nap.attach(a) and not nap.attach(b)
    nap.release(a)
    assert nap.attach(b)
    later = time.monotonic() + 5.0
    monkeypatch.setattr("connectors.nap.time.monotonic", lambda: later)  # b was not seen for 5 s
    assert not nap.active and nap.attach(a)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        WorkerNap(max_wait_s=0)
    with pytest.raises(ValueError, match="quiet_calls"):
        WorkerNap(max_wait_s=0.02, quiet_calls=-1)
    assert worker_nap(0.0) is None


# -- a napping flow ------------------------------------------------------------------------------


class _Collect(DynamicSink[Any]):
    def __init__(self) -> None:
        self.items: list[tuple[float, Any]] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        items = self.items

        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, batch: list[Any]) -> None:
                items.extend((time.time(), x) for x in batch)

        return Part()


@pytest.mark.integration
def test_a_napping_flow_hands_over_messages_and_windows_and_drains(mqtt_url: str) -> None:
    """A Modbus device polled every 30 s (the worker naps between), an MQTT device and a 1 s window
    over it: a published value reaches the sink, its window's aggregate is emitted when the bucket
    closes (a timer of the window step, not an event of a source), and the stop event ends the flow."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    temp = ModbusTagAddress(table="holding", address=0, data_type="int16")
    sim = ModbusSimulator(port=0, devices=[SimulatedDevice("press", 1, [SimTag(temp)])])
    with sim:
        plan = ModbusDevicePlan(
            "press", ModbusConnection(host="127.0.0.1", port=sim.port), 30.0, ((1, temp),)
        )
        stop = threading.Event()
        mqtt_cfg = MqttSourceConfig(
            url=mqtt_url,
            qos=0,
            subscriptions=[
                MqttSubscription(
                    topic_filter=f"{prefix}/#",
                    device_id="meter",
                    tags=[MqttTagMapping(name="kw", topic=f"{prefix}/kw")],
                )
            ],
        )
        flow = Dataflow("nap")
        polled = op.input("poll", flow, DeviceSource([plan], stop_event=stop, max_wait_s=0.02))
        mqtt = MqttSource(mqtt_cfg, stop_event=stop, max_wait_s=0.02)
        subscribed = op.input("mqtt", flow, mqtt)
        points = op.merge("merge", polled, subscribed)
        raw, windows = _Collect(), _Collect()
        op.output("raw", points, raw)
        keyed = op.key_on("key", points, lambda b: b.device_id)
        aggs, _late = tumbling_aggregate("w", keyed, WindowAggregator([1.0], idle_close_s=0.0))
        op.output("aggs", aggs, windows)
        runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
        runner.start()
        pub = make_client(mqtt_url, unique_client_id("test-pub"))
        u = parse_mqtt_url(mqtt_url)
        pub.connect(u.host, u.port)
        pub.loop_start()
        try:
            deadline = time.monotonic() + 20
            while not any(p.device_id == "meter" and p.subscribed for p in mqtt.stats().values()):
                assert time.monotonic() < deadline, "the MQTT subscription was never granted"
                time.sleep(0.01)
            published = time.time()
            pub.publish(f"{prefix}/kw", "12.5", qos=0).wait_for_publish(5)
            kw = tag_id_for("meter", "kw")
            while not any(isinstance(x, PointBatch) and kw in x.tag_ids for _, x in raw.items):
                assert time.monotonic() < deadline, "the MQTT message never came through"
                time.sleep(0.01)
            while not any(
                isinstance(agg, AggBatch) and agg.device_id == "meter" for _, (_k, agg) in windows.items
            ):
                assert time.monotonic() < deadline, "the window of the MQTT point was never emitted"
                time.sleep(0.01)
            nap = _nap_of(runner)
            assert nap is not None and nap.naps > 0, "the worker never napped"
            arrived = next(t for t, x in raw.items if isinstance(x, PointBatch) and kw in x.tag_ids)
            print(f"MQTT message handed over {1000 * (arrived - published):.1f} ms after publishing")
        finally:
            stop.set()
            pub.loop_stop()
            pub.disconnect()
            assert ended(runner, 20), "the flow did not drain on its stop event"


def _nap_of(thread: threading.Thread) -> WorkerNap | None:
    from connectors import nap as module

    return module._naps.get(thread.ident or 0)


def test_a_device_source_naps_through_worker_local_routing() -> None:
    """Wrapped in :class:`~dataflows.routing.WorkerLocalSource` (its partitions driven as one), an
    idle device's partition still becomes the sleeper and the flow still drains on its stop event."""
    temp = ModbusTagAddress(table="holding", address=0, data_type="int16")
    plan = ModbusDevicePlan("idle", ModbusConnection(host="127.0.0.1", port=1), 3600.0, ((1, temp),))
    stop = threading.Event()
    flow = Dataflow("nap_local")
    source = WorkerLocalSource(
        DeviceSource([plan], stop_event=stop, max_wait_s=0.02), key_of=lambda p: p.split(":", 1)[1]
    )
    op.output("out", op.input("poll", flow, source), _Collect())
    runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while (nap := _nap_of(runner)) is None or nap.naps < 5:
            assert time.monotonic() < deadline, "the worker never napped"
            time.sleep(0.01)
    finally:
        stop.set()
        assert ended(runner, 20), "the flow did not drain on its stop event"


# -- the cap of a worker alone, announced timers, the stop ----------------------------------------


def test_a_worker_alone_naps_up_to_the_long_cap_and_one_with_peers_up_to_max_wait() -> None:
    caps: dict[int, float] = {}

    def worker(count: int, items_from_peers: bool = True) -> None:
        set_worker_count(count, items_from_peers)
        nap = worker_nap(0.02)
        assert nap is not None
        key = count if items_from_peers else 10 * count
        caps[key] = nap.cap_s
        nap.attach(caps)
        nap.release(caps)  # the flow ends: the thread's worker count is forgotten
        caps[-key] = nap.cap_s

    for args in ((1,), (2,), (2, False)):
        t = threading.Thread(target=worker, args=args)
        t.start()
        t.join()
    # a worker whose peers send it no items (a worker-local sole input) is as alone as the only one
    assert caps == {1: ALONE_MAX_WAIT_S, -1: 0.02, 2: 0.02, -2: 0.02, 20: ALONE_MAX_WAIT_S, -20: 0.02}


class _OneItem(FixedPartitionedSource[int, None]):
    """One partition that hands over one item and ends (it never naps, so never becomes the sleeper)."""

    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _OneItemPart:
        return _OneItemPart()


class _OneItemPart(StatefulSourcePartition[int, None]):
    def __init__(self) -> None:
        self.left = 1

    def next_batch(self) -> list[int]:
        if not self.left:
            raise StopIteration
        self.left -= 1
        return [1]

    def snapshot(self) -> None:
        return None


def test_a_finished_flow_leaves_no_worker_count_to_the_threads_next_flow() -> None:
    """A worker-local source's build says its worker count on the thread; its close takes it back.
    Left behind, a later flow or partition on the thread (tests run many in one) napped with the
    lone worker's 1 s cap without saying so."""
    caps: list[float] = []

    def thread() -> None:
        flow = Dataflow("one_item")
        op.output("out", worker_local_input("in", flow, WorkerLocalSource(_OneItem(), str)), _Collect())
        run_main(flow)
        nap = worker_nap(0.02)
        assert nap is not None
        caps.append(nap.cap_s)

    t = threading.Thread(target=thread)
    t.start()
    assert ended(t, 20), "the flow did not end"
    assert caps == [0.02]


def test_a_reached_due_time_ends_the_nap_at_once_and_is_dropped() -> None:
    now = [1000.0]
    nap = WorkerNap(max_wait_s=60.0, quiet_calls=0, clock=lambda: now[0])
    sleeper, window = object(), object()
    nap.attach(sleeper)
    nap.set_due(window, 999.0)  # its step must run: the sleeper returns without waiting
    assert ended(napping(nap, sleeper))
    assert nap.naps == 0 and nap.earliest_due() is None


def test_an_operator_announces_its_timer_to_the_nap_of_its_thread() -> None:
    seen: dict[str, float | None] = {}
    at = datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC)

    def worker() -> None:
        nap = worker_nap(0.02)
        assert nap is not None
        wakeups.announce_due("window", at)  # what WindowLogic.notify_at does
        seen["due"] = nap.earliest_due()
        wakeups.announce_due("window", None)
        seen["after"] = nap.earliest_due()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"due": at.timestamp(), "after": None}


def test_wake_all_ends_every_nap() -> None:
    nap = WorkerNap(max_wait_s=60.0, quiet_calls=0)
    sleeper = object()
    nap.attach(sleeper)
    with _registered(nap):
        t = napping(nap, sleeper)
        deadline = time.monotonic() + 10
        while nap.naps == 0:
            assert time.monotonic() < deadline, "the sleeper never went to sleep"
            time.sleep(0.001)
        wake_all()
        assert ended(t), "wake_all did not wake the sleeper"


@contextlib.contextmanager
def _registered(nap: WorkerNap) -> Iterator[None]:
    from connectors import nap as module

    key = -threading.get_ident()  # not a real thread's: no other test's nap is replaced
    module._naps[key] = nap
    try:
        yield
    finally:
        module._naps.pop(key, None)


def test_a_lone_worker_wakes_for_its_window_timer_and_drains_when_woken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The only worker of a flow (worker-local routing) naps with no cap to speak of here: a window's
    aggregate still comes when its bucket closes (the window step announced its timer), and the stop
    drains once the naps are woken (as the stop handlers do)."""

    monkeypatch.setattr("connectors.nap.ALONE_MAX_WAIT_S", 3600.0)
    monkeypatch.setattr("connectors.nap.STALE_S", 7300.0)
    temp = ModbusTagAddress(table="holding", address=0, data_type="int16")
    sim = ModbusSimulator(port=0, devices=[SimulatedDevice("press", 1, [SimTag(temp)])])
    with sim:  # one poll soon, the next 30 s later: meanwhile only the window's timer can wake the worker
        plan = ModbusDevicePlan(
            _polled_soon(30.0), ModbusConnection(host="127.0.0.1", port=sim.port), 30.0, ((1, temp),)
        )
        stop = threading.Event()
        flow = Dataflow("nap_alone")
        source = WorkerLocalSource(
            DeviceSource([plan], stop_event=stop, max_wait_s=0.02), key_of=lambda p: p.split(":", 1)[1]
        )
        points = op.input("poll", flow, source)
        keyed = op.key_on("key", points, lambda b: b.device_id)
        aggs, _late = tumbling_aggregate("w", keyed, WindowAggregator([1.0], idle_close_s=0.0))
        windows = _Collect()
        op.output("aggs", aggs, windows)
        runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 20
            while not windows.items:
                assert time.monotonic() < deadline, (
                    "the window was not emitted: its timer did not wake the worker"
                )
                time.sleep(0.01)
            nap = _nap_of(runner)
            assert nap is not None and nap.alone and nap.naps > 0
        finally:
            stop.set()
            wake_all()
            assert ended(runner, 20), "the flow did not drain when its naps were woken"


def _polled_soon(interval: float) -> str:
    """A device id whose first slot at ``interval`` comes 0.5-3 s from now (the offset is its hash)."""
    now = time.time()
    for i in range(10_000):
        device_id = f"press{i}"
        if 0.5 <= (schedule_offset(device_id, interval) - now) % interval <= 3.0:
            return device_id
    raise AssertionError("no device id with a slot soon")


def test_the_activation_that_advances_the_epoch_does_not_nap_and_naps_end_at_the_boundary() -> None:
    """A worker napping past its epoch boundary holds Bytewax's input back, and the peers' inputs
    spin until it advances (BENCHMARKS.md): naps end at the boundary, and the call that comes after
    it (the advancing activation) returns without waiting."""
    now = [1000.0]
    nap = WorkerNap(max_wait_s=0.02, quiet_calls=0, clock=lambda: now[0], epoch_s=10.0)
    nap.alone = True
    assert nap.attach("part")
    nap.saw_call("part", 1000.0)
    assert nap.nap_until(1009.999) == pytest.approx(1010.001)  # not the 1 s cap
    assert nap.nap_until(1005.0) == pytest.approx(1006.0)  # far from it: the cap
    now[0] = 1010.002
    nap.saw_call("part", now[0])
    before = nap.naps
    nap.nap("part")  # the advancing activation: no wait at all
    assert nap.naps == before
    assert nap.boundary() == pytest.approx(1020.002)
    nap.saw_call("other", 1030.0)  # only the sleeper's calls count
    assert nap.boundary() == pytest.approx(1020.002)


def test_an_advancing_call_that_returns_items_leaves_the_next_empty_call_free_to_nap() -> None:
    """The advancing activation may return items and so never reach ``nap``: the next empty call,
    within the new epoch, naps as usual."""
    now = [1000.0]
    nap = WorkerNap(max_wait_s=0.02, quiet_calls=0, clock=lambda: now[0], epoch_s=10.0)
    nap.alone = True
    assert nap.attach("part")
    nap.saw_call("part", 1000.0)
    now[0] = 1010.5
    nap.saw_call("part", now[0])  # advances the epoch; it returned items, no nap call
    now[0] = 1010.6
    nap.saw_call("part", now[0])
    before = nap.naps
    nap.nap("part")
    assert nap.naps == before + 1
