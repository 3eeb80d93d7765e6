"""Device-local routing: the worker that polls a device is the worker that holds its state.

Checked against Bytewax itself: 2 workers in one process (threads) and 2 processes (``-i``/``-a``),
each stateful step recording where it ran. The same flow over the plain partitioned source is the
control: there some devices' state lands on the other worker (so the check can fail).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from dataflows.routing import WorkerLocalSource, siphash13, worker_of
from nexus.embedded import free_port

ROOT = Path(__file__).parents[2]
DEVICES = [f"dev{i:04d}" for i in range(16)]


class Polls(FixedPartitionedSource[tuple[str, int], None]):
    """``polls`` items per device, partition ``sim:<device>``; records the thread that built each."""

    def __init__(self, devices: list[str], polls: int, built: dict[str, Any]) -> None:
        self.devices = devices
        self.polls = polls
        self.built = built

    def list_parts(self) -> list[str]:
        return [f"sim:{d}" for d in self.devices]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        device = for_part.removeprefix("sim:")
        self.built[device] = (os.getpid(), threading.get_ident())
        return _Part(device, self.polls)


class _Part(StatefulSourcePartition[tuple[str, int], None]):
    def __init__(self, device: str, polls: int) -> None:
        self.device = device
        self.left = polls
        self.closed = False

    def next_batch(self) -> list[tuple[str, int]]:
        if self.left == 0:
            raise StopIteration
        self.left -= 1
        return [(self.device, self.left)]

    def next_awake(self) -> datetime | None:
        return None

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class _Collect(DynamicSink[Any]):
    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CollectPart:
        return _CollectPart(self.out)


class _CollectPart(StatelessSinkPartition[Any]):
    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def write_batch(self, items: list[Any]) -> None:
        self.out.extend(items)


def _where(_state: None, item: tuple[str, int]) -> tuple[None, tuple[int, int, int]]:
    return None, (os.getpid(), threading.get_ident(), item[1])


def build_flow(source: Any, out: list[Any]) -> Dataflow:
    flow = Dataflow("routing_test")
    keyed = op.key_on("key", op.input("devices", flow, source), lambda item: item[0])
    op.output("out", op.stateful_map("where", keyed, _where), _Collect(out))
    return flow


def _run_two_workers(make_source: Callable[[dict[str, Any]], Any]) -> tuple[dict[str, Any], list[Any]]:
    built: dict[str, Any] = {}
    out: list[Any] = []
    cluster_main(build_flow(make_source(built), out), [], 0, worker_count_per_proc=2)
    return built, out


def _misplaced(built: dict[str, Any], out: list[Any]) -> set[str]:
    return {device for device, (pid, tid, _) in out if built[device] != (pid, tid)}


def test_state_stays_on_the_polling_worker_with_two_workers() -> None:
    built, out = _run_two_workers(
        lambda b: WorkerLocalSource(Polls(DEVICES, 3, b), lambda p: p.removeprefix("sim:"))
    )
    assert sorted(built) == DEVICES  # every device polled exactly once across the workers
    assert len(out) == 3 * len(DEVICES)
    assert _misplaced(built, out) == set()
    assert len({where for where in built.values()}) == 2  # both workers poll some devices


def test_the_plain_partitioned_source_moves_state_between_workers() -> None:
    """The control: Bytewax places fixed partitions by its own balancing, not by the state key."""
    built, out = _run_two_workers(lambda b: Polls(DEVICES, 3, b))
    assert len(out) == 3 * len(DEVICES)
    assert _misplaced(built, out), "every device's state happened to be local: the control shows nothing"


def test_parts_are_split_by_bytewax_routing_and_cover_every_device() -> None:
    source = WorkerLocalSource(Polls(DEVICES, 1, {}), lambda p: p.removeprefix("sim:"))
    for n in (1, 2, 3, 5):
        split = [source.parts_for(w, n) for w in range(n)]
        assert sorted(p for parts in split for p in parts) == sorted(source.inner.list_parts())
        for w, parts in enumerate(split):
            assert all(worker_of(p.removeprefix("sim:"), n) == w for p in parts)


def test_a_recovery_store_of_the_partitioned_source_resumes_with_the_worker_local_one(tmp_path: Path) -> None:
    """Flows recovered after the upgrade: the input step changes kind, the stateful steps resume."""
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    before: list[Any] = []
    run_main(build_flow(Polls(DEVICES, 2, {}), before), epoch_interval=timedelta(0), recovery_config=recovery)
    after: list[Any] = []
    source = WorkerLocalSource(Polls(DEVICES, 2, {}), lambda p: p.removeprefix("sim:"))
    run_main(build_flow(source, after), epoch_interval=timedelta(0), recovery_config=recovery)
    assert len(before) == len(after) == 2 * len(DEVICES)


def test_worker_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="`worker_count` must be >= 1, got 0"):
        worker_of("dev0000", 0)


_PY_HASH = textwrap.dedent(
    """
    import sys
    for line in sys.stdin:
        print(hash(bytes.fromhex(line.strip())) & ((1 << 64) - 1))
    """
)


def test_siphash13_matches_cpython_unseeded_hash() -> None:
    """CPython 3.11+ hashes bytes with SipHash-1-3 too; with PYTHONHASHSEED=0 its key is 0, 0.
    Every length 1..40 (the 8-byte blocks and every tail length), random bytes and device keys."""
    rng = random.Random(15)
    blobs = [rng.randbytes(n) for n in range(1, 41) for _ in range(5)]
    blobs += [f"{d}".encode() + b"\xff" for d in DEVICES]
    proc = subprocess.run(
        [sys.executable, "-c", _PY_HASH],
        input="\n".join(b.hex() for b in blobs),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=True,
        timeout=60,
    )
    expected = [int(x) for x in proc.stdout.split()]
    assert len(expected) == len(blobs)
    assert [siphash13(b) for b in blobs] == expected


_CLUSTER_FLOW = textwrap.dedent(
    """
    import json, os, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_routing import DEVICES, Polls, build_flow
    from dataflows.routing import WorkerLocalSource

    built, out = {{}}, []
    flow = build_flow(WorkerLocalSource(Polls(DEVICES, 3, built), lambda p: p.removeprefix("sim:")), out)

    import atexit
    atexit.register(lambda: open(os.environ["OUT"], "w").write(json.dumps(
        {{"built": sorted(built), "seen": sorted({{d for d, _ in out}})}})))
    """
)


@pytest.mark.integration
def test_two_processes_keep_each_devices_state_in_the_process_that_polls_it(tmp_path: Path) -> None:
    module = tmp_path / "routing_cluster.py"
    module.write_text(_CLUSTER_FLOW.format(root=str(ROOT), tests=str(Path(__file__).parent)))
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = []
    for i in range(2):
        env = {**os.environ, "OUT": str(tmp_path / f"out-{i}.json"), "PYTHONPATH": str(tmp_path)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", "routing_cluster:flow", "-i", str(i), "-a", addresses],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for p in procs:
        output, _ = p.communicate(timeout=120)
        assert p.returncode == 0, output
    results = [json.loads((tmp_path / f"out-{i}.json").read_text()) for i in range(2)]
    assert sorted(results[0]["built"] + results[1]["built"]) == DEVICES
    for r in results:
        assert r["built"], "one process polled nothing"
        assert r["seen"] == r["built"]  # the stateful step saw exactly the devices polled here
