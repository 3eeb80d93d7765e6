"""Compiled flows poll each device on the worker that holds its state, against real servers.

The device source of a compiled flow is a :class:`~dataflows.routing.WorkerLocalSource`. Three checks:

- with recovery on (as the supervisor runs every flow) a flow of a Modbus and an OPC UA device and
  no stateful step reads both until it is drained: it used to end at once, having read nothing
  (the recovery probe followed an empty stream of snapshots, see ``dataflows.routing``);
- as a 2-process cluster (``bytewax.run -i/-a``, recovery on) every device is polled by exactly one
  process, and the stateful step's output for a device comes out of the process that polls it; the
  cluster resumes the recovery store of a 1-process run (rescaling through recovery: the devices and
  their deadband state move together);
- a recovery store written by the flow as compiled before (Bytewax placing the device partitions)
  resumes: the deadband's state comes back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from connectors.devices import DeviceSource
from connectors.modbus.config import ModbusTagAddress
from connectors.modbus.simulator import ModbusSimulator, SimTag, SimulatedDevice
from connectors.opcua.simulator import OpcUaSimulator, SimVariable
from core.batch import PointBatch, tag_id_for
from core.quality import Quality
from dataflows.compiler import Runtime, compile_flow, device_plans
from dataflows.routing import worker_of
from dataflows.spec import FlowSpec, parse_spec
from nexus.embedded import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
LOCATION = {"enterprise": "acme", "site": "s1", "area": "a1", "line": "l1"}
LEVEL = ModbusTagAddress(table="holding", address=0, data_type="int16")
COUNT = ModbusTagAddress(table="holding", address=1, data_type="int16")


def modbus_device(device_id: str, port: int, unit_id: int, deadband: bool = False) -> dict[str, Any]:
    level: dict[str, Any] = {"name": "level", "table": "holding", "address": 0, "data_type": "int16"}
    if deadband:
        level["deadband"] = {"absolute": 5.0}
    return {
        "id": device_id,
        "connection": {"host": "127.0.0.1", "port": port, "unit_id": unit_id, "timeout_s": 1.0},
        "poll_interval_s": 0.1,
        "location": LOCATION,
        "tags": [level, {"name": "count", "table": "holding", "address": 1, "data_type": "int16"}],
    }


def opcua_device(device_id: str, endpoint: str, node_id: str) -> dict[str, Any]:
    return {
        "id": device_id,
        "protocol": "opcua",
        "connection": {"endpoint": endpoint, "timeout_s": 4},
        "poll_interval_s": 0.1,
        "location": LOCATION,
        "tags": [{"name": "zone1", "node_id": node_id}],
    }


def spec_doc(devices: list[dict[str, Any]], operators: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "routed",
        "devices": devices,
        "operators": operators,
        "sinks": [{"id": "out", "type": "historian"}],
    }


def spec_of(devices: list[dict[str, Any]], operators: list[dict[str, Any]]) -> FlowSpec:
    return parse_spec(spec_doc(devices, operators))


class Collect(DynamicSink[Any]):
    """Every point batch the sink is handed; ``until(batches)`` sets ``stop`` once it holds true."""

    def __init__(self, stop: threading.Event, until: Callable[[list[PointBatch]], bool]) -> None:
        self.stop = stop
        self.until = until
        self.batches: list[PointBatch] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        sink = self

        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                sink.batches += [b for b in items if isinstance(b, PointBatch)]
                if sink.until(sink.batches):
                    sink.stop.set()

        return Part()


def run_until_drained(spec: FlowSpec, runtime: Runtime, recovery: RecoveryConfig) -> None:
    """Run the compiled flow until its sink sets ``runtime.stop_event``; a deadline sets it too, so a
    flow that never gets there fails the test's assertions instead of hanging it."""
    assert runtime.stop_event is not None
    deadline = threading.Timer(90, runtime.stop_event.set)
    deadline.start()
    try:
        run_main(compile_flow(spec, runtime), epoch_interval=timedelta(seconds=1), recovery_config=recovery)
    finally:
        deadline.cancel()


def good_tags(batches: list[PointBatch]) -> set[int]:
    return {
        t
        for b in batches
        for t, q in zip(b.tag_ids.tolist(), b.quality.tolist(), strict=True)
        if q == Quality.GOOD
    }


def test_a_flow_without_stateful_steps_reads_under_recovery_until_drained(tmp_path: Path) -> None:
    modbus = ModbusSimulator(port=0, devices=[SimulatedDevice("press", 1, [SimTag(LEVEL), SimTag(COUNT)])])
    opcua = OpcUaSimulator([SimVariable("Zone1", "Double", 180.0)])
    with modbus, opcua:
        modbus.set_value("press", LEVEL, 42)
        spec = spec_of(
            [
                modbus_device("press", modbus.port, 1),
                opcua_device("oven", opcua.endpoint, opcua.node_id("Zone1")),
            ],
            operators=[],
        )
        expected = {tag_id_for("press", "level"), tag_id_for("press", "count"), tag_id_for("oven", "zone1")}
        stop = threading.Event()
        sink = Collect(stop, lambda batches: good_tags(batches) >= expected)
        init_db_dir(tmp_path, 1)
        run_until_drained(spec, Runtime(stop_event=stop, sinks={"out": sink}), RecoveryConfig(str(tmp_path)))
    assert stop.is_set(), "the flow ended before it was drained"
    assert good_tags(sink.batches) >= expected
    level = [v for b in sink.batches for t, v in zip(b.tag_ids.tolist(), b.values.tolist(), strict=True)
             if t == tag_id_for("press", "level")]  # fmt: skip
    assert set(level) == {42.0}


def test_a_recovery_store_of_the_flow_as_compiled_before_resumes(tmp_path: Path) -> None:
    """First run: Bytewax places the device partitions (the step ``devices`` a fixed-partitioned
    source, as compiled before); second run: the compiled, worker-local source. The deadband keeps a
    steady ``level`` from the second run only if its state was restored (a fresh deadband passes a
    tag's first value); ``count``, without a band, shows the second run polled."""
    modbus = ModbusSimulator(port=0, devices=[SimulatedDevice("press", 1, [SimTag(LEVEL), SimTag(COUNT)])])
    level, count = tag_id_for("press", "level"), tag_id_for("press", "count")
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    with modbus:
        modbus.set_value("press", LEVEL, 42)
        spec = spec_of(
            [modbus_device("press", modbus.port, 1, deadband=True)], [{"id": "band", "type": "deadband"}]
        )

        def polls_with(tag: int, n: int) -> Callable[[list[PointBatch]], bool]:
            return lambda batches: sum(tag in b.tag_ids.tolist() for b in batches) >= n

        stop = threading.Event()
        before = Collect(stop, polls_with(level, 1))
        placed = DeviceSource(device_plans(spec), stop_event=stop)
        run_until_drained(spec, Runtime(source=placed, stop_event=stop, sinks={"out": before}), recovery)
        assert good_tags(before.batches) >= {level}

        stop = threading.Event()
        after = Collect(stop, polls_with(count, 5))
        run_until_drained(spec, Runtime(stop_event=stop, sinks={"out": after}), recovery)
    assert polls_with(count, 5)(after.batches), "the resumed flow did not poll"
    assert all(level not in b.tag_ids.tolist() for b in after.batches), "the deadband started afresh"


_CLUSTER_FLOW = textwrap.dedent(
    """
    import json, os, sys, threading
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from core.batch import PointBatch, tag_id_for
    from dataflows.compiler import Runtime, compile_flow
    from dataflows.spec import parse_spec
    from dataflows.telemetry import install_stop_handlers

    OUT = Path(os.environ["OUT"])
    polled, seen, levels = set(), {{}}, set()

    def dump():
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps({{"polled": sorted(polled), "seen": seen, "levels": sorted(levels)}}))
        tmp.replace(OUT)

    class Registry:
        # the process's partitions announce their device here (as to the config listener)
        def register(self, device_id, apply):
            polled.add(device_id)
            dump()

        def unregister(self, device_id, apply=None):
            pass

    class Sink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            class Part(StatelessSinkPartition):
                def write_batch(self, items):
                    for b in items:
                        if isinstance(b, PointBatch):
                            seen[b.device_id] = seen.get(b.device_id, 0) + 1
                            if tag_id_for(b.device_id, "level") in b.tag_ids.tolist():
                                levels.add(b.device_id)
                    dump()
            return Part()

    stop = threading.Event()
    install_stop_handlers(stop)
    spec = parse_spec(json.loads(os.environ["SPEC"]))
    flow = compile_flow(spec, Runtime(stop_event=stop, sinks={{"out": Sink()}}, config_registry=Registry()))
    """
)


def test_a_two_process_cluster_polls_each_device_once_where_its_state_is(tmp_path: Path) -> None:
    modbus_ids = [f"press-{i:02d}" for i in range(6)]
    sims = [SimulatedDevice(d, i + 1, [SimTag(LEVEL), SimTag(COUNT)]) for i, d in enumerate(modbus_ids)]
    modbus = ModbusSimulator(port=0, devices=sims)
    opcua = OpcUaSimulator([SimVariable("Zone1", "Double", 180.0)])
    with modbus, opcua:
        devices = [modbus_device(d, modbus.port, i + 1, deadband=True) for i, d in enumerate(modbus_ids)]
        devices += [opcua_device(d, opcua.endpoint, opcua.node_id("Zone1")) for d in ("oven-a", "oven-b")]
        doc = spec_doc(devices, [{"id": "band", "type": "deadband"}])
        spec = parse_spec(doc)
        names = sorted(d.id for d in spec.devices)
        assert {worker_of(d, 2) for d in names} == {0, 1}  # both processes have devices to poll
        module = tmp_path / "routed_cluster.py"
        module.write_text(_CLUSTER_FLOW.format(root=str(ROOT)))
        recovery = tmp_path / "recovery"
        recovery.mkdir()
        init_db_dir(recovery, 2)
        # one process first: every steady `level` passes its deadband once, the drain snapshots it
        stop = threading.Event()
        levels = {tag_id_for(d, "level") for d in modbus_ids}
        first = Collect(stop, lambda batches: {t for b in batches for t in b.tag_ids.tolist()} >= levels)
        run_until_drained(spec, Runtime(stop_event=stop, sinks={"out": first}), RecoveryConfig(str(recovery)))
        assert {t for b in first.batches for t in b.tag_ids.tolist()} >= levels
        addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
        outs = [tmp_path / f"out-{i}.json" for i in range(2)]
        procs = []
        for i in range(2):
            env = {**os.environ, "OUT": str(outs[i]), "SPEC": json.dumps(doc), "PYTHONPATH": str(tmp_path)}
            cmd = [sys.executable, "-m", "bytewax.run", "routed_cluster:flow", "-i", str(i), "-a", addresses]
            cmd += ["-r", str(recovery), "-s", "1", "-b", "1"]
            log = (tmp_path / f"{i}.log").open("w")
            procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))

        def results() -> list[dict[str, Any]]:
            return [
                json.loads(o.read_text()) if o.exists() else {"polled": [], "seen": {}, "levels": []}
                for o in outs
            ]

        def each_device_seen_often() -> bool:
            counts: dict[str, int] = {}
            for r in results():
                for device, n in r["seen"].items():
                    counts[device] = counts.get(device, 0) + n
            return all(counts.get(d, 0) >= 5 for d in names) or any(p.poll() is not None for p in procs)

        try:
            wait_for(each_device_seen_often, timeout=120, what="5 batches of every device")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)  # drain
            codes = [p.wait(timeout=60) for p in procs]
    logs = [(tmp_path / f"{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    polled = [r["polled"] for r in results()]
    assert sorted(polled[0] + polled[1]) == names  # each device polled by exactly one process
    for i, r in enumerate(results()):
        assert r["polled"] == sorted(d for d in names if worker_of(d, 2) == i)
        assert sorted(r["seen"]) == r["polled"], "a device's batches left the process that polls it"
        assert r["levels"] == [], "a deadband did not get its state back after rescaling"
