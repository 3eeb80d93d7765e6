"""The fused operator chain in compiled flows: a spec whose operators are normalize -> deadband ->
window [-> anomaly] compiles to one keyed stateful step, which gives what the four per-operator
steps give on the same polls (points, aggregates, alerts, late counts, hot config changes) and
resumes from its snapshot with its swapped parameters."""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.modbus.simulator import ModbusSimulator
from control.hot import publish_device_configs
from core.batch import PointBatch, tag_id_for
from core.device_config import DeviceConfig
from core.records import AggBatch, Alert
from dataflows import compiler
from dataflows.compiler import DERIVED_STEP, Runtime, compile_flow, device_config_for, fused_chain
from dataflows.spec import FlowSpec, parse_spec
from dataflows.status import FlowStatus
from tests.conftest import wait_for
from tests.dataflows import test_hot_reload_e2e as e2e
from tests.dataflows.test_hot_reload_e2e import flow_id, sims  # noqa: F401 - fixtures of the live test

S = 10**9
LOC = {"enterprise": "e", "site": "s", "area": "a", "line": "l"}
ANOMALY = {"id": "anomaly", "type": "anomaly"}


def device(device_id: str) -> dict[str, Any]:
    return {
        "id": device_id,
        "connection": {"host": "127.0.0.1"},
        "location": LOC,
        "tags": [
            {
                "name": "a",
                "table": "holding",
                "address": 0,
                "scale": 0.1,
                "clamp": {"low": 0, "high": 900},
                "deadband": {"absolute": 5},
                "alarms": {"high": 50, "hysteresis": 1, "rate": {"max_per_s": 4}},
            },
            {
                "name": "b",
                "table": "holding",
                "address": 1,
                "deadband": {"absolute": 1, "heartbeat_s": 20},
                "alarms": {"low": 10, "stuck": {"epsilon": 0.01, "samples": 3}},
            },
            {"name": "c", "table": "holding", "address": 2},
        ],
    }


def spec_doc(anomaly: bool = True) -> dict[str, Any]:
    return {
        "version": 1,
        "id": "fused",
        "devices": [device("d1"), device("d2")],
        "operators": [
            {"id": "normalize", "type": "normalize"},
            {"id": "deadband", "type": "deadband"},
            # lateness 0: event time alone decides what is late (polls are whole seconds), so the
            # windows' processing-time closing cannot tell one run from another
            {"id": "window", "type": "window", "windows": ["1m"], "lateness_s": 0},
            *([ANOMALY] if anomaly else []),
        ],
        "sinks": [
            {"id": "uns", "type": "mqtt_uns"},
            {"id": "hist", "type": "historian", "input": "deadband"},
        ],
    }


def changed_doc(anomaly: bool = True, alarms: bool = True) -> dict[str, Any]:
    """d1 after a hot change: a's scale, b's band and a's high limit change, c goes, e comes;
    without ``alarms`` every alarm of d1 goes."""
    doc = copy.deepcopy(spec_doc(anomaly))
    tags = doc["devices"][0]["tags"]
    tags[0]["scale"] = 0.2
    tags[0]["alarms"]["high"] = 70
    tags[1]["deadband"] = {"absolute": 3}
    tags[2] = {"name": "e", "table": "holding", "address": 3, "alarms": {"high": 5}}
    if not alarms:
        for t in tags:
            t.pop("alarms")
    return doc


def tid(device_id: str, name: str) -> int:
    return tag_id_for(device_id, name)


def polls(seed: int, n: int, t0: int, config: DeviceConfig | None) -> list[Any]:
    """Both devices' polls, one a second, random walks that cross the alarms, some bad points and
    some late ones; ``config`` goes in for d1 at a random poll, after which d1 reads its new tags."""
    rng = np.random.default_rng(seed)
    at = int(rng.integers(n // 4, 3 * n // 4))
    items: list[Any] = []
    raw = {"d1": np.array([500.0, 12.0, 1.0]), "d2": np.array([480.0, 9.0, 2.0])}
    for i in range(n):
        for dev in ("d1", "d2"):
            if config is not None and dev == "d1" and i == at:
                items.append(config)
            names = ("a", "b", "e") if config is not None and dev == "d1" and i >= at else ("a", "b", "c")
            step = rng.normal(0.0, [40.0, 2.0, 3.0])
            step[1] *= rng.random() < 0.6  # b sits still at times: stuck runs
            raw[dev] = raw[dev] + step
            ts = t0 + i * S
            if i > 90 and rng.random() < 0.08:
                ts -= int(rng.integers(2, 90)) * S  # out of order: late when its minute has closed
            elif i == 120 and dev == "d2":
                ts -= 75 * S  # one surely late
            quality = np.where(rng.random(3) < 0.03, 140, 0).astype(np.uint8)
            items.append(
                PointBatch(
                    dev,
                    np.full(3, ts, np.int64),
                    np.array([tid(dev, t) for t in names], np.int64),
                    raw[dev].copy(),
                    quality,
                )
            )
    return items


def minute_ago(minutes: int) -> int:
    return (time.time_ns() // (60 * S) - minutes) * 60 * S


def run(spec: FlowSpec, items: list[Any], fused: bool) -> dict[str, Any]:
    """The compiled flow's outputs; ``fused=False`` compiles the same spec step by step."""
    with pytest.MonkeyPatch.context() as m:
        if not fused:
            m.setattr(compiler, "fused_chain", lambda _spec: None)
        status = FlowStatus(spec.id, "mqtt://127.0.0.1:1")  # never started: only its counters are used
        got: dict[str, list[Any]] = {"uns": [], "hist": [], DERIVED_STEP: []}
        sinks = {name: TestingSink(out) for name, out in got.items()}
        flow = compile_flow(
            spec, Runtime(source=TestingSource(items, batch_size=5), sinks=sinks, status=status)
        )
    run_main(flow)
    return {**got, "late": status.snapshot().get("late_points", 0)}


def by_device(items: list[Any]) -> dict[str, list[Any]]:
    """Each device's items in order: batches as columns, config items as (version, tag ids)."""
    out: dict[str, list[Any]] = {}
    for i in items:
        if isinstance(i, DeviceConfig):
            row: Any = ("config", i.version, i.tag_ids.tolist())
        else:
            row = (i.ts_ns.tolist(), i.tag_ids.tolist(), i.values.tolist(), i.quality.tolist())
        out.setdefault(i.device_id, []).append(row)
    return out


def agg_rows(items: list[Any]) -> list[tuple[Any, ...]]:
    rows = []
    for a in items:
        if isinstance(a, AggBatch):
            cols = zip(
                a.bucket_ns.tolist(), a.tag_ids.tolist(), a.count.tolist(), a.sum.tolist(),
                a.min.tolist(), a.max.tolist(), a.first.tolist(), a.last.tolist(), a.twa.tolist(),
                strict=True,
            )  # fmt: skip
            rows += [(a.device_id, a.window, *(repr(x) for x in r)) for r in cols]  # repr: NaN == NaN
    return sorted(rows)


def alerts(items: list[Any]) -> dict[str, list[Alert]]:
    out: dict[str, list[Alert]] = {}
    for a in items:
        if isinstance(a, Alert):
            out.setdefault(a.device_id, []).append(a)
    return out


def configs(items: list[Any]) -> set[tuple[str, int]]:
    return {(i.device_id, i.version) for i in items if isinstance(i, DeviceConfig)}


def test_the_run_compiles_to_one_step() -> None:
    spec = parse_spec(spec_doc())
    flow = compile_flow(
        spec, Runtime(source=TestingSource([]), sinks={"uns": TestingSink([]), "hist": TestingSink([])})
    )
    ids = [step.step_id for step in flow.substeps]
    assert "fused.normalize_deadband_window" in ids
    assert not {"fused.deadband", "fused.window", "fused.anomaly"} & set(ids)
    # the sinks and the derived sink read the chain's output in one output step, nothing in between
    assert ids[-2:] == ["fused.normalize_deadband_window", f"fused.{compiler.SINKS_STEP}"]
    assert fused_chain(parse_spec(spec_doc(anomaly=False))) is not None


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["sinks"][1].update(input="normalize"),  # a sink reads the points before the deadband
        lambda d: d["operators"].insert(3, {"id": "door", "type": "swinging_door"}),
        lambda d: d["operators"].insert(2, d["operators"].pop(3)),  # anomaly before window
        lambda d: (d["operators"].pop(1), d["sinks"][1].pop("input")),  # no deadband
    ],
)
def test_other_runs_keep_their_steps(change: Any) -> None:
    doc = spec_doc()
    change(doc)
    assert fused_chain(parse_spec(doc)) is None


@settings(max_examples=16, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), anomaly=st.booleans(), hot=st.booleans(), alarms=st.booleans())
def test_fused_flow_equals_the_per_operator_flow(seed: int, anomaly: bool, hot: bool, alarms: bool) -> None:
    spec = parse_spec(spec_doc(anomaly))
    config = device_config_for(parse_spec(changed_doc(anomaly, alarms)), "d1", 2) if hot else None
    items = polls(seed, 150, minute_ago(5), config)
    fused, separate = run(spec, items, True), run(spec, items, False)
    assert sum(len(b) for b in fused["uns"]) > 150 and fused["late"] > 0
    assert by_device(fused["uns"]) == by_device(separate["uns"])
    assert by_device(fused["hist"]) == by_device(separate["hist"])
    assert agg_rows(fused[DERIVED_STEP]) and agg_rows(fused[DERIVED_STEP]) == agg_rows(separate[DERIVED_STEP])
    assert alerts(fused[DERIVED_STEP]) == alerts(separate[DERIVED_STEP])
    assert bool(alerts(fused[DERIVED_STEP])) == anomaly
    assert fused["late"] == separate["late"]
    # the derived sink learns d1's new tags (once from the chain, from each tap step by step)
    assert configs(fused[DERIVED_STEP]) == configs(separate[DERIVED_STEP]) == ({("d1", 2)} if hot else set())


def test_a_hot_change_takes_effect_in_the_fused_flow() -> None:
    """Scale, deadband and alarm limits of d1 change between two polls; d2 keeps the spec's."""
    spec = parse_spec(spec_doc())
    item = device_config_for(parse_spec(changed_doc()), "d1", 2)
    a, b, e = tid("d1", "a"), tid("d1", "b"), tid("d1", "e")
    t0 = minute_ago(2)

    def poll(dev: str, tags: list[int], values: list[float], k: int) -> PointBatch:
        return PointBatch.from_values(dev, tags, values, ts_ns=t0 + k * S)

    items = [
        poll("d1", [a, b], [400.0, 20.0], 0),  # a 40
        poll("d2", [tid("d2", "a")], [400.0], 0),
        item,
        poll(
            "d1", [a, b, e], [300.0, 22.0, 9.0], 1
        ),  # a 60 (new scale) under the new high 70; b within 3; e high
        poll("d1", [a, b, e], [400.0, 24.0, 9.0], 2),  # a 80: high; b moved 4 from the kept 20; e has no band
        poll("d2", [tid("d2", "a")], [600.0], 2),  # d2's a 60: high against the spec's 50
    ]
    got = run(spec, items, True)
    d1 = [i for i in got["uns"] if i.device_id == "d1"]
    assert [type(i) for i in d1] == [PointBatch, DeviceConfig, PointBatch, PointBatch]
    values = [
        dict(zip(i.tag_ids.tolist(), i.values.tolist(), strict=True)) for i in d1 if isinstance(i, PointBatch)
    ]
    assert values == [{a: 40.0, b: 20.0}, {a: 60.0, e: 9.0}, {a: 80.0, b: 24.0, e: 9.0}]
    raised = [
        (x.device_id, x.tag_id, x.kind)
        for x in got[DERIVED_STEP]
        if isinstance(x, Alert) and x.kind == "high"
    ]
    assert raised == [("d1", e, "high"), ("d1", a, "high"), ("d2", tid("d2", "a"), "high")]


def run_recovering(spec: FlowSpec, recovery: Path, items: list[Any], version: int) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = {"uns": [], "hist": [], DERIVED_STEP: []}
    sinks = {name: TestingSink(out) for name, out in got.items()}
    flow = compile_flow(spec, Runtime(source=TestingSource(items), sinks=sinks, version=version))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))
    return got


@pytest.mark.parametrize(("start_version", "scale"), [(1, 0.2), (2, 0.1)])
def test_the_fused_step_resumes_with_its_swapped_parameters(
    tmp_path: Path, start_version: int, scale: float
) -> None:
    """A resumed run keeps the deadband, window and checks state, and the swapped parameters when
    the spec it starts with is older than them (else the spec's)."""
    init_db_dir(tmp_path, 1)
    spec = parse_spec(spec_doc())
    item = device_config_for(parse_spec(changed_doc()), "d1", 2)
    a, b = tid("d1", "a"), tid("d1", "b")
    t0 = minute_ago(2)
    first = [
        PointBatch.from_values("d1", [a, b], [100.0, 20.0], ts_ns=t0),
        item,
        PointBatch.from_values("d1", [a, b], [100.0, 20.5], ts_ns=t0 + S),  # a at the new scale; b within 3
    ]
    got1 = run_recovering(spec, tmp_path, first, version=1)
    assert [i.values.tolist() for i in got1["uns"] if isinstance(i, PointBatch)] == [[10.0, 20.0], [20.0]]
    later = PointBatch.from_values("d1", [a, b], [400.0, 22.5], ts_ns=t0 + 2 * S)
    got2 = run_recovering(spec, tmp_path, [*first, later], version=start_version)
    (published,) = got2["uns"]  # only the new poll: the source resumed after the first run's polls
    by_tag = dict(zip(published.tag_ids.tolist(), published.values.tolist(), strict=True))
    # a at the resumed scale; b (22.5) is out of the spec's band (1) of the kept 20, within the swapped one (3)
    assert by_tag == ({a: 80.0} if scale == 0.2 else {a: 40.0, b: 22.5})
    # the window resumed its open bucket: its aggregate counts the polls of both runs (flushed at the end)
    aggs = [x for x in got2[DERIVED_STEP] if isinstance(x, AggBatch)]
    counts = {t: c for x in aggs for t, c in zip(x.tag_ids.tolist(), x.count.tolist(), strict=True)}
    assert counts[a] == 3
    # the checks resumed: a's high alarm (80 > 70 swapped; 40 < 50 spec) is raised at most once
    kinds = [
        (x.tag_id, x.kind, x.state) for x in got2[DERIVED_STEP] if isinstance(x, Alert) and x.kind == "high"
    ]
    assert kinds == ([(a, "high", "raised")] if scale == 0.2 else [])


@pytest.mark.integration
def test_a_live_scale_change_reaches_the_fused_flow(
    tmp_path: Path,
    sims: tuple[ModbusSimulator, ModbusSimulator],  # noqa: F811 - the imported fixture
    db: str,
    mqtt_url: str,
    flow_id: str,  # noqa: F811 - the imported fixture
) -> None:
    """End to end with the fused chain: real Modbus devices, broker and PostgreSQL, a running
    ``bytewax.run`` process; a change published by ``control.hot`` switches the scale cleanly."""
    s7, s8 = sims
    spec = e2e.spec_for((s7.port, s8.port))
    spec["operators"] += [
        {"id": "window", "type": "window", "windows": ["1m"]},
        {"id": "anomaly", "type": "anomaly"},
    ]
    assert fused_chain(parse_spec(spec)) is not None
    watcher = e2e.Watcher(mqtt_url)
    assert watcher.subscribed.wait(10)
    flow = e2e.Flow(tmp_path, spec, db, mqtt_url, flow_id=flow_id, version=1)
    try:
        e2e.started(flow, watcher)
        assert watcher.last("press-07", "temp") == pytest.approx(25.0)
        section = copy.deepcopy(spec["devices"][0])
        section["tags"][0]["scale"] = 1.0
        publish_device_configs(mqtt_url, flow_id, 2, {"press-07": section})
        wait_for(
            lambda: watcher.last("press-07", "temp") == pytest.approx(250.0),
            timeout=30,
            what="new scale on UNS",
        )
        wait_for(
            lambda: any(v == pytest.approx(250.0) for _, v in e2e.stored(db, "press-07", "temp")),
            timeout=30,
            what="new scale in the historian",
        )
        temps = watcher.values("press-07", "temp")
        first_new = temps.index(pytest.approx(250.0))
        assert e2e.rounded(temps[:first_new]) == {25.0} and e2e.rounded(temps[first_new:]) == {250.0}, temps
        assert flow.alive() and watcher.last("tank-01", "level") is not None
    finally:
        watcher.close()
        code = flow.stop()
    assert code == 0, flow.output()
