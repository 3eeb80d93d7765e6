"""The worker nap: the sleeper waits for an event, a due time or its cap; a napping flow still
hands over MQTT messages and window aggregates and drains on its stop event."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from connectors.devices import DeviceSource
from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.mqtt.client import make_client, unique_client_id
from connectors.mqtt.source import MqttSource
from connectors.mqtt.source_config import MqttSourceConfig, MqttSubscription, MqttTagMapping
from connectors.mqtt.url import parse_mqtt_url
from connectors.nap import WorkerNap, worker_nap
from core.batch import PointBatch, tag_id_for
from core.records import AggBatch
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
    from dataflows.routing import WorkerLocalSource

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
