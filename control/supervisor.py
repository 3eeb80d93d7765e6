"""The flow supervisor: makes the processes that run match what the config store wants.

A level-triggered reconciler. Each pass reads the desired flows (``DesiredStateSource``), looks at
the processes it owns and closes the gap: start, restart with backoff, apply a new version hot or by
redeploying, drain. It is woken by ``NOTIFY nexus_config`` (the store sends it after a deploy, start
or stop), by :meth:`Supervisor.wake`, by a child exiting, and every ``resync_s`` anyway, so a lost
notification only delays a change. Only the holder of a PostgreSQL advisory lock acts, so two
``nexus up`` on one database never both run a flow.

Every flow runs as ``python -m bytewax.run dataflows.telemetry:flow`` children (one per Bytewax
process id; ``processes: N`` is an N-process cluster with ``-i/-a``) on the deployed version's spec,
written to ``{data_dir}/flows/{flow}/specs/v{N}.json``, with a recovery directory created once
(``{data_dir}/flows/{flow}/recovery``) so a redeploy or restart resumes the state of unchanged steps.
The children run in their own session (Ctrl-C at a terminal reaches the supervisor, which drains
them) and carry marker variables — flow id, version, run id, process index, supervisor id and the
supervisor's home (the resolved data folder) — so a supervisor started after a crash or ``kill -9``
of the previous one finds them: a complete cluster of one run is adopted, anything else (a partial
cluster, a second run of the same flow, a flow no longer wanted) is drained. Before every start the
flow's processes are looked up again, so there is never a second process for one Bytewax process id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from control import metrics
from control.types import (
    ENV_FLOW_ID,
    ENV_FLOW_VERSION,
    ENV_SUPERVISOR_ID,
    DesiredFlow,
    DesiredStateSource,
    FlowRuntime,
    Plan,
    RuntimeState,
)
from core.settings import Settings

log = logging.getLogger(__name__)

#: The resolved data folder of the supervisor that started a child: which installation it belongs to.
ENV_SUPERVISOR_HOME = "NEXUS_SUPERVISOR_HOME"
#: One start of one flow; every process of a cluster shares it.
ENV_RUN_ID = "NEXUS_RUN_ID"
#: ``"{index}/{processes}"``: the child's Bytewax process id and the cluster size.
ENV_FLOW_PROCESS = "NEXUS_FLOW_PROCESS"

NOTIFY_CHANNEL = "nexus_config"
ADVISORY_LOCK_KEY = 0x6E657875735F7376  # "nexus_sv": one acting supervisor per database
RECOVERY_PARTITIONS = 4
"""Recovery partitions created for a flow (or its process count, if larger). Fixed forever once created."""
FLOW_MODULE = "dataflows.telemetry:flow"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _now() -> datetime:
    return datetime.now(UTC)


class SupervisorError(RuntimeError):
    """The supervisor could not do what it was asked (bad flow id, unwritable data folder, ...)."""


@dataclass
class _Child:
    """One ``bytewax.run`` process: spawned by this supervisor (``popen``) or adopted by pid."""

    index: int
    proc: psutil.Process
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def returncode(self) -> int | None:
        """None while it runs; its exit code once it ended (-1 when adopted: the code is not ours to see)."""
        if self.popen is not None:
            return self.popen.poll()
        try:
            if self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            pass
        return -1

    def signal(self, sig: int) -> None:
        if self.returncode() is not None:
            return
        try:
            if self.popen is not None:
                self.popen.send_signal(sig)
            else:
                self.proc.send_signal(sig)  # psutil checks the pid was not reused
        except (ProcessLookupError, psutil.Error):
            pass


@dataclass
class _Flow:
    """What the supervisor knows of one flow (mutated only by the reconciling thread)."""

    flow_id: str
    state: RuntimeState = "stopped"
    version: int | None = None
    spec: Mapping[str, Any] | None = None
    processes: int = 1
    run_id: str | None = None
    children: list[_Child] = field(default_factory=list)
    restarts: int = 0
    crashes: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    next_start: float = 0.0
    failed_version: int | None = None
    last_error: tuple[str, ...] = ()
    since: datetime = field(default_factory=_now)

    def set_state(self, state: RuntimeState) -> None:
        if state != self.state:
            self.state = state
            self.since = _now()

    def runtime(self) -> FlowRuntime:
        return FlowRuntime(
            flow_id=self.flow_id,
            state=self.state,
            version=self.version,
            pids=tuple(c.pid for c in self.children if c.returncode() is None),
            restarts=self.restarts,
            last_error=self.last_error,
            since=self.since,
        )


@dataclass(frozen=True)
class _Found:
    """A running flow process found by its marker variables."""

    proc: psutil.Process
    flow_id: str
    version: int | None
    run_id: str
    index: int
    processes: int


Planner = Callable[[Any, Any], Plan]
Publisher = Callable[..., None]


class Supervisor:
    """Runs each desired flow as ``bytewax.run`` children and keeps them in line with the store.

    ``start()`` launches the reconciling thread (and, with a ``database_url``, the thread that holds
    the advisory lock and listens on ``nexus_config``); ``stop()`` drains every flow and ends both;
    ``wake()`` asks for a pass now; ``reconcile()`` runs one pass in the caller's thread;
    ``status()`` is what the API shows.

    ``planner`` / ``publisher`` default to ``control.planner.plan`` and
    ``control.hot.publish_device_configs``; without them every new version is a redeploy.
    """

    def __init__(
        self,
        source: DesiredStateSource,
        settings: Settings | None = None,
        *,
        data_dir: Path | str,
        mqtt_url: str,
        database_url: str | None,
        resync_s: float = 3.0,
        drain_timeout_s: float = 20.0,
        abort_timeout_s: float = 5.0,
        kill_timeout_s: float = 5.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        crash_window_s: float = 300.0,
        max_crashes: int = 5,
        snapshot_interval_s: int | None = None,
        backup_interval_s: int = 0,
        error_lines: int = 20,
        python: str = sys.executable,
        planner: Planner | None = None,
        publisher: Publisher | None = None,
        extra_env: Mapping[str, str] | None = None,
        flow_mqtt_url: str | None = None,
    ) -> None:
        self.source = source
        self.settings = settings or Settings.from_env()
        self.home = Path(data_dir).resolve()
        self.flows_dir = self.home / "flows"
        self.mqtt_url = mqtt_url
        self.flow_mqtt_url = flow_mqtt_url or mqtt_url
        """What the flows connect with (broker user ``nexus-flow``); ``mqtt_url`` publishes hot config."""
        self.database_url = database_url
        self.resync_s = resync_s
        self.drain_timeout_s = drain_timeout_s
        self.abort_timeout_s = abort_timeout_s
        self.kill_timeout_s = kill_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.crash_window_s = crash_window_s
        self.max_crashes = max_crashes
        self.snapshot_interval_s = max(1, int(snapshot_interval_s or self.settings.snapshot_interval_s))
        self.backup_interval_s = backup_interval_s
        self.error_lines = error_lines
        self.python = python
        self.instance_id = uuid.uuid4().hex[:12]
        self.extra_env = dict(extra_env or {})
        self._planner = planner
        self._publisher = publisher
        self._flows: dict[str, _Flow] = {}
        self._status: dict[str, FlowRuntime] = {}
        self._status_lock = threading.Lock()
        self._pass_lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._release = threading.Event()  # ends the lock holder, after the flows are drained
        self._leader = threading.Event()
        self._adopted = False
        self._threads: list[threading.Thread] = []
        if database_url is None:
            self._leader.set()  # nothing to share a database with: act alone

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start reconciling in the background (after taking the advisory lock, when there is a database)."""
        if self._threads:
            return
        self.flows_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._release.clear()
        loop = threading.Thread(target=self._loop, name="nexus-supervisor", daemon=True)
        self._threads.append(loop)
        if self.database_url is not None:
            db = threading.Thread(target=self._db_loop, name="nexus-supervisor-db", daemon=True)
            self._threads.append(db)
            db.start()
        loop.start()

    def stop(self, *, drain: bool = True) -> None:
        """Stop reconciling; with ``drain`` (the default) drain every flow this supervisor runs.

        ``drain=False`` leaves the flows running for the next supervisor to adopt.
        """
        self._stopping.set()
        self._wake.set()
        loop, db = self._threads[:1], self._threads[1:]
        for t in loop:
            t.join(timeout=self.drain_timeout_s + self.abort_timeout_s + self.kill_timeout_s + 10)
        if drain:  # still holding the lock, so no other supervisor adopts what is being drained
            with self._pass_lock:
                children = [c for f in self._flows.values() for c in f.children]
                self._stop_children(children)
                for f in self._flows.values():
                    f.children.clear()
                    f.set_state("stopped")
                    self._publish(f)
        self._release.set()
        for t in db:
            t.join(timeout=10)
        self._threads.clear()

    def wake(self) -> None:
        """Ask for a reconcile pass now (after a deploy, start or stop)."""
        self._wake.set()

    @property
    def is_leader(self) -> bool:
        """True while this supervisor may act (it holds the advisory lock, or has no database)."""
        return self._leader.is_set()

    def status(self) -> dict[str, FlowRuntime]:
        """Each known flow's state, version, pids, restarts and last error lines."""
        with self._status_lock:
            return dict(self._status)

    def wait_leader(self, timeout: float) -> bool:
        return self._leader.wait(timeout)

    # ------------------------------------------------------------------------------------ threads

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if self._leader.is_set():
                try:
                    self.reconcile()
                except Exception:  # one bad pass must not end supervision
                    log.exception("supervisor: reconcile pass failed")
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        wait = self.resync_s
        now = time.monotonic()
        for f in self._flows.values():
            if f.state == "restarting":
                wait = min(wait, max(0.05, f.next_start - now))
        return wait

    def _db_loop(self) -> None:
        """Hold the advisory lock and LISTEN on one connection; lose leadership with the connection."""
        import psycopg

        assert self.database_url is not None
        retry = 0.5
        while not self._release.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    retry = 0.5
                    while not self._release.is_set():
                        if not self._leader.is_set() and not self._stopping.is_set():
                            row = conn.execute(
                                "SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)
                            ).fetchone()
                            if row and row[0]:
                                log.info("supervisor %s: holds the lock, reconciling", self.instance_id)
                                self._leader.set()
                                self.wake()
                        for _ in conn.notifies(timeout=min(1.0, self.resync_s)):
                            self.wake()
            except psycopg.Error as exc:
                if self._leader.is_set():
                    log.warning(
                        "supervisor: lost the database (%s); pausing until it is back", type(exc).__name__
                    )
                self._leader.clear()
                self._release.wait(retry)
                retry = min(retry * 2, 10.0)
        self._leader.clear()

    # ------------------------------------------------------------------------------------ reconcile

    def reconcile(self) -> None:
        """One pass: desired vs actual for every flow. Safe to call from any thread."""
        with self._pass_lock:
            if not self._adopted:
                self._adopt()
                self._adopted = True
            try:
                desired = {d.flow_id: d for d in self.source.desired_flows()}
            except Exception as exc:  # the store is down: keep what runs, try again later
                log.warning("supervisor: cannot read the desired state (%s); keeping flows as they are", exc)
                self._reap_all()
                return
            self._reap_all()
            for flow_id, want in desired.items():
                flow = self._flows.get(flow_id)
                if flow is None:
                    flow = self._flows[flow_id] = _Flow(flow_id)
                try:
                    self._reconcile_flow(flow, want)
                except (SupervisorError, OSError) as exc:  # cannot write its folder, cannot spawn
                    log.error("supervisor: flow %s: %s", flow_id, exc)
                    flow.last_error = (str(exc),)
                    flow.set_state("failed")
                self._publish(flow)
            for flow_id in [f for f in self._flows if f not in desired]:
                flow = self._flows[flow_id]
                self._drain(flow)
                del self._flows[flow_id]
                with self._status_lock:
                    self._status.pop(flow_id, None)

    def _reconcile_flow(self, flow: _Flow, want: DesiredFlow) -> None:
        if want.desired_state != "running" or want.version is None or want.spec is None:
            if flow.children:
                self._drain(flow)
            flow.crashes.clear()
            flow.failed_version = None
            flow.set_state("stopped")
            return
        if flow.state == "failed":
            if flow.failed_version == want.version:
                return  # a new deploy (or a stop, then a start) tries again
            flow.failed_version = None
            flow.crashes.clear()
        if not flow.children:
            if flow.state == "restarting" and time.monotonic() < flow.next_start:
                return
            self._launch(flow, want)
            return
        if flow.version == want.version and flow.processes == max(1, want.processes):
            return
        self._apply_version(flow, want)

    def _apply_version(self, flow: _Flow, want: DesiredFlow) -> None:
        """A running flow gets a new version: hot when the planner allows, else drain and restart."""
        assert want.version is not None and want.spec is not None
        path, reasons = "redeploy", ["process count changed"]
        plan: Plan | None = None
        if flow.processes == max(1, want.processes):
            plan = self._plan(flow, want)
            path, reasons = (
                (plan.kind, list(plan.reasons)) if plan is not None else ("redeploy", ["no planner"])
            )
        if path == "hot" and plan is not None:
            try:
                self._publish_hot(flow.flow_id, want.version, plan.device_patches)
            except Exception as exc:
                log.warning(
                    "supervisor: flow %s: hot reload failed (%s); redeploying instead", flow.flow_id, exc
                )
                path, reasons = "redeploy", [f"hot reload failed: {exc}"]
        log.info(
            "supervisor: flow %s v%s -> v%s: %s (%s)",
            flow.flow_id,
            flow.version,
            want.version,
            path,
            "; ".join(reasons) or "-",
        )
        if path in ("hot", "noop"):
            self._write_spec(flow.flow_id, want.version, want.spec)
            flow.version, flow.spec = want.version, want.spec
            self._write_run(flow)
            return
        self._drain(flow)
        self._launch(flow, want)

    def _plan(self, flow: _Flow, want: DesiredFlow) -> Plan | None:
        planner: Planner | None = self._planner
        if planner is None:
            try:
                import control.planner as planner_module  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                return None
            planner = planner_module.plan
        if flow.spec is None:
            return None
        from dataflows.spec import SpecError, parse_spec

        try:
            old, new = parse_spec(flow.spec), parse_spec(want.spec or {})
        except SpecError:
            return None
        return planner(old, new)

    def _publish_hot(self, flow_id: str, version: int, patches: Mapping[str, Mapping[str, Any]]) -> None:
        publisher: Publisher | None = self._publisher
        if publisher is None:
            from control import hot  # type: ignore[attr-defined,import-not-found,unused-ignore]

            publisher = hot.publish_device_configs
        publisher(self.mqtt_url, flow_id, version, patches)

    # ------------------------------------------------------------------------------------ processes

    def _flow_dir(self, flow_id: str) -> Path:
        if not _SAFE_ID.match(flow_id):
            raise SupervisorError(f"flow id {flow_id!r} cannot name a folder (letters, digits, _ . -)")
        return self.flows_dir / flow_id

    def _write_spec(self, flow_id: str, version: int, spec: Mapping[str, Any]) -> Path:
        path = self._flow_dir(flow_id) / "specs" / f"v{version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
        tmp.replace(path)
        return path

    def _read_spec(self, flow_id: str, version: int | None) -> Mapping[str, Any] | None:
        if version is None:
            return None
        try:
            data = json.loads((self._flow_dir(flow_id) / "specs" / f"v{version}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_run(self, flow: _Flow) -> None:
        """``run.json``: the run id and the version it runs now (a hot reload moves it without a restart)."""
        path = self._flow_dir(flow.flow_id) / "run.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"run_id": flow.run_id, "version": flow.version, "pids": flow.runtime().pids})
        )
        tmp.replace(path)

    def _read_run(self, flow_id: str) -> dict[str, Any]:
        try:
            data = json.loads((self._flow_dir(flow_id) / "run.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def recovery_dir(self, flow_id: str, processes: int) -> Path:
        """The flow's recovery directory, with its partitions created on first use (fixed afterwards)."""
        rdir = self._flow_dir(flow_id) / "recovery"
        marker = rdir / "partitions"
        if marker.exists():
            return rdir
        rdir.mkdir(parents=True, exist_ok=True)
        count = max(RECOVERY_PARTITIONS, processes)
        proc = subprocess.run(
            [self.python, "-m", "bytewax.recovery", str(rdir), str(count)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise SupervisorError(f"cannot create recovery partitions in {rdir}: {tail}")
        marker.write_text(f"{count}\n")
        return rdir

    def _launch(self, flow: _Flow, want: DesiredFlow) -> None:
        assert want.version is not None and want.spec is not None
        for found in self._find(flow.flow_id):  # never a second process for one Bytewax process id
            log.warning(
                "supervisor: flow %s: stray process %d found before start; draining it",
                flow.flow_id,
                found.proc.pid,
            )
            self._stop_children([_Child(found.index, found.proc)])
        processes = max(1, want.processes)
        spec_path = self._write_spec(flow.flow_id, want.version, want.spec)
        rdir = self.recovery_dir(flow.flow_id, processes)
        logs = self._flow_dir(flow.flow_id) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        run_id = uuid.uuid4().hex[:12]
        addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(processes))
        env = {
            **os.environ,
            **self.extra_env,
            "NEXUS_SPEC": str(spec_path),
            "NEXUS_DATABASE_URL": self.database_url or os.environ.get("NEXUS_DATABASE_URL", ""),
            # the key that verifies signed write commands: only in the child's environment, never
            # on a command line, in a log or in a status
            "NEXUS_COMMAND_KEY": self.settings.command_key or os.environ.get("NEXUS_COMMAND_KEY", ""),
            "NEXUS_MQTT_URL": self.flow_mqtt_url,
            ENV_FLOW_ID: flow.flow_id,
            ENV_FLOW_VERSION: str(want.version),
            ENV_SUPERVISOR_ID: self.instance_id,
            ENV_SUPERVISOR_HOME: str(self.home),
            ENV_RUN_ID: run_id,
        }
        children: list[_Child] = []
        for i in range(processes):
            cmd = [self.python, "-m", "bytewax.run", FLOW_MODULE, "-r", str(rdir)]
            cmd += ["-s", str(self.snapshot_interval_s), "-b", str(self.backup_interval_s)]
            if processes > 1:
                cmd += ["-i", str(i), "-a", addresses]
            with (logs / f"{i}.stderr.log").open("wb") as err, (logs / f"{i}.stdout.log").open("wb") as out:
                popen = subprocess.Popen(
                    cmd,
                    env={**env, ENV_FLOW_PROCESS: f"{i}/{processes}"},
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches the supervisor, which drains the flow
                )
            children.append(_Child(i, psutil.Process(popen.pid), popen))
            threading.Thread(target=self._watch, args=(popen,), daemon=True).start()
        flow.children = children
        flow.run_id = run_id
        flow.version, flow.spec, flow.processes = want.version, want.spec, processes
        flow.set_state("running")
        self._write_run(flow)
        log.info(
            "supervisor: flow %s v%d started (pids %s)", flow.flow_id, want.version, [c.pid for c in children]
        )

    def _watch(self, popen: subprocess.Popen[bytes]) -> None:
        popen.wait()
        if not self._stopping.is_set():
            self.wake()

    def _reap_all(self) -> None:
        now = time.monotonic()
        for flow in self._flows.values():
            if not flow.children or all(c.returncode() is None for c in flow.children):
                continue
            dead = [c for c in flow.children if c.returncode() is not None]
            first = dead[0]
            # in a cluster one dead process panics the others: end them all and start over
            self._stop_children([c for c in flow.children if c.returncode() is None], drain=False)
            tail = self._stderr_tail(flow.flow_id, first.index)
            code = first.returncode()
            flow.last_error = (f"process {first.index} (pid {first.pid}) exited with code {code}", *tail)
            flow.children = []
            flow.restarts += 1
            flow.crashes.append(now)
            metrics.FLOW_RESTARTS.labels(flow=flow.flow_id).inc()
            recent = sum(1 for t in flow.crashes if now - t <= self.crash_window_s)
            if recent >= self.max_crashes:
                flow.failed_version = flow.version
                flow.set_state("failed")
                log.error(
                    "supervisor: flow %s failed: %d crashes within %.0f s; last error:\n%s",
                    flow.flow_id,
                    recent,
                    self.crash_window_s,
                    "\n".join(flow.last_error),
                )
            else:
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (recent - 1))
                flow.next_start = now + delay
                flow.set_state("restarting")
                log.warning(
                    "supervisor: flow %s crashed (%s); restarting in %.1f s",
                    flow.flow_id,
                    flow.last_error[0],
                    delay,
                )
            self._publish(flow)

    def _stderr_tail(self, flow_id: str, index: int) -> tuple[str, ...]:
        path = self._flow_dir(flow_id) / "logs" / f"{index}.stderr.log"
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ()
        return tuple(line for line in lines if line.strip())[-self.error_lines :]

    def _drain(self, flow: _Flow) -> None:
        if flow.children:
            flow.set_state("stopping")
            self._publish(flow)
            self._stop_children(flow.children)
        flow.children = []
        flow.set_state("stopped")

    def _stop_children(self, children: Sequence[_Child], *, drain: bool = True) -> None:
        """The stop ladder over all ``children`` at once: drain (SIGUSR1), abort (SIGINT), SIGKILL."""
        ladder: list[tuple[int, float]] = [
            (signal.SIGINT, self.abort_timeout_s),
            (signal.SIGKILL, self.kill_timeout_s),
        ]
        if drain:
            ladder.insert(0, (signal.SIGUSR1, self.drain_timeout_s))
        for sig, timeout in ladder:
            alive = [c for c in children if c.returncode() is None]
            if not alive:
                break
            for c in alive:
                c.signal(sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(c.returncode() is None for c in alive):
                time.sleep(0.05)  # polling exit; the children are not ours to wait on when adopted
        for c in children:
            if c.popen is not None:
                try:
                    c.popen.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    log.error("supervisor: pid %d survived SIGKILL", c.pid)

    # ------------------------------------------------------------------------------------ adoption

    def _find(self, flow_id: str | None = None) -> list[_Found]:
        return find_flow_processes(self.home, flow_id)

    def _adopt(self) -> None:
        """After a restart: adopt each flow's complete cluster of one run; drain everything else."""
        by_flow: dict[str, list[_Found]] = {}
        for f in self._find():
            if f.flow_id not in self._flows or not self._flows[f.flow_id].children:
                by_flow.setdefault(f.flow_id, []).append(f)
        for flow_id, procs in by_flow.items():
            runs: dict[str, list[_Found]] = {}
            for p in procs:
                runs.setdefault(p.run_id, []).append(p)
            run = self._read_run(flow_id)
            keep: list[_Found] = []
            # prefer the run the last supervisor recorded, then any complete one
            for run_id in sorted(runs, key=lambda r: r != run.get("run_id")):
                members = runs[run_id]
                total = members[0].processes
                if sorted(m.index for m in members) == list(range(total)) and not keep:
                    keep = members
            drop = [p for p in procs if p not in keep]
            if drop:
                log.warning(
                    "supervisor: flow %s: draining %d process(es) not part of one complete run: %s",
                    flow_id,
                    len(drop),
                    [p.proc.pid for p in drop],
                )
                self._stop_children([_Child(p.index, p.proc) for p in drop])
            if not keep:
                continue
            version = keep[0].version
            if run.get("run_id") == keep[0].run_id and isinstance(run.get("version"), int):
                version = run["version"]  # hot reloads since its start
            flow = self._flows.setdefault(flow_id, _Flow(flow_id))
            flow.children = [_Child(p.index, p.proc) for p in sorted(keep, key=lambda p: p.index)]
            flow.run_id = keep[0].run_id
            flow.processes = keep[0].processes
            flow.version = version
            flow.spec = self._read_spec(flow_id, version)
            flow.set_state("running")
            log.info(
                "supervisor: adopted flow %s v%s (pids %s)", flow_id, version, [c.pid for c in flow.children]
            )
            self._publish(flow)

    # ------------------------------------------------------------------------------------ status

    def _publish(self, flow: _Flow) -> None:
        runtime = flow.runtime()
        with self._status_lock:
            self._status[flow.flow_id] = runtime
            snapshot = dict(self._status)
        metrics.set_flow_states(snapshot)


def _free_port() -> int:
    from nexus.embedded import free_port

    return free_port()


def find_flow_processes(home: Path, flow_id: str | None = None) -> list[_Found]:
    """Flow processes of this installation (same home), by their marker variables."""
    found = []
    own = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == own:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(ENV_SUPERVISOR_HOME) != str(home.resolve()) or ENV_FLOW_ID not in env:
            continue
        if flow_id is not None and env[ENV_FLOW_ID] != flow_id:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        index, _, total = env.get(ENV_FLOW_PROCESS, "0/1").partition("/")
        try:
            version = int(env.get(ENV_FLOW_VERSION, ""))
        except ValueError:
            version = None
        found.append(
            _Found(
                proc=proc,
                flow_id=env[ENV_FLOW_ID],
                version=version,
                run_id=env.get(ENV_RUN_ID, ""),
                index=int(index or 0),
                processes=int(total or 1),
            )
        )
    return found


def flow_processes(home: Path | str, flow_id: str | None = None) -> list[tuple[str, int, int]]:
    """``(flow id, Bytewax process id, pid)`` of every running flow process of the installation in ``home``
    (what ``kill -9`` of a supervisor leaves behind, and what its successor adopts)."""
    return sorted((f.flow_id, f.index, int(f.proc.pid)) for f in find_flow_processes(Path(home), flow_id))
