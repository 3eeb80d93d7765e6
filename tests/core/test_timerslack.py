"""The main thread of a Bytewax cluster process sleeps with a relaxed timer slack; its workers do not.

Checked in real ``python -m bytewax.run`` processes: a flow that ends after a few items records, on
each worker thread as it writes, the main thread's slack (``/proc/self/timerslack_ns`` is the thread
group leader's), the worker's own, and that of a thread the worker starts. The control flow's sink
does not restore: its workers keep the main thread's slack (what inheritance does, so the check can
fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from core.timerslack import MAIN_SLACK_NS, in_cluster, thread_slack_ns

ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.skipif(thread_slack_ns() is None, reason="timer slack is a Linux call")

_FLOW = textwrap.dedent(
    """
    import json, os, sys, threading
    sys.path.insert(0, {root!r})
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from core.timerslack import restore_thread, thread_slack_ns
    from dataflows.routing import WorkerLocalSource, worker_local_input
    from dataflows.telemetry import tune_interpreter

    RESTORE = os.environ["RESTORE"] == "1"

    class Items(FixedPartitionedSource):
        def list_parts(self):
            return [f"dev{{i}}" for i in range(8)]

        def build_part(self, step_id, for_part, resume_state):
            return Part()

    class Part(StatefulSourcePartition):
        def __init__(self):
            self.left = 3

        def next_batch(self):
            if not self.left:
                raise StopIteration
            self.left -= 1
            return [self.left]

        def snapshot(self):
            return None

    class Record(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            if RESTORE:
                restore_thread()
            seen = {{}}
            t = threading.Thread(target=lambda: seen.update(child=thread_slack_ns()))
            t.start()
            t.join()
            return Write(worker_index, seen["child"])

    class Write(StatelessSinkPartition):
        def __init__(self, worker, child):
            self.worker, self.child = worker, child

        def write_batch(self, items):
            main = int(open("/proc/self/timerslack_ns").read())
            out = {{"main": main, "worker": thread_slack_ns(), "child": self.child}}
            with open(os.environ["OUT"] + f".{{self.worker}}", "w") as f:
                json.dump(out, f)

    flow = Dataflow("slack")
    if RESTORE:
        items = worker_local_input("in", flow, WorkerLocalSource(Items(), str))
    else:
        items = op.input("in", flow, Items())
    op.output("out", items, Record())
    tune_interpreter()
    """
)


def run(tmp_path: Path, workers: int, restore: bool) -> list[dict[str, Any]]:
    (tmp_path / "slackflow.py").write_text(_FLOW.format(root=str(ROOT)))
    out = tmp_path / f"out-{workers}-{int(restore)}"
    env = {
        **os.environ,
        "OUT": str(out),
        "RESTORE": "1" if restore else "0",
        "PYTHONPATH": str(tmp_path),
        "NEXUS_GC_FREEZE_AFTER_S": "0",
    }
    env.pop("BYTEWAX_ADDRESSES", None)
    cmd = [sys.executable, "-m", "bytewax.run", "slackflow:flow", "-w", str(workers)]
    done = subprocess.run(
        cmd, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(tmp_path.glob(f"{out.name}.*"))
    assert len(files) == workers, f"workers that wrote: {[f.name for f in files]}\n{done.stderr[-2000:]}"
    return [json.loads(f.read_text()) for f in files]


def test_a_cluster_relaxes_its_main_thread_and_its_workers_restore_their_slack(tmp_path: Path) -> None:
    usual = thread_slack_ns()
    assert usual is not None and usual < MAIN_SLACK_NS
    for seen in run(tmp_path, workers=2, restore=True):
        assert seen == {"main": MAIN_SLACK_NS, "worker": usual, "child": usual}


def test_without_the_restore_a_worker_inherits_the_relaxed_slack(tmp_path: Path) -> None:
    for seen in run(tmp_path, workers=2, restore=False):
        assert seen == {"main": MAIN_SLACK_NS, "worker": MAIN_SLACK_NS, "child": MAIN_SLACK_NS}


def test_a_single_worker_process_keeps_the_usual_slack(tmp_path: Path) -> None:
    usual = thread_slack_ns()
    (seen,) = run(tmp_path, workers=1, restore=False)
    assert seen == {"main": usual, "worker": usual, "child": usual}


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["-m", "bytewax.run", "f:flow"], {}, False),
        (["-m", "bytewax.run", "f:flow", "-w", "1"], {}, False),
        (["-m", "bytewax.run", "f:flow", "--workers-per-process", "3"], {}, True),
        (["-m", "bytewax.run", "f:flow", "-w2"], {}, True),
        (["-m", "bytewax.run", "f:flow", "--process-id=1", "--addresses=a:1;b:2"], {}, True),
        (["-m", "bytewax.run", "f:flow"], {"BYTEWAX_WORKERS_PER_PROCESS": "2"}, True),
        (["-m", "bytewax.run", "f:flow"], {"BYTEWAX_POD_NAME": "f-1", "BYTEWAX_STATEFULSET_NAME": "f"}, True),
        (["-m", "bytewax.run", "f:flow"], {"BYTEWAX_POD_NAME": "f-1"}, False),
        (["-m", "bytewax.run", "f:flow"], {"BYTEWAX_PROCESS_ID": "0", "BYTEWAX_HOSTFILE_PATH": "/h"}, True),
        (["-m", "bytewax.run", "f:flow"], {"BYTEWAX_WORKERS_PER_PROCESS": "1"}, False),
    ],
)
def test_in_cluster_reads_the_arguments_bytewax_run_reads(
    argv: list[str], env: dict[str, str], expected: bool
) -> None:
    assert in_cluster(argv, env) is expected
