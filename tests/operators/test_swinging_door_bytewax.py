"""The swinging-door adapter in a real (in-process) dataflow: EOF archives the held points."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from core.batch import PointBatch
from operators.analytics_bytewax import swinging_door
from operators.swinging_door import SwingingDoor, SwingingDoorParams

S = 1_000_000_000


def test_dataflow_archives_and_flushes_at_eof() -> None:
    sdt = SwingingDoor({1: SwingingDoorParams(deviation=0.5)})
    items = [
        PointBatch.from_values(dev, [1, 7], [float(t), 5.0], ts_ns=t * S)
        for t in range(5)
        for dev in ("a", "b")
    ]  # tag 1 is a straight line: only its first and last points are archived; tag 7 passes
    flow = Dataflow("sdt_test")
    keyed = op.key_on(
        "by_device", op.input("inp", flow, TestingSource(items, batch_size=3)), lambda b: b.device_id
    )
    got: list[tuple[str, PointBatch]] = []
    op.output("out", swinging_door("sdt", keyed, sdt), TestingSink(got))
    run_main(flow)
    for dev in ("a", "b"):
        pts = [
            (int(t) // S, int(g)) for k, b in got if k == dev for t, g in zip(b.ts_ns, b.tag_ids, strict=True)
        ]
        assert sorted(p for p in pts if p[1] == 1) == [(0, 1), (4, 1)]
        assert sorted(p for p in pts if p[1] == 7) == [(t, 7) for t in range(5)]
        assert all(b.device_id == k for k, b in got)
