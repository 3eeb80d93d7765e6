"""``python -m bench.chaos`` (``just chaos``): fault injection against the real flow, with figures.

Real services and processes: an embedded PostgreSQL, a mosquitto broker with persistence on (its
own process, stopped with SIGTERM or killed with SIGKILL by its PID), the Modbus simulators of
:mod:`bench.sim`, the telemetry flow of :mod:`bench.flow` as ``python -m bytewax.run`` with Bytewax
recovery (``-r DIR -s 1 -b 0``, after ``python -m bytewax.recovery DIR 1``), and an independent
subscriber (:mod:`bench.chaos_sub`, QoS 1, persistent session).

Each scenario starts from an empty ``nexus_points`` table, a fresh spool folder and a fresh flow;
warms up; injects its fault; waits until both sinks' spools are empty again (the recovery time);
lets live data run a few seconds; drains the flow (SIGTERM: sources stop, sinks flush); then counts:

- ``read``: points the flow read (its counters), ``stored``: rows in ``nexus_points``,
  ``published``: messages the broker acknowledged to the flow (live + replayed),
  ``received``: distinct ``(topic, timestamp)`` at the subscriber;
- ``lost_historian = read - stored``, ``lost_mqtt = read - received`` (with a ``kill -9`` of the
  flow, ``read`` is its last report, up to 0.5 s old: the union of stored and received is shown too);
- duplicates: rows sharing ``(tag_id, time)`` (the historian's unique key makes this 0 by
  construction; ``dup_skipped`` counts the replayed rows it absorbed) and repeated MQTT messages;
- out of order per tag: historian rows committed after a later row of the same tag (by
  transaction id), MQTT messages older than the previous one of the same tag within the live or
  within the replayed stream (``live_first`` interleaves the two by design);
- spool peak (bytes, both sinks), flow RSS peak, recovery time, whether the flow ever exited on
  its own.

Scenarios: ``broker_down``, ``db_down``, ``both_down`` (``--outage`` s each), ``db_restart``
(immediate shutdown of PostgreSQL during writes, then start: transactions cut mid-way),
``broker_kill9`` (SIGKILL, restart after 5 s), ``flow_kill9`` (SIGKILL of the flow, restart with
recovery after 2 s), ``spool_full`` (the spool on a small tmpfs, or without root a small
``NEXUS_BENCH_SPOOL_MAX_BYTES``, while both services are down), ``device_flap`` (one extra device's
simulator stopped and continued every 5 s while the others run), and ``soak`` (``--soak-minutes``
with a broker flap every ``--flap-every`` s; RSS growth after warm-up, spool empty at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
import yaml

from bench.chaos_sub import message_key
from bench.cli import ROOT, _flow_stats, _get, start_sim
from bench.load import Load
from connectors.mqtt.publisher import _KIND_BATCH, _encode_tags, decode_messages, format_batch
from connectors.spool import Spool, decode_batch
from dataflows.spec import load_spec
from nexus.embedded import EmbeddedPostgres, _wait_for_broker, free_port

SCENARIOS = (
    "broker_down",
    "db_down",
    "both_down",
    "db_restart",
    "broker_kill9",
    "flow_kill9",
    "spool_full",
    "device_flap",
)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Mosquitto:
    """mosquitto with persistence on, in a folder that survives restarts; stopped or killed by PID."""

    def __init__(self, folder: Path, port: int) -> None:
        self.dir = folder
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # mosquitto may drop privileges to its own user
        if os.geteuid() == 0:
            # started as root it runs as user mosquitto, which must reach the folder: without it the
            # persistence file (sessions, queued QoS 1 messages) is never written, silently but for a
            # "Permission denied" in its log, and a restart forgets every persistent session
            for parent in folder.resolve().parents:
                parent.chmod(parent.stat().st_mode | stat.S_IXOTH)
        (folder / "mosquitto.conf").write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            "queue_qos0_messages true\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        log = (self.dir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([exe, "-c", str(self.dir / "mosquitto.conf")], stdout=log, stderr=log)
        log.close()
        proc = self.proc
        if not _wait_for_broker("127.0.0.1", self.port, time.monotonic() + 30, lambda: proc.poll() is None):
            raise RuntimeError(f"mosquitto did not start; see {self.dir / 'mosquitto.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


class Flow:
    """The flow process (bench.flow:flow) with Bytewax recovery; restartable on the same folders."""

    def __init__(self, folder: Path, env: dict[str, str], snapshot_s: float = 1.0) -> None:
        self.folder = folder
        self.env = env
        self.snapshot_s = snapshot_s
        self.recovery = folder / "recovery"
        self.recovery.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "bytewax.recovery", str(self.recovery), "1"], check=True, cwd=ROOT
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes: list[int] = []
        self.rss_peak = 0
        self.rss_samples: list[tuple[float, int]] = []

    def start(self) -> None:
        self.starts += 1
        log = (self.folder / f"flow-{self.starts}.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "bytewax.run",
            "bench.flow:flow",
            "-r",
            str(self.recovery),
            "-s",
            f"{self.snapshot_s:g}",
            "-b",
            "0",
        ]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Record an exit we did not cause (a crash), and restart so the scenario can go on."""
        if self.proc is not None and self.proc.poll() is not None:
            self.crashes.append(self.proc.returncode)
            _say(f"  !! the flow exited by itself (code {self.proc.returncode}); see {self.folder}")
            self.start()

    def tick(self) -> None:
        self.check()
        self.sample_rss()

    def sample_rss(self) -> int:
        if not self.alive():
            return 0
        assert self.proc is not None
        try:
            rss = int(psutil.Process(self.proc.pid).memory_info().rss)
        except psutil.Error:
            return 0
        self.rss_peak = max(self.rss_peak, rss)
        self.rss_samples.append((time.monotonic(), rss))
        return rss

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def drain(self, timeout: float = 120) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


class Rig:
    """The services one chaos run shares between its scenarios."""

    def __init__(self, work: Path, load: Load, flap_tags: int) -> None:
        self.work = work
        self.load = load
        self.pg = EmbeddedPostgres(work / "pg", port=free_port())
        self.broker = Mosquitto(work / "mosquitto", free_port())
        self.sim: subprocess.Popen[bytes] | None = None
        self.flap_sim: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []
        self.flap_load = Load(devices=1, tags=flap_tags, poll_interval_s=load.poll_interval_s, qos=load.qos)
        self.flap_port = 0

    def start(self) -> None:
        self.pg.start()
        self.broker.start()
        self.sim, self.ports = start_sim(self.load)
        self.flap_sim, flap_ports = start_sim(self.flap_load)
        self.flap_port = flap_ports[0]

    def stop(self) -> None:
        for p in (self.sim, self.flap_sim):
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.broker.stop()
        self.pg.stop()

    def spec(self, flap: bool) -> dict[str, Any]:
        spec = self.load.spec({"modbus": self.ports})
        if flap:
            dev = self.flap_load.spec({"modbus": [self.flap_port]})["devices"][0]
            dev["id"] = "flap0000"
            dev["connection"]["timeout_s"] = 0.5
            spec["devices"].append(dev)
        return spec

    def pg_immediate_restart(self) -> None:
        self.pg._run("pg_ctl", ["-D", str(self.pg.pgdata), "-w", "-m", "immediate", "stop"], timeout=60)
        self.pg.start()

    def reset_db(self) -> None:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS nexus_points CASCADE")


def _forget_session(port: int, client_id: str) -> None:
    """Connect once with a clean session under the subscriber's id: the broker drops its queue.

    Otherwise the finished scenario's persistent session would keep queueing every later message.
    """
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        cid = client_id.encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        sock.sendall(bytes([0x10, len(body)]) + body)
        sock.recv(4)  # CONNACK
        sock.sendall(b"\xe0\x00")  # DISCONNECT


def _db_figures(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT (tag_id, time)) FROM nexus_points"
            ).fetchone() or (0, 0)
            ooo = conn.execute(
                "SELECT count(*) FROM (SELECT time, max(time) OVER (PARTITION BY tag_id ORDER BY "
                "xmin::text::bigint, time ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before "
                "FROM nexus_points) s WHERE time < before"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return {"rows": 0, "distinct": 0, "out_of_order": 0}
    return {"rows": int(rows), "distinct": int(distinct), "out_of_order": int(ooo[0] if ooo else 0)}


def _pending_records(root: Path, sink: str) -> Iterator[bytes]:
    """Every unacknowledged record of one sink's spools (one per worker) in a copy of the spool folder."""
    for folder in sorted(root.glob(f"*/{sink}/w*")):
        spool = Spool(folder, name=f"at-kill-{sink}-{folder.name}")
        try:
            after = None
            while records := spool.read(after, max_records=1000):
                yield from (bytes(r) for _seq, r in records)
                after = records[-1][0]
        finally:
            spool.close()


def _historian_keys_at_kill(root: Path) -> np.ndarray:
    """(tag id, microseconds since 1970) of every row the historian had accepted, not yet committed."""
    keys = [
        np.column_stack((b.tag_ids.astype(np.int64), b.ts_ns // 1000))
        for b in (decode_batch(r) for r in _pending_records(root, "historian"))
    ]
    return np.concatenate(keys) if keys else np.empty((0, 2), np.int64)


def _mqtt_keys_at_kill(root: Path, spec_path: Path) -> np.ndarray:
    """:func:`bench.chaos_sub.message_key` of every message the UNS had spooled, not yet replayed."""
    encoded = _encode_tags(load_spec(str(spec_path)).tag_infos())
    out: list[int] = []
    for rec in _pending_records(root, "uns"):
        if rec[:1] == _KIND_BATCH:
            msgs, _unknown = format_batch(decode_batch(rec[1:]), encoded)
        else:
            msgs = decode_messages(rec)
        for topic, payload in msgs:
            at = payload.find(b'"timestamp":"') + 13
            out.append(message_key(topic.encode(), payload[at : at + 27]))
    return np.array(out, dtype=np.int64)


def _missing_rows(url: str, keys: np.ndarray) -> int:
    """How many of the (tag id, microseconds) keys have no row in ``nexus_points``."""
    if not len(keys):
        return 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE at_kill (tag_id bigint, us bigint)")
        with conn.cursor().copy("COPY at_kill (tag_id, us) FROM STDIN") as copy:
            for tag_id, us in keys.tolist():
                copy.write_row((tag_id, us))
        row = conn.execute(
            "SELECT count(*) FROM at_kill k WHERE NOT EXISTS (SELECT 1 FROM nexus_points p WHERE "
            "p.tag_id = k.tag_id AND p.time = timestamptz 'epoch' + k.us * interval '1 microsecond')"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait(cond: Callable[[], bool], timeout: float, tick: Callable[[], None] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        if cond():
            return True
        time.sleep(0.5)
    return False


class _Timeline:
    """What one scenario's flow did over time: a line of counters every ``every`` s, and phase marks.

    The figures the issue asks for beyond the totals come from it: RSS per phase (the spool, not
    memory, must absorb an outage: RSS during the outage stays at its warm level), and the drain's
    pace after the outage (replayed messages and historian rows per second against the live rate,
    and the live messages that kept flowing meanwhile).
    """

    def __init__(self, flow: Flow, stats: Path, every: float = 2.0) -> None:
        self.flow = flow
        self.stats = stats
        self.every = every
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}
        self.lines: list[dict[str, Any]] = []
        self._next = self.t0

    def mark(self, phase: str) -> None:
        self.marks[phase] = time.monotonic()
        self.sample(force=True)
        self.lines[-1]["mark"] = phase

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.every
        st = _flow_stats(self.stats)
        self.lines.append(
            {
                "t": round(now - self.t0, 1),
                "rss_mb": round((self.flow.rss_samples[-1][1] if self.flow.rss_samples else 0) / 2**20, 1),
                "read": int(_get(st, "points_read")),
                "stored": int(_get(st, "historian", "rows_written")),
                "acked": int(_get(st, "uns", "acked")),
                "replayed": int(_get(st, "uns", "replayed")),
                "uns_pending": int(_get(st, "uns", "spool_pending_records")),
                "hist_pending": int(_get(st, "historian", "spool_pending_records")),
            }
        )

    def rss_mb(self, start: str, end: str, how: Callable[[list[int]], float]) -> float | None:
        """``how`` (max, median) of the flow's RSS samples between two marks, MB."""
        if start not in self.marks or end not in self.marks:
            return None
        a, b = self.marks[start], self.marks[end]
        got = [r for t, r in self.flow.rss_samples if a <= t <= b]
        return round(how(got) / 2**20, 1) if got else None

    def rate(self, key: str, start: str, end: str) -> float | None:
        """Per second of ``key`` between the lines sampled at two marks."""
        at = {line["mark"]: line for line in self.lines if "mark" in line}
        a, b = at.get(start), at.get(end)
        if a is None or b is None or b["t"] <= a["t"]:
            return None
        return round((b[key] - a[key]) / (b["t"] - a["t"]))


def _median(xs: list[int]) -> float:
    return float(np.median(xs))


def run_scenario(rig: Rig, name: str, args: argparse.Namespace) -> dict[str, Any]:
    folder = rig.work / name
    folder.mkdir()
    load_before = os.getloadavg()[0]
    stats = folder / "stats"
    stats.mkdir()
    spool = folder / "spool"
    spool.mkdir()
    mounted = False
    extra_env: dict[str, str] = {}
    if name == "spool_full":
        size_mb = args.spool_tmpfs_mb
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(spool)],
            capture_output=True,
            check=False,
        )
        mounted = r.returncode == 0
        # per sink a bound above what the volume holds: the volume fills first (ENOSPC); without a tmpfs
        # the bound itself is what drops
        extra_env["NEXUS_BENCH_SPOOL_MAX_BYTES"] = str((size_mb if mounted else size_mb // 2) << 20)
    rig.reset_db()
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(rig.spec(flap=name == "device_flap")))
    env = {
        **os.environ,
        "NEXUS_SPEC": str(spec_path),
        "NEXUS_DATABASE_URL": rig.pg.url,
        "NEXUS_MQTT_URL": rig.broker.url,
        "NEXUS_BENCH_STATS": str(stats),
        "NEXUS_SPOOL_DIR": str(spool),
        "NEXUS_LOG_LEVEL": "WARNING",
        **extra_env,
    }
    sub_stats = folder / "subscriber.json"
    sub_keys = folder / "subscriber-keys.npy"
    sub_id = f"chaos-sub-{name}-{os.getpid()}"
    sub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.chaos_sub",
            "127.0.0.1",
            str(rig.broker.port),
            "bench/#",
            str(sub_stats),
            sub_id,
            *([str(sub_keys)] if name == "flow_kill9" else []),
        ],
        cwd=ROOT,
    )

    def sub_report() -> dict[str, Any]:
        try:
            return dict(json.loads(sub_stats.read_text()))
        except (OSError, ValueError):
            return {}

    if not _wait(lambda: bool(sub_report().get("subscribed")), 30):
        raise RuntimeError("the chaos subscriber did not subscribe")
    flow = Flow(folder, env, args.snapshot_s)
    flow.start()
    timeline = _Timeline(flow, stats)
    fault: dict[str, Any] = {}

    def tick() -> None:
        flow.check()
        flow.sample_rss()
        timeline.sample()

    def s() -> dict[str, Any]:
        return _flow_stats(stats)

    live_records = 3 * (rig.load.devices + 1)
    """The historian spools every batch ahead of its commit: a few polls' worth is live, not backlog."""

    def backlog() -> bool:
        st = s()
        return (
            _get(st, "uns", "spool_pending_records") > 0
            or _get(st, "historian", "spool_pending_records") > live_records
        )

    def spool_peak() -> float:
        st = s()
        return _get(st, "uns", "spool_peak_bytes") + _get(st, "historian", "spool_peak_bytes")

    try:
        if not _wait(lambda: _get(s(), "points_read") > 0, 120, tick):
            raise RuntimeError(f"the flow read nothing within 120 s; see {folder}")
        t0 = time.monotonic()
        timeline.mark("reading")
        _wait(lambda: time.monotonic() - t0 >= args.warmup, args.warmup + 1, tick)
        _say(f"  {name}: warm, {_get(s(), 'points_read'):,.0f} points read; injecting the fault")
        outage = args.outage
        timeline.mark("fault")
        t_fault = time.monotonic()
        if name in ("broker_down", "both_down", "spool_full"):
            rig.broker.stop()
        if name in ("db_down", "both_down", "spool_full"):
            rig.pg.stop()
        if name in ("broker_down", "db_down", "both_down", "spool_full"):
            _wait(lambda: time.monotonic() - t_fault >= outage, outage + 1, tick)
            if name != "db_down":
                rig.broker.start()
            if name != "broker_down":
                rig.pg.start()
        elif name == "db_restart":
            for _ in range(3):
                _wait(lambda: False, 2, tick)
                rig.pg_immediate_restart()
        elif name == "broker_kill9":
            rig.broker.kill9()
            _wait(lambda: False, 5, tick)
            rig.broker.start()
        elif name == "flow_kill9":
            read_before = _get(s(), "points_read")
            flow.kill9()
            fault["read_at_kill"] = read_before
            # what the sinks had accepted (durable in their spools) and not yet handed on at the kill
            shutil.copytree(spool, folder / "spool-at-kill")
            time.sleep(2)
            reports = len(list(stats.glob("flow-*.json")))
            flow.start()
            if not _wait(lambda: len(list(stats.glob("flow-*.json"))) > reports, 120, tick):
                raise RuntimeError(f"the restarted flow did not report within 120 s; see {folder}")
        elif name == "device_flap":
            assert rig.flap_sim is not None
            end = t_fault + outage
            stopped = False
            while time.monotonic() < end:
                os.kill(rig.flap_sim.pid, signal.SIGCONT if stopped else signal.SIGSTOP)
                stopped = not stopped
                _wait(lambda: False, 5, tick)
            os.kill(rig.flap_sim.pid, signal.SIGCONT)
        timeline.mark("back")
        t_back = time.monotonic()
        fault["fault_s"] = round(t_back - t_fault, 1)
        _say(f"  {name}: services back after {fault['fault_s']} s; waiting for the spools to drain")
        drained = _wait(lambda: not backlog(), args.recovery_timeout, tick)
        recovery_s = time.monotonic() - t_back
        timeline.mark("drained")
        _wait(lambda: False, args.settle, tick)
        timeline.mark("end")
        peak = spool_peak()
        code = flow.drain()
        if code not in (0, None):
            fault["drain_exit_code"] = code
        last = sub_report().get("messages", 0)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:
            time.sleep(0.5)
            now = sub_report().get("messages", 0)
            if now != last:
                last, quiet_since = now, time.monotonic()
    finally:
        if flow.alive():
            flow.kill9()
        sub.terminate()
        sub.wait(300)
        if rig.broker.proc is not None:
            _forget_session(rig.broker.port, sub_id)
        if mounted:
            subprocess.run(["umount", "-l", str(spool)], check=False)
    st = s()
    sub_final = sub_report()
    db = _db_figures(rig.pg.url)
    read = int(_get(st, "points_read"))
    received = int(sub_final.get("distinct", 0))
    out: dict[str, Any] = {
        "read": read,
        "stored": db["distinct"],
        "published": int(_get(st, "uns", "acked")),
        "received": received,
        "lost_historian": read - db["distinct"],
        "lost_mqtt": read - received,
        "dup_historian": db["rows"] - db["distinct"],
        "dup_skipped": int(_get(st, "historian", "duplicates_skipped")),
        "dup_mqtt": int(sub_final.get("duplicates", 0)),
        "ooo_historian": db["out_of_order"],
        "ooo_mqtt_live": int(sub_final.get("out_of_order_live", 0)),
        "ooo_mqtt_replayed": int(sub_final.get("out_of_order_historical", 0)),
        "mqtt_redelivered": int(sub_final.get("redelivered", 0)),
        "ooo_mqtt_redelivered": int(sub_final.get("out_of_order_redelivered", 0)),
        "replayed": int(_get(st, "uns", "replayed")),
        "spooled_msgs": int(_get(st, "uns", "spooled")),
        "spool_dropped_records": int(
            _get(st, "uns", "spool_dropped_records") + _get(st, "historian", "spool_dropped_records")
        ),
        "spool_peak_bytes": int(peak),
        "rss_peak_mb": round(flow.rss_peak / 2**20, 1),
        # the spool, not memory, absorbs the outage: RSS warm, during the fault, while draining, after
        "rss_warm_mb": timeline.rss_mb("reading", "fault", _median),
        "rss_fault_peak_mb": timeline.rss_mb("fault", "back", max),
        "rss_recovery_peak_mb": timeline.rss_mb("back", "drained", max),
        "rss_end_mb": timeline.rss_mb("drained", "end", _median),
        "recovery_s": round(recovery_s, 1) if drained else None,
        # the drain's pace (per s, from the service's return until the spools are empty) beside the
        # live rate: replayed UNS messages, all UNS messages acknowledged, historian rows written
        "drain_replayed_per_s": timeline.rate("replayed", "back", "drained"),
        "drain_acked_per_s": timeline.rate("acked", "back", "drained"),
        "drain_stored_per_s": timeline.rate("stored", "back", "drained"),
        "live_read_per_s": timeline.rate("read", "back", "drained"),
        "flow_crashes": len(flow.crashes),
        "skipped_polls": int(_get(st, "skipped_polls")),
        "poll_failures": int(_get(st, "failures")),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        **fault,
        "timeline": timeline.lines,
    }
    if name == "flow_kill9":
        out["union_stored_received"] = max(db["distinct"], received)
        # issue 11 item 4: nothing accepted downstream is lost; the UNS re-sends at most one snapshot
        hist_keys = _historian_keys_at_kill(folder / "spool-at-kill")
        mqtt_keys = _mqtt_keys_at_kill(folder / "spool-at-kill", spec_path)
        got = np.load(sub_keys) if sub_keys.exists() else np.empty(0, np.int64)
        out["historian_accepted_at_kill"] = len(hist_keys)
        out["historian_accepted_lost"] = _missing_rows(rig.pg.url, hist_keys)
        out["mqtt_spooled_at_kill"] = len(mqtt_keys)
        out["mqtt_spooled_lost"] = int((~np.isin(mqtt_keys, got)).sum())
        out["dup_mqtt_bound"] = int(args.snapshot_s * rig.load.points_per_s)
    if name == "spool_full":
        out["tmpfs"] = mounted
    # a full spool is never a silent loss: what is lost was counted as dropped (the spools count the
    # rows and messages of the records they drop), and the UNS's drops reached the alert topic
    out["dropped_rows_historian"] = int(_get(st, "historian", "rows_dropped"))
    out["dropped_msgs_uns"] = int(_get(st, "uns", "spool_dropped_messages"))
    out["unaccounted_historian"] = out["lost_historian"] - out["dropped_rows_historian"]
    out["unaccounted_mqtt"] = out["lost_mqtt"] - out["dropped_msgs_uns"]
    out["alerted_records_uns"] = int(sub_final.get("alerted_records", 0))
    out["uns_dropped_records"] = int(_get(st, "uns", "spool_dropped_records"))
    return out


def run_soak(rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    """``--soak-minutes`` at the load with a broker flap every ``--flap-every`` s."""
    folder = rig.work / "soak"
    seconds = args.soak_minutes * 60
    flap_every, flap_down = args.flap_every, args.flap_down
    args = argparse.Namespace(**{**vars(args), "warmup": 0.0, "outage": 0.0})
    folder.mkdir()
    (folder / "stats").mkdir()
    (folder / "spool").mkdir()
    rig.reset_db()
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(rig.spec(flap=False)))
    env = {
        **os.environ,
        "NEXUS_SPEC": str(spec_path),
        "NEXUS_DATABASE_URL": rig.pg.url,
        "NEXUS_MQTT_URL": rig.broker.url,
        "NEXUS_BENCH_STATS": str(folder / "stats"),
        "NEXUS_SPOOL_DIR": str(folder / "spool"),
        "NEXUS_LOG_LEVEL": "WARNING",
    }
    sub_stats = folder / "subscriber.json"
    sub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.chaos_sub",
            "127.0.0.1",
            str(rig.broker.port),
            "bench/#",
            str(sub_stats),
            f"chaos-soak-{os.getpid()}",
        ],
        cwd=ROOT,
    )

    def sub_report() -> dict[str, Any]:
        try:
            return dict(json.loads(sub_stats.read_text()))
        except (OSError, ValueError):
            return {}

    if not _wait(lambda: bool(sub_report().get("subscribed")), 30):
        raise RuntimeError("the soak subscriber did not subscribe")
    flow = Flow(folder, env, args.snapshot_s)
    flow.start()
    stats = folder / "stats"
    timeline: list[dict[str, Any]] = []
    flaps = 0
    t0 = time.monotonic()
    next_flap = t0 + flap_every
    next_line = t0
    try:
        while (el := time.monotonic() - t0) < seconds:
            flow.check()
            rss = flow.sample_rss()
            if time.monotonic() >= next_flap:
                flaps += 1
                _say(f"  soak {el / 60:5.1f} min: broker flap {flaps} ({flap_down:g} s down)")
                rig.broker.stop()
                time.sleep(flap_down)
                rig.broker.start()
                next_flap += flap_every
            if time.monotonic() >= next_line:
                st = _flow_stats(stats)
                line = {
                    "min": round(el / 60, 2),
                    "rss_mb": round(rss / 2**20, 1),
                    "read": int(_get(st, "points_read")),
                    "stored": int(_get(st, "historian", "rows_written")),
                    "published": int(_get(st, "uns", "acked")),
                    "received": int(sub_report().get("messages", 0)),
                    "spool_records": int(
                        _get(st, "uns", "spool_pending_records")
                        + _get(st, "historian", "spool_pending_records")
                    ),
                    # glibc's view: live heap vs freed memory the allocator keeps (RSS growth's cause)
                    "heap_mb": round(_get(st, "malloc", "in_use") / 2**20, 1),
                    "free_kept_mb": round(_get(st, "malloc", "free_kept") / 2**20, 1),
                    "uns_outstanding": int(_get(st, "uns", "outstanding")),
                    "load": round(os.getloadavg()[0], 1),
                }
                timeline.append(line)
                _say(f"  soak {json.dumps(line)}")
                next_line += 30
            time.sleep(1)
        live_records = 3 * (rig.load.devices + 1)  # the historian spools ahead of each commit

        def backlog() -> bool:
            st = _flow_stats(stats)
            return (
                _get(st, "uns", "spool_pending_records") > 0
                or _get(st, "historian", "spool_pending_records") > live_records
            )

        drained = _wait(lambda: not backlog(), args.recovery_timeout, flow.tick)
        st_end = _flow_stats(stats)
        spool_end = int(
            _get(st_end, "uns", "spool_pending_records") + _get(st_end, "historian", "spool_pending_records")
        )
        code = flow.drain()
        last = sub_report().get("messages", 0)
        quiet = time.monotonic()
        while time.monotonic() - quiet < 3:
            time.sleep(0.5)
            now = sub_report().get("messages", 0)
            if now != last:
                last, quiet = now, time.monotonic()
    finally:
        if flow.alive():
            flow.kill9()
        sub.terminate()
        sub.wait(900)  # it counts distinct keys at exit: tens of millions after a long soak
    st = _flow_stats(stats)
    sub_final = sub_report()
    db = _db_figures(rig.pg.url)
    samples = flow.rss_samples
    start = samples[0][0] if samples else 0.0
    warm = [r for t, r in samples if args.soak_warmup * 60 <= t - start <= (args.soak_warmup + 2) * 60]
    tail = [r for t, r in samples if t - start >= seconds - 120]
    base = sorted(warm)[len(warm) // 2] if warm else 0
    end = sorted(tail)[len(tail) // 2] if tail else 0
    read = int(_get(st, "points_read"))
    return {
        "minutes": args.soak_minutes,
        "broker_flaps": flaps,
        "read": read,
        "stored": db["distinct"],
        "published": int(_get(st, "uns", "acked")),
        "received": int(sub_final.get("distinct", 0)),
        "lost_historian": read - db["distinct"],
        "lost_mqtt": read - int(sub_final.get("distinct", 0)),
        "dup_historian": db["rows"] - db["distinct"],
        "dup_mqtt": int(sub_final.get("duplicates", 0)),
        "ooo_historian": db["out_of_order"],
        "spool_records_at_end": spool_end,
        "spool_records_after_drain": int(
            _get(st, "uns", "spool_pending_records") + _get(st, "historian", "spool_pending_records")
        ),
        "spool_bytes_after_drain": int(_get(st, "uns", "spool_bytes") + _get(st, "historian", "spool_bytes")),
        "drained": drained,
        "rss_after_warmup_mb": round(base / 2**20, 1),
        "rss_at_end_mb": round(end / 2**20, 1),
        "rss_growth_pct": round((end - base) / base * 100, 2) if base else None,
        "rss_peak_mb": round(flow.rss_peak / 2**20, 1),
        "flow_crashes": len(flow.crashes),
        "drain_exit_code": code,
        "skipped_polls": int(_get(st, "skipped_polls")),
        "load_average_max": max((line["load"] for line in timeline), default=None),
        "timeline": timeline,
    }


COLUMNS = (
    ("read", "read"),
    ("stored", "stored"),
    ("published", "published"),
    ("received", "received"),
    ("lost_historian", "lost H"),
    ("lost_mqtt", "lost M"),
    ("dup_historian", "dup H"),
    ("dup_mqtt", "dup M"),
    ("ooo_historian", "ooo H"),
    ("ooo_mqtt_live", "ooo M live"),
    ("ooo_mqtt_replayed", "ooo M replay"),
    ("spool_peak_bytes", "spool peak B"),
    ("spool_dropped_records", "spool drops"),
    ("rss_warm_mb", "RSS warm MB"),
    ("rss_peak_mb", "RSS peak MB"),
    ("recovery_s", "recovery s"),
    ("drain_replayed_per_s", "replayed/s"),
    ("flow_crashes", "crashes"),
)


SOAK_RSS_GROWTH_MAX_PCT = 5.0
"""Issue 11, item 6: after warm-up, RSS grows less than this over the soak."""


def soak_verdict(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The soak's pass/fail criteria (issue 11, item 6): (criterion, measured, passed) per line."""
    growth = r["rss_growth_pct"]
    return [
        (
            f"RSS growth after warm-up < {SOAK_RSS_GROWTH_MAX_PCT:g} %",
            f"{growth:+.2f} % (median after warm-up {r['rss_after_warmup_mb']} MB, "
            f"last 2 min {r['rss_at_end_mb']} MB)"
            if growth is not None
            else "no RSS samples",
            growth is not None and growth < SOAK_RSS_GROWTH_MAX_PCT,
        ),
        (
            "spool empty at the end",
            f"backlog drained: {r['drained']}; after the flow's drain {r['spool_records_after_drain']} "
            f"records, {r['spool_bytes_after_drain']:,} bytes",
            bool(r["drained"]) and r["spool_records_after_drain"] == 0 and r["spool_bytes_after_drain"] == 0,
        ),
        (
            "read = stored = received",
            f"{r['read']:,} = {r['stored']:,} = {r['received']:,}",
            r["read"] == r["stored"] == r["received"],
        ),
        ("no historian duplicates", f"{r['dup_historian']:,}", r["dup_historian"] == 0),
        ("the flow never exits by itself", f"{r['flow_crashes']} exits", r["flow_crashes"] == 0),
    ]


def table(results: dict[str, dict[str, Any]]) -> str:
    head = "| scenario | " + " | ".join(h for _k, h in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for name, r in results.items():
        cells = []
        for key, _h in COLUMNS:
            v = r.get(key)
            cells.append("—" if v is None else f"{v:,}" if isinstance(v, int) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--tags", type=int, default=100)
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, s")
    p.add_argument(
        "--qos",
        type=int,
        default=1,
        choices=(0, 1),
        help="UNS QoS (1: at least once, the issue's zero-loss target; 0 loses what a stopped broker held)",
    )
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}, soak"
    )
    p.add_argument("--outage", type=float, default=60.0, help="length of each outage, s")
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--settle", type=float, default=5.0, help="live running after the spools drained, s")
    p.add_argument("--recovery-timeout", type=float, default=600.0)
    p.add_argument("--spool-tmpfs-mb", type=int, default=16)
    p.add_argument("--snapshot-s", type=float, default=1.0, help="Bytewax recovery: snapshot interval, s")
    p.add_argument("--soak-minutes", type=float, default=30.0)
    p.add_argument("--soak-warmup", type=float, default=3.0, help="minutes before the RSS baseline")
    p.add_argument("--flap-every", type=float, default=300.0, help="soak: a broker flap every this many s")
    p.add_argument("--flap-down", type=float, default=15.0, help="soak: broker down this many s per flap")
    p.add_argument("--out", default="bench-results", help="folder for the JSON results")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    return p.parse_args(argv)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop like Ctrl-C, so every service started here is stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    load = Load(devices=args.devices, tags=args.tags, poll_interval_s=args.interval, qos=args.qos)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = set(names) - {*SCENARIOS, "soak"}
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.chaos", *(sys.argv[1:] if argv is None else argv)]),
        "load": load.as_dict(),
        "points_per_s": load.points_per_s,
        "outage_s": args.outage,
        "scenarios": {},
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"chaos-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    with contextlib.ExitStack() as stack:
        if args.work:
            work = Path(args.work)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexus-chaos-")))
        rig = Rig(work, load, flap_tags=args.tags)
        _say(f"chaos: {load.points_per_s:,.0f} points/s, scenarios {', '.join(names)}")
        rig.start()
        try:
            for name in names:
                _say(f"scenario {name} ...")
                if name == "soak":
                    result["soak"] = run_soak(rig, args)
                    _say(json.dumps({k: v for k, v in result["soak"].items() if k != "timeline"}))
                else:
                    result["scenarios"][name] = run_scenario(rig, name, args)
                    _say(json.dumps({k: v for k, v in result["scenarios"][name].items() if k != "timeline"}))
                path.write_text(json.dumps(result, indent=2))  # what is done survives an interrupted run
        finally:
            rig.stop()
    path.write_text(json.dumps(result, indent=2))
    if result["scenarios"]:
        print(table(result["scenarios"]))
    failed = False
    if "soak" in result:
        print(json.dumps({k: v for k, v in result["soak"].items() if k != "timeline"}, indent=1))
        verdict = soak_verdict(result["soak"])
        print(f"\nsoak, {args.soak_minutes:g} min at {load.points_per_s:,.0f} points/s, QoS {args.qos}:")
        for criterion, measured, ok in verdict:
            print(f"  {'PASS' if ok else 'FAIL'}  {criterion}: {measured}")
        failed = not all(ok for _c, _m, ok in verdict)
        print(f"soak: {'FAIL' if failed else 'PASS'}")
    print(f"\nresults: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
