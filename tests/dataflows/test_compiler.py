"""The compiler: step ids from node ids, the operator chain over batches from memory."""

from __future__ import annotations

from typing import Any

import numpy as np
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch, tag_id_for
from core.quality import Quality
from dataflows.compiler import Runtime, compile_flow
from dataflows.spec import parse_spec
from dataflows.status import FlowStatus


def spec_doc() -> dict[str, Any]:
    return {
        "version": 1,
        "id": "unit",
        "devices": [
            {
                "id": "d1",
                "connection": {"host": "127.0.0.1", "port": 5020},
                "location": {"enterprise": "acme", "site": "s1", "area": "a1", "line": "l1"},
                "tags": [
                    {
                        "name": "temp",
                        "table": "holding",
                        "address": 0,
                        "data_type": "int16",
                        "scale": 0.1,
                        "unit": "degC",
                        "convert_to": "degF",
                        "clamp": {"low": 0, "high": 150},
                        "deadband": {"absolute": 1.0},
                    },
                    {"name": "count", "table": "input", "address": 0, "data_type": "uint32"},
                ],
            }
        ],
        "operators": [{"id": "norm", "type": "normalize"}, {"id": "db", "type": "deadband"}],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}, {"id": "hist", "type": "historian", "input": "norm"}],
    }


def test_step_ids_come_from_node_ids() -> None:
    spec = parse_spec(spec_doc())
    flow = compile_flow(
        spec, Runtime(source=TestingSource([]), sinks={"uns": TestingSink([]), "hist": TestingSink([])})
    )
    step_ids = {step.step_id for step in flow.substeps}
    assert {"unit.devices", "unit.norm", "unit.db", "unit.uns", "unit.hist"} <= step_ids


def test_chain_scales_converts_clamps_and_deadbands() -> None:
    spec = parse_spec(spec_doc())
    temp, count = tag_id_for("d1", "temp"), tag_id_for("d1", "count")
    # 20.0, 20.4, 21.5, 200 degC; the clamp (0..150 degC) and the deadband (1.0 degC = 1.8 degF) are
    # given in the tag's unit and converted with the value
    raw = [(200, 7), (205, 8), (215, 9), (2000, 10)]
    batches = [
        PointBatch.from_values("d1", [temp, count], [t, c], ts_ns=1_700_000_000_000_000_000 + i * 10**9)
        for i, (t, c) in enumerate(raw)
    ]
    published: list[PointBatch] = []
    stored: list[PointBatch] = []
    flow = compile_flow(
        spec,
        Runtime(
            source=TestingSource(batches), sinks={"uns": TestingSink(published), "hist": TestingSink(stored)}
        ),
    )
    run_main(flow)

    # the historian takes every normalized point (its input is `norm`)
    assert len(stored) == 4
    temps = [float(b.values[b.tag_ids == temp][0]) for b in stored]
    expected_f = [c * 9 / 5 + 32 for c in (20.0, 20.5, 21.5, 150.0)]
    np.testing.assert_allclose(temps, expected_f)
    assert stored[-1].quality[stored[-1].tag_ids == temp][0] == Quality.CLAMPED

    # the UNS gets what moved more than 1.8 degF (20.5 degC is within the band of 20.0); `count` has no deadband: every value passes
    pub_temps = np.concatenate([b.values[b.tag_ids == temp] for b in published])
    np.testing.assert_allclose(pub_temps, [expected_f[0], expected_f[2], expected_f[3]])
    pub_counts = np.concatenate([b.values[b.tag_ids == count] for b in published])
    assert pub_counts.tolist() == [7, 8, 9, 10]


def test_stateless_steps_are_fused() -> None:
    """Normalize takes no step of its own: in a normalize -> sink flow an item crosses the fused
    normalize step and the sink (no keying, no un-keying); stateful steps keep their node ids."""
    doc = spec_doc()
    doc["operators"] = [{"id": "norm", "type": "normalize"}]
    doc["sinks"] = [{"id": "uns", "type": "mqtt_uns"}]
    flow = compile_flow(parse_spec(doc), Runtime(source=TestingSource([]), sinks={"uns": TestingSink([])}))
    assert [step.step_id for step in flow.substeps] == ["unit.devices", "unit.norm", "unit.uns"]

    full = compile_flow(
        parse_spec(
            spec_doc() | {"sinks": [{"id": "uns", "type": "mqtt_uns"}, {"id": "hist", "type": "historian"}]}
        ),
        Runtime(source=TestingSource([]), sinks={"uns": TestingSink([]), "hist": TestingSink([])}),
    )
    # normalize + keying, the deadband, one un-keying step shared by both sinks, the sinks
    assert [step.step_id for step in full.substeps] == [
        "unit.devices", "unit.norm", "unit.db", "unit.db_unkey", "unit.uns", "unit.hist",
    ]  # fmt: skip


def test_fused_steps_apply_and_count_once_per_batch() -> None:
    """A sink tapping the normalized stream and the deadband after it share the fused step: each
    batch is normalized once on both paths and counted once in the flow's status."""
    spec = parse_spec(spec_doc())
    temp = tag_id_for("d1", "temp")
    batches = [
        PointBatch.from_values("d1", [temp], [200 + i], ts_ns=1_700_000_000_000_000_000 + i * 10**9)
        for i in range(3)
    ]
    status = FlowStatus("unit", "mqtt://127.0.0.1:1")  # never started: only its counters are used
    published: list[PointBatch] = []
    stored: list[PointBatch] = []
    runtime = Runtime(
        source=TestingSource(batches),
        sinks={"uns": TestingSink(published), "hist": TestingSink(stored)},
        status=status,
    )
    run_main(compile_flow(spec, runtime))
    counts = status.snapshot()
    assert (counts["points_read"], counts["batches_read"]) == (3, 3)
    scaled_f = [(200 + i) * 0.1 * 9 / 5 + 32 for i in range(3)]  # 0.1 degC per count, in degF
    np.testing.assert_allclose([float(b.values[0]) for b in stored], scaled_f)
    np.testing.assert_allclose([float(b.values[0]) for b in published], scaled_f[:1])  # within the band


def test_the_historian_nodes_durability_settings_reach_its_writer() -> None:
    """``max_delay_s`` and ``spool_sync_interval_s`` of a historian node configure the sink the flow
    builds; the validator rejects a group commit beyond a minute, naming the field."""
    import pytest

    from connectors.historian.sink import HistorianSink
    from dataflows.compiler import _build_sink
    from dataflows.spec import SpecError

    doc = spec_doc() | {
        "sinks": [{"id": "hist", "type": "historian", "max_delay_s": 2.5, "spool_sync_interval_s": 0.5}]
    }
    spec = parse_spec(doc)
    sink = _build_sink(spec.sinks[0], spec, Runtime(database_url="postgresql://nexus@127.0.0.1:1/x"))
    assert isinstance(sink, HistorianSink)
    assert (sink.config.max_delay_s, sink.config.spool_sync_interval_s) == (2.5, 0.5)
    default = parse_spec(spec_doc() | {"sinks": [{"id": "hist", "type": "historian"}]})
    assert default.sinks[0].spool_sync_interval_s == 1.5  # type: ignore[union-attr]
    doc["sinks"][0]["spool_sync_interval_s"] = 61
    with pytest.raises(SpecError, match="spool_sync_interval_s"):
        parse_spec(doc)
