"""The supervisor against real ``bytewax.run`` children, a real PostgreSQL (advisory lock, LISTEN) and
a real broker. The desired state comes from a small in-memory source, not the config store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from control.supervisor import (
    ENV_FLOW_PROCESS,
    ENV_RUN_ID,
    ENV_SUPERVISOR_HOME,
    NOTIFY_CHANNEL,
    Supervisor,
    flow_processes,
)
from control.types import ENV_FLOW_ID, ENV_FLOW_VERSION, DesiredFlow, FlowRuntime
from nexus.embedded import free_port
from tests.control.desired import FileDesiredState, MemoryDesiredState, small_spec

pytestmark = pytest.mark.integration

START_S = 90.0  # a flow's start imports the project: slow on a shared 2-core machine


def _supervisor(source: Any, tmp_path: Path, mqtt_url: str, db: str | None, **kw: Any) -> Supervisor:
    kw.setdefault("resync_s", 0.5)
    kw.setdefault("backoff_base_s", 0.2)
    kw.setdefault("drain_timeout_s", 20.0)
    return Supervisor(source, data_dir=tmp_path / "data", mqtt_url=mqtt_url, database_url=db, **kw)


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for sup in made:
        sup.stop()


def _running(sup: Supervisor, flow_id: str, version: int | None = None) -> Callable[[], FlowRuntime | None]:
    def check() -> FlowRuntime | None:
        rt = sup.status().get(flow_id)
        if rt is None or rt.state != "running" or not rt.pids:
            return None
        if version is not None and rt.version != version:
            return None
        return rt

    return check


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_runs_restarts_and_drains_a_flow(
    tmp_path: Path, mqtt_url: str, db: str, supervisors: list[Supervisor], wait_for: Any
) -> None:
    source = MemoryDesiredState()
    source.set("f1", "running", 1, small_spec("f1", free_port()))
    sup = _supervisor(source, tmp_path, mqtt_url, db)
    supervisors.append(sup)
    sup.start()
    rt = wait_for(_running(sup, "f1", 1), timeout=START_S, what="f1 running")
    (pid,) = rt.pids
    env = psutil.Process(pid).environ()
    assert env[ENV_FLOW_ID] == "f1" and env[ENV_FLOW_VERSION] == "1"
    assert env[ENV_SUPERVISOR_HOME] == str((tmp_path / "data").resolve())
    assert env[ENV_FLOW_PROCESS] == "0/1"
    spec_file = Path(env["NEXUS_SPEC"])
    assert spec_file == (tmp_path / "data" / "flows" / "f1" / "specs" / "v1.json").resolve()
    cmd = psutil.Process(pid).cmdline()
    rdir = tmp_path / "data" / "flows" / "f1" / "recovery"
    assert cmd[cmd.index("-r") + 1] == str(rdir.resolve()) and "-s" in cmd
    assert len(list(rdir.glob("*.sqlite3"))) >= 1  # partitions created on first deploy

    # kill -9 of the flow: restarted, a new pid, one restart counted
    os.kill(pid, signal.SIGKILL)
    rt2 = wait_for(
        lambda: (r := _running(sup, "f1")()) and r.pids != (pid,) and r, timeout=START_S, what="restart"
    )
    assert rt2.restarts == 1 and "exited with code" in rt2.last_error[0]
    assert flow_processes(tmp_path / "data", "f1") == [("f1", 0, rt2.pids[0])]

    # stop: drained (the flow exits by itself on SIGUSR1), state stopped, no process left
    (pid2,) = rt2.pids
    proc = psutil.Process(pid2)
    source.set("f1", "stopped", 1, small_spec("f1", free_port()))
    sup.wake()
    wait_for(lambda: sup.status()["f1"].state == "stopped", timeout=60, what="stopped")
    assert not _alive(pid2)
    assert flow_processes(tmp_path / "data") == []
    del proc


def test_repeated_crashes_mark_the_flow_failed_with_its_stderr(
    tmp_path: Path, mqtt_url: str, db: str, supervisors: list[Supervisor], wait_for: Any
) -> None:
    source = MemoryDesiredState()
    source.set("bad", "running", 3, small_spec("bad", free_port()))
    # a real start-up failure in the child: the flow module refuses this interpreter setting
    sup = _supervisor(
        source, tmp_path, mqtt_url, db, max_crashes=3, extra_env={"NEXUS_SWITCH_INTERVAL_S": "not-a-number"}
    )
    supervisors.append(sup)
    sup.start()
    rt = wait_for(
        lambda: (r := sup.status().get("bad")) and r.state == "failed" and r,
        timeout=3 * START_S,
        what="failed",
    )
    assert rt.restarts == 3
    assert rt.pids == ()
    assert any("not-a-number" in line for line in rt.last_error), rt.last_error
    # a new version is tried again
    source.set("bad", "running", 4, small_spec("bad", free_port()))
    sup.wake()
    wait_for(lambda: sup.status()["bad"].version == 4, timeout=START_S, what="retry of v4")


def test_new_version_redeploys_on_the_same_recovery_directory(
    tmp_path: Path, mqtt_url: str, db: str, supervisors: list[Supervisor], wait_for: Any
) -> None:
    source = MemoryDesiredState()
    port = free_port()
    source.set("f2", "running", 1, small_spec("f2", port))

    def always_redeploy(old: Any, new: Any) -> Any:
        from control.types import Plan

        return Plan("redeploy", ("window added",))

    sup = _supervisor(source, tmp_path, mqtt_url, db, planner=always_redeploy)
    supervisors.append(sup)
    sup.start()
    (pid1,) = wait_for(_running(sup, "f2", 1), timeout=START_S).pids
    rdir = (tmp_path / "data" / "flows" / "f2" / "recovery").resolve()
    source.set("f2", "running", 2, small_spec("f2", port, window=True))
    with psycopg.connect(db, autocommit=True) as conn:  # what the store sends after a deploy
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}, 'f2'")
    rt = wait_for(_running(sup, "f2", 2), timeout=2 * START_S, what="v2 running")
    assert rt.pids != (pid1,) and not _alive(pid1)
    cmd = psutil.Process(rt.pids[0]).cmdline()
    assert cmd[cmd.index("-r") + 1] == str(rdir)
    assert psutil.Process(rt.pids[0]).environ()[ENV_FLOW_VERSION] == "2"


def test_hot_plan_publishes_and_keeps_the_process(
    tmp_path: Path, mqtt_url: str, db: str, supervisors: list[Supervisor], wait_for: Any
) -> None:
    from control.types import Plan

    published: list[tuple[str, int, dict[str, Any]]] = []

    def hot_planner(old: Any, new: Any) -> Plan:
        return Plan("hot", ("tag dev-1/t0 changed",), {"dev-1": {"id": "dev-1"}})

    def record(url: str, flow_id: str, version: int, patches: Any, timeout_s: float = 5.0) -> None:
        published.append((flow_id, version, dict(patches)))

    source = MemoryDesiredState()
    port = free_port()
    source.set("f3", "running", 1, small_spec("f3", port))
    sup = _supervisor(source, tmp_path, mqtt_url, db, planner=hot_planner, publisher=record)
    supervisors.append(sup)
    sup.start()
    (pid,) = wait_for(_running(sup, "f3", 1), timeout=START_S).pids
    source.set("f3", "running", 2, small_spec("f3", port, scale=2.0))
    sup.wake()
    rt = wait_for(_running(sup, "f3", 2), timeout=30, what="v2 applied hot")
    assert rt.pids == (pid,)
    assert published == [("f3", 2, {"dev-1": {"id": "dev-1"}})]
    assert (tmp_path / "data" / "flows" / "f3" / "specs" / "v2.json").exists()


def test_restarted_supervisor_adopts_and_drains_strays(
    tmp_path: Path, mqtt_url: str, db: str, supervisors: list[Supervisor], wait_for: Any
) -> None:
    source = MemoryDesiredState()
    source.set("c2", "running", 1, small_spec("c2", free_port(), devices=2), processes=2)
    first = _supervisor(source, tmp_path, mqtt_url, db)
    first.start()
    rt = wait_for(
        lambda: (r := _running(first, "c2", 1)()) and len(r.pids) == 2 and r, timeout=START_S, what="cluster"
    )
    indexes = sorted(psutil.Process(p).environ()[ENV_FLOW_PROCESS] for p in rt.pids)
    assert indexes == ["0/2", "1/2"]
    first.stop(drain=False)  # like a dead supervisor: the flows keep running
    assert all(_alive(p) for p in rt.pids)

    # a stray: a process claiming to be c2's process 0 from another run
    env = {
        **os.environ,
        ENV_FLOW_ID: "c2",
        ENV_FLOW_VERSION: "1",
        ENV_RUN_ID: "stray",
        ENV_FLOW_PROCESS: "0/2",
        ENV_SUPERVISOR_HOME: str((tmp_path / "data").resolve()),
    }
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env=env)
    try:
        second = _supervisor(source, tmp_path, mqtt_url, db)
        supervisors.append(second)
        second.start()
        adopted = wait_for(_running(second, "c2", 1), timeout=60, what="adopted")
        assert sorted(adopted.pids) == sorted(rt.pids)
        assert stray.wait(timeout=60) is not None
        assert sorted(p for _, _, p in flow_processes(tmp_path / "data", "c2")) == sorted(rt.pids)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_one_supervisor_acts_per_database_and_kill_9_leaves_one_process_per_flow(
    tmp_path: Path, mqtt_url: str, db: str, wait_for: Any
) -> None:
    desired = FileDesiredState(tmp_path / "desired.json")
    desired.write([DesiredFlow("k1", "running", 1, small_spec("k1", free_port()))])
    data = tmp_path / "data"

    def spawn() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"sup-{free_port()}.log").open("wb")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.control.run_supervisor",
                str(desired.path),
                str(data),
                mqtt_url,
                db,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )

    a = spawn()
    b = spawn()  # same database: waits for the advisory lock
    try:
        procs = wait_for(lambda: flow_processes(data, "k1"), timeout=START_S, what="k1 started")
        assert len(procs) == 1
        pid = procs[0][2]
        a.kill()
        a.wait()
        b.kill()
        b.wait()
        # both supervisors gone (kill -9); the flow process survives them
        assert _alive(pid)
        c = spawn()
        try:
            # the new supervisor adopts: still exactly one process, the same one
            wait_for(lambda: "adopted flow k1" in _logs(tmp_path), timeout=60, what="adoption")
            assert flow_processes(data, "k1") == [("k1", 0, pid)]
            # and it restarts it when killed
            os.kill(pid, signal.SIGKILL)
            again = wait_for(
                lambda: [p for p in flow_processes(data, "k1") if p[2] != pid],
                timeout=START_S,
                what="restart",
            )
            assert len(again) == 1 and len(flow_processes(data, "k1")) == 1
        finally:
            c.terminate()
            c.wait(timeout=60)
        assert flow_processes(data) == []  # SIGTERM of the supervisor drained its flow
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
        for _, _, pid in flow_processes(data):
            os.kill(pid, signal.SIGKILL)


def _logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("sup-*.log"))
