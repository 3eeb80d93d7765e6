"""Recovery after a hot swap, through Bytewax's own snapshots: the swapped parameters are part of
the step's snapshot, so a run resumed on the same recovery directory keeps them (when the spec it
starts with is older) or takes the spec's (when that is at least as new)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch
from core.device_config import DeviceConfig
from core.tags import TagInfo
from operators import bytewax_ops
from operators.deadband import Deadband, DeadbandParams

DEV = "press-01"
SPEC = Deadband({1: DeadbandParams(absolute=1.0)})


def run(recovery: Path, source_id: str, items: list[Any], start_version: int) -> list[Any]:
    """One execution; a new input step id each time, so only the deadband step resumes."""
    flow = Dataflow("hot-recovery")
    keyed = op.key_on("key", op.input(source_id, flow, TestingSource(items)), lambda i: i.device_id)
    out = bytewax_ops.deadband("deadband", keyed, SPEC, start_version)
    got: list[Any] = []
    op.output("out", out, TestingSink(got))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))
    return [v for _k, v in got]


def values(items: list[Any]) -> list[float]:
    return [x for i in items if isinstance(i, PointBatch) for x in i.values.tolist()]


def test_swapped_parameters_resume_with_the_state(tmp_path: Path) -> None:
    for name, start_version, expected in (("older", 1, []), ("same", 2, [13.0])):
        recovery = tmp_path / name
        recovery.mkdir()
        init_db_dir(recovery, 1)
        item = DeviceConfig(
            DEV,
            2,
            {1: TagInfo(1, DEV, "t", "", "e/s/a/l/press-01/t")},
            {"deadband": {1: DeadbandParams(absolute=5.0)}},
        )
        first = run(
            recovery, "in1", [PointBatch.from_values(DEV, [1], [10.0], ts_ns=0), item], start_version=1
        )
        assert values(first) == [10.0]
        # 13 is within the swapped band (5) of the kept 10, outside the spec's (1).
        resumed = run(recovery, "in2", [PointBatch.from_values(DEV, [1], [13.0], ts_ns=1)], start_version)
        assert values(resumed) == expected, name
