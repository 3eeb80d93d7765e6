"""Dataflows the harness runs with ``python -m bytewax.run``; each process reports its counters.

- ``bench.flow:flow`` — the telemetry flow compiled from ``NEXUS_SPEC`` (the project's compiler, Modbus
  source and sinks), with the sinks wrapped to count what they are handed;
- ``bench.flow:source_only`` — the spec's device source straight into a counting sink (no operators,
  database or broker): what polling alone sustains (the ``ramp`` stage with ``--ramp-flow source``);
- ``bench.flow:synthetic`` — device polls from memory through the micro-benchmark's operator chain
  into a counting sink (the multi-process scale-out stage); ``NEXUS_BENCH_SYNTH`` holds its load and
  ``routing``: ``local`` (default: each worker polls the devices whose state it holds, as compiled
  flows do) or ``bytewax`` (Bytewax places the partitions: the layout before device-local routing).

Sinks spool to ``NEXUS_SPOOL_DIR`` (default ``{NEXUS_DATA_DIR}/spool``), bounded by
``NEXUS_BENCH_SPOOL_MAX_BYTES`` per sink (default 1 GiB).
Every process writes its counters as JSON to ``$NEXUS_BENCH_STATS/flow-<pid>.json`` twice a second.
``NEXUS_BENCH_PROBE`` (a path prefix) times the worker's main calls (:mod:`bench.call_probe`).
``NEXUS_BENCH_SWITCH_INTERVAL`` (seconds) sets the interpreter's GIL switch interval (an experiment knob;
default: Python's 5 ms).
SIGTERM / SIGUSR1 drain the telemetry flow (sources stop, sinks flush, exit 0).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from bench import call_probe
from bench.chain import Chain, CountingSink, SyntheticSource
from bench.load import Load
from connectors.devices import DeviceSource
from connectors.historian.config import HistorianConfig
from connectors.historian.sink import HistorianSink
from connectors.mqtt.config import MqttSinkConfig
from connectors.mqtt.sink import UnsSink
from core.memory import malloc_stats
from core.settings import Settings
from core.threads import name_os_threads
from dataflows.compiler import Runtime, compile_flow, device_plans, part_device
from dataflows.routing import WorkerLocalSource, worker_local_input
from dataflows.spec import HistorianNode, MqttUnsNode, load_spec
from dataflows.telemetry import tune_interpreter


class _GcPauses:
    """Garbage-collector pauses of this process (all threads stop while one runs), by generation.

    ``stats``: count, total and longest pause per generation by the wall clock, the same in CPU time
    of the collecting thread (``cpu``), and what the collections freed (``gen{g}_collected``: objects
    in unreachable cycles); ``recent``: the last ``RECENT`` pauses of ``LONG_MS`` or more as
    ``[unix time, generation, wall ms, collected, cpu ms]``, so a harness can take the longest pause
    of its own measuring window. The wall figure can be longer than the collection: the callbacks are
    Python code, so the thread may wait for the GIL (or the OS) right after the start time is taken
    and before the stop time is; the CPU figure is the collection's own cost.
    """

    RECENT = 256
    LONG_MS = 10.0

    def __init__(self) -> None:
        keys = ("count", "total_ms", "max_ms", "cpu_total_ms", "cpu_max_ms", "collected")
        self.stats = {f"gen{g}_{k}": 0.0 for g in range(3) for k in keys}
        self.recent: deque[list[float]] = deque(maxlen=self.RECENT)
        self._t0 = self._c0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0, self._c0 = time.perf_counter(), time.thread_time()
            return
        cpu = (time.thread_time() - self._c0) * 1000
        ms = (time.perf_counter() - self._t0) * 1000
        g = info.get("generation", 0)
        self.stats[f"gen{g}_count"] += 1
        self.stats[f"gen{g}_total_ms"] += ms
        self.stats[f"gen{g}_max_ms"] = max(self.stats[f"gen{g}_max_ms"], ms)
        self.stats[f"gen{g}_cpu_total_ms"] += cpu
        self.stats[f"gen{g}_cpu_max_ms"] = max(self.stats[f"gen{g}_cpu_max_ms"], cpu)
        self.stats[f"gen{g}_collected"] += info.get("collected", 0)
        if ms >= self.LONG_MS or cpu >= self.LONG_MS / 2:
            self.recent.append([time.time(), g, round(ms, 1), info.get("collected", 0), round(cpu, 2)])


def _gc_census(after_s: float, into: dict[str, Any]) -> None:
    """After ``after_s``, count the objects a full collection walks (every tracked object that is
    not frozen) by type, once, into ``into`` (``NEXUS_BENCH_GC_CENSUS``: a diagnostic; the count
    holds the GIL for a moment, so it is off in measured runs)."""

    def run() -> None:
        time.sleep(after_s)
        objects = gc.get_objects()
        by_type = Counter(type(o).__qualname__ for o in objects)
        into.update(
            {
                "tracked": len(objects),
                "frozen": gc.get_freeze_count(),
                "by_generation": [len(gc.get_objects(g)) for g in range(3)],
                "top": by_type.most_common(40),
            }
        )
        del objects

    threading.Thread(target=run, name="bench-gc-census", daemon=True).start()


def _switch_interval() -> None:
    tune_interpreter()  # what dataflows.telemetry does for a production flow
    if os.environ.get("NEXUS_BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["NEXUS_BENCH_SWITCH_INTERVAL"]))


class _Reporter:
    """Writes ``collect()`` to the stats folder every ``interval_s`` (atomically) until closed.

    The ticking thread and :meth:`close` (at exit) may write at the same moment: each write goes
    to its own temporary file and is renamed over the report under a lock, and nothing is written
    after the final report. (Both used to share one ``.tmp`` file, which could interleave into
    invalid JSON: ``Extra data``.)
    """

    def __init__(self, collect: Callable[[], dict[str, Any]], interval_s: float | None = None) -> None:
        folder = Path(os.environ.get("NEXUS_BENCH_STATS", ".")).absolute()
        if interval_s is None:
            interval_s = float(os.environ.get("NEXUS_BENCH_REPORT_S") or 0.5)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"flow-{os.getpid()}.json"
        self.collect = collect
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._final = False
        self._thread = threading.Thread(target=self._run, name="bench-reporter", daemon=True)
        self._thread.start()

    def write(self, final: bool = False) -> None:
        name_os_threads()  # the cost stage's per-thread figures then name their threads
        data = {"pid": os.getpid(), "time": time.time(), "final": final, **self.collect()}
        text = json.dumps(data)
        with self._lock:
            if self._final:
                return
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
            self._final = final

    def close(self) -> None:
        """Stop ticking and write the final report (idempotent)."""
        self.stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        self.write(final=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.write()
            except Exception:  # the report is best effort; the next tick tries again
                continue


class _Counted(DynamicSink[Any]):
    """Delegates to the real sink; counts points handed to it and keeps its partitions for their stats."""

    def __init__(self, inner: DynamicSink[Any]) -> None:
        self.inner = inner
        self.parts: list[Any] = []
        self.points = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountedPart:
        part = self.inner.build(step_id, worker_index, worker_count)
        self.parts.append(part)
        return _CountedPart(self, part)


class _CountedPart(StatelessSinkPartition[Any]):
    def __init__(self, owner: _Counted, inner: Any) -> None:
        self.owner = owner
        self.inner = inner

    def write_batch(self, items: list[Any]) -> None:
        self.inner.write_batch(items)
        self.owner.points += sum(len(b) for b in items)

    def close(self) -> None:
        self.inner.close()


def build() -> Dataflow:
    settings = Settings.from_env()
    spec = load_spec(os.environ["NEXUS_SPEC"])
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda *_: stop.set())
    source = DeviceSource(device_plans(spec), stop_event=stop)
    tags = spec.tag_infos()
    sinks: dict[str, _Counted] = {}
    spool = settings.effective_spool_dir / spec.id
    spool_max = int(os.environ.get("NEXUS_BENCH_SPOOL_MAX_BYTES", str(1 << 30)))
    for node in spec.sinks:
        if isinstance(node, MqttUnsNode):
            cfg = MqttSinkConfig(
                url=settings.effective_mqtt_url,
                qos=node.qos,
                retain=node.retain,
                spool_dir=str(spool / node.id),
                spool_max_bytes=spool_max,
            )
            sinks[node.id] = _Counted(UnsSink(cfg, tags))
        elif isinstance(node, HistorianNode):
            hcfg = HistorianConfig(
                url=settings.effective_database_url,
                batch_rows=node.batch_rows,
                max_delay_s=node.max_delay_s,
                spool_sync_interval_s=node.spool_sync_interval_s,
                spool_dir=str(spool / node.id),
                spool_max_bytes=spool_max,
            )
            sinks[node.id] = _Counted(HistorianSink(hcfg, tags))
    tags_per_device = {d.id: len(d.tags) for d in spec.devices}

    def collect() -> dict[str, Any]:
        parts = source.stats()
        out: dict[str, Any] = {
            "devices": len(parts),
            "polls": sum(p.polls for p in parts.values()),
            "completed": sum(p.completed for p in parts.values()),
            "skipped_polls": sum(p.skipped_polls for p in parts.values()),
            "failures": sum(p.failures for p in parts.values()),
            "points_read": sum(p.completed * tags_per_device[d] for d, p in parts.items()),
        }
        for node_id, sink in sinks.items():
            entry: dict[str, Any] = {"points_in": sink.points}
            for part in sink.parts:
                inner = getattr(part, "publisher", None) or getattr(part, "writer", None)
                if inner is not None:
                    for k, v in inner.stats().items():
                        if isinstance(v, int | float) and not isinstance(v, bool):
                            entry[k] = entry.get(k, 0) + v
            out[node_id] = entry
        return out

    pauses = _GcPauses()
    # the soak's heap figures; off in cost runs: mallinfo2 and the allocated-blocks count walk every
    # arena at every report (harness CPU in the measured process, the same in every flow)
    census_heap = os.environ.get("NEXUS_BENCH_MALLOC", "1") != "0"
    census: dict[str, Any] = {}
    if os.environ.get("NEXUS_BENCH_GC_CENSUS"):
        _gc_census(float(os.environ["NEXUS_BENCH_GC_CENSUS"]), census)

    def collect_all() -> dict[str, Any]:
        return {
            **collect(),
            "gc": dict(pauses.stats),
            "gc_pauses": list(pauses.recent),
            "gc_census": census,
            "malloc": malloc_stats() if census_heap else {},
        }

    reporter = _Reporter(collect_all)
    import atexit

    atexit.register(reporter.close)
    runtime = Runtime(
        database_url=settings.effective_database_url,
        mqtt_url=settings.effective_mqtt_url,
        # the production path: each worker polls the devices it routes to, one ready queue per worker
        source=WorkerLocalSource(source, part_device, sole_input=True),  # (the bench specs poll only)
        sinks=sinks,
        stop_event=stop,
    )
    flow = compile_flow(spec, runtime)
    if os.environ.get("NEXUS_BENCH_PROBE"):  # a diagnostic: the worker's CPU per call (bench.call_probe)
        extra = call_probe.parse_targets(os.environ.get("NEXUS_BENCH_PROBE_EXTRA", ""))
        call_probe.install(os.environ["NEXUS_BENCH_PROBE"], call_probe.TARGETS + extra)
    _switch_interval()  # last, as dataflows.telemetry does (the main thread's timer slack)
    return flow


def _device_source(spec: Any) -> tuple[DeviceSource, Callable[[], dict[str, Any]]]:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda *_: stop.set())
    source = DeviceSource(device_plans(spec), stop_event=stop)
    tags_per_device = {d.id: len(d.tags) for d in spec.devices}

    def collect() -> dict[str, Any]:
        parts = source.stats()
        return {
            "devices": len(parts),
            "polls": sum(p.polls for p in parts.values()),
            "completed": sum(p.completed for p in parts.values()),
            "skipped_polls": sum(p.skipped_polls for p in parts.values()),
            "failures": sum(p.failures for p in parts.values()),
            "points_read": sum(p.completed * tags_per_device[d] for d, p in parts.items()),
        }

    return source, collect


def build_source_only() -> Dataflow:
    spec = load_spec(os.environ["NEXUS_SPEC"])
    source, collect_source = _device_source(spec)
    sink = CountingSink()

    pauses = _GcPauses()

    def collect() -> dict[str, Any]:
        return {
            **collect_source(),
            "sink": dict(sink.counts),
            "gc": dict(pauses.stats),
            "gc_pauses": list(pauses.recent),
        }

    reporter = _Reporter(collect)
    import atexit

    atexit.register(reporter.close)
    flow = Dataflow("bench_source_only")
    op.output("count", op.input("devices", flow, source), sink)
    _switch_interval()
    return flow


def _load_kernels(load: Load) -> None:
    """Run a throw-away chain over a few polls of two devices before the flow starts.

    The operators' first call in a process loads (or compiles) their numba kernels: ~0.9 s measured,
    once per process. A running flow pays it at start-up; the cluster stage measures throughput from
    the first poll, where that fixed cost would land in every variant's time alike and pull every
    ratio towards 1.
    """
    two = Load(devices=2, tags=load.tags, change_rate=load.change_rate)
    Chain.for_load(two).run_cores(two.batches(polls=4, ts0_ns=time.time_ns() - 10**11))


def build_synthetic() -> Dataflow:
    cfg = json.loads(os.environ["NEXUS_BENCH_SYNTH"])
    load = Load(**cfg["load"])
    _load_kernels(load)
    chain = Chain.for_load(load)
    sink = CountingSink()
    synthetic = SyntheticSource(load, polls=int(cfg["polls"]), ts0_ns=int(cfg["ts0_ns"]))
    local = cfg.get("routing", "local") == "local"  # as the compiler does; "bytewax": Bytewax places them

    def collect() -> dict[str, Any]:
        cpu = (
            None
            if sink.last_cpu is None or synthetic.started_cpu is None
            else sink.last_cpu - synthetic.started_cpu
        )
        return {
            **sink.counts,
            "started": synthetic.started,
            "first": sink.first,
            "last": sink.last,
            "cpu_s": cpu,
        }

    reporter = _Reporter(collect)
    import atexit

    atexit.register(reporter.close)
    flow = Dataflow("bench_synthetic")
    if local:
        batches = worker_local_input("devices", flow, WorkerLocalSource(synthetic, str))
    else:
        batches = op.input("devices", flow, synthetic)
    chain.build_flow(flow, batches, sink)
    return flow


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return build()
    if name == "synthetic":
        return build_synthetic()
    if name == "source_only":
        return build_source_only()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
