"""The telemetry dataflow, run by ``python -m bytewax.run "dataflows.telemetry:flow"``.

The spec comes from ``NEXUS_SPEC`` (default: the demo spec), the services from
``NEXUS_DATABASE_URL`` and ``NEXUS_MQTT_URL`` (default: the embedded ones that ``nexus demo``
or ``nexus services`` start). Another spec can be named in the import string:
``python -m bytewax.run "dataflows.telemetry:build('plant.yaml')"``.

Signals: SIGTERM, SIGUSR1 and a first SIGINT (Ctrl-C) drain the flow (sources stop, sinks flush,
exit 0); a SIGINT while a drain is under way (a second Ctrl-C, or the SIGINT step of a
supervisor's TERM -> INT -> KILL ladder) aborts at once with exit code 130: no flush, no final
snapshot (recovery resumes from the last one), and no Rust panic backtrace.

Hot config changes: the process's config listener (``dataflows.hot``) takes retained device
sections newer than ``NEXUS_FLOW_VERSION`` from ``$nexus/config/flows/{NEXUS_FLOW_ID or spec id}/#``.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from bytewax.dataflow import Dataflow

from connectors.commands import CommandRouter
from connectors.nap import wake_all
from core.logs import configure_logging
from core.memory import tune_malloc
from core.settings import Settings
from core.timerslack import relax_main_thread
from dataflows.compiler import Runtime, compile_flow, writable_tags
from dataflows.hot import ENV_FLOW_ID, ConfigListener, start_version
from dataflows.spec import DEMO_SPEC, FlowSpec, SpecError, load_spec
from dataflows.status import FlowStatus
from dataflows.warm import warm_kernels

log = logging.getLogger(__name__)


def build(spec_path: str | Path | None = None, settings: Settings | None = None) -> Dataflow:
    """Load and check the spec, then compile it against the configured services."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)  # bytewax.run configures none
    spec = _load_spec_or_exit(spec_path or settings.spec or DEMO_SPEC)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_handlers(stop)
    version = start_version()
    status = FlowStatus(spec.id, settings.effective_mqtt_url, version=version)
    status.start()
    atexit.register(status.stop)
    router = _command_router(spec, settings)
    runtime = Runtime(
        database_url=settings.effective_database_url,
        mqtt_url=settings.effective_mqtt_url,
        stop_event=stop,
        status=status,
        write_registry=router,
        config_registry=_config_listener(spec, settings, version, status, router),
        version=version,
        spool_dir=settings.effective_spool_dir,
    )
    flow = compile_flow(spec, runtime)
    tune_interpreter()
    return flow


def _wake_naps() -> None:
    """Wake the napping workers (:mod:`connectors.nap`) so the drain starts now, not at a nap's cap.
    From another thread: the handler runs on the main thread, which may hold a nap's lock."""
    threading.Thread(target=wake_all, name="stop-wake", daemon=True).start()


ABORT_EXIT_CODE = 130
"""Exit code of an abort (a SIGINT during a drain), as a shell reports a process ended by Ctrl-C."""


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGUSR1 drain; SIGINT drains the first time and aborts when a drain is under way.

    Bytewax's own SIGINT handling raises inside the Rust runtime, which prints a panic backtrace
    and a Python traceback and exits 1; the handlers here make Ctrl-C behave as a person expects.
    The abort is ``os._exit``: the broker then publishes the flow's last will (``offline``).
    """

    def drain(signum: int, _frame: object) -> None:
        if not stop.is_set():
            log.info("stopping: draining the flow (%s)", signal.Signals(signum).name)
        stop.set()
        _wake_naps()

    def interrupt(_signum: int, _frame: object) -> None:
        if not stop.is_set():
            stop.set()
            _wake_naps()
            log.warning("stopping: draining the flow (sources stop, sinks flush); Ctrl-C again aborts")
            return
        sys.stderr.write("aborted: the flow was stopped without flushing (second Ctrl-C / SIGINT)\n")
        sys.stderr.flush()
        os._exit(ABORT_EXIT_CODE)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, drain)
    signal.signal(signal.SIGINT, interrupt)


SWITCH_INTERVAL_S = 0.001
GC_FREEZE_AFTER_S = 5.0


def tune_interpreter() -> None:
    """Process settings for a flow, before its workers start: the compiled kernels are made ready
    (:func:`dataflows.warm.warm_kernels`: compiled or loaded from numba's cache now, not on the worker
    thread while devices are polled); the GIL is handed over every ``NEXUS_SWITCH_INTERVAL_S``
    (default 1 ms, Python's is 5 ms) so the shared poll loop, the sinks' network threads and the
    worker take turns quickly; the C allocator gives large buffers back to the system
    (:func:`core.memory.tune_malloc`); and the heap is frozen out of the garbage collector's passes
    twice: what start-up built (modules, the spec) now, and ``NEXUS_GC_FREEZE_AFTER_S`` (default
    5 s; 0: never) later what the running flow built once (device clients and their read plans, tag
    metadata, metrics, the operators' compiled kernels) — :func:`freeze_heap`.

    Why the second freeze: a full collection walks every tracked object that is not frozen, and
    stops every thread meanwhile. Measured in the e2e flow at 100 devices x 100 tags every 100 ms
    (BENCHMARKS.md, "GC pauses"): ~134,000 such objects, all built after the first freeze, walked by a
    full collection every ~10 s for 27-83 ms (145-227 ms on a loaded box) — longer than a poll slot,
    so the process's devices skipped polls — and not one object freed by any collection: the flow
    makes no garbage cycles in its steady state, its objects die by reference counting.

    Last, the main thread of a cluster process, which from now on only waits for its workers, wakes
    ~20 times a second instead of ~1,000 (:func:`core.timerslack.relax_main_thread`).
    """
    warm_kernels()
    tune_malloc()
    sys.setswitchinterval(_env_seconds("NEXUS_SWITCH_INTERVAL_S", SWITCH_INTERVAL_S))
    freeze_heap()
    after = _env_seconds("NEXUS_GC_FREEZE_AFTER_S", GC_FREEZE_AFTER_S)
    if after > 0:
        timer = threading.Timer(after, freeze_heap)
        timer.name = "gc-freeze"
        timer.daemon = True
        timer.start()
    relax_main_thread()  # last: threads the main thread starts from now on inherit its timer slack


def freeze_heap() -> None:
    """Collect once, then move every object alive now out of the collector's passes (``gc.freeze``).

    Frozen objects are still freed by reference counting; only a cycle among them that becomes
    garbage later stays (the flow makes none in its steady state). Later collections walk only what
    was built since, so a full collection takes about as long as a young one.
    """
    gc.collect()
    gc.freeze()


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


def _command_router(spec: FlowSpec, settings: Settings) -> CommandRouter | None:
    """This process's router for ``$nexus/cmd/{device}/{tag}/set``, when the spec has writable tags.

    In a cluster (``BYTEWAX_ADDRESSES`` set) every process hears every command: each answers for
    the devices it polls, and process 0 alone answers for devices the spec does not know.
    """
    tags = writable_tags(spec)
    if not any(t.writable for t in tags.values()):
        return None
    cluster = bool(os.environ.get("BYTEWAX_ADDRESSES"))
    first = os.environ.get("BYTEWAX_PROCESS_ID", "0") in ("", "0")
    signed = spec.commands.require_signature
    if signed and not settings.command_key:
        log.error(
            "command router: the flow requires signed commands but NEXUS_COMMAND_KEY is not set;"
            " every write command will be refused"
        )
    elif not signed:
        log.warning("command router: signatures are turned off (commands.require_signature: false)")
    router = CommandRouter(
        settings.effective_mqtt_url,
        tags,
        answer_unknown=first,
        answer_unowned=not cluster,
        command_key=settings.command_key.encode() if settings.command_key else None,
        require_signature=signed,
    )
    try:
        router.start()
    except TimeoutError:
        log.warning("command router: broker not reachable yet; it keeps trying in the background")
    atexit.register(router.close)
    return router


def _load_spec_or_exit(path: str | Path) -> FlowSpec:
    """:func:`load_spec`; under ``python -m bytewax.run`` an invalid spec prints its field errors
    only (bytewax.run would print a Python traceback before them) and exits with status 2."""
    try:
        return load_spec(path)
    except SpecError as exc:
        if not _run_by_bytewax():
            raise
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None


def _run_by_bytewax() -> bool:
    """Whether this process is ``python -m bytewax.run`` (its ``__main__``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) == "bytewax.run"


def _config_listener(
    spec: FlowSpec, settings: Settings, version: int, status: FlowStatus, router: CommandRouter | None
) -> ConfigListener:
    """This process's listener of hot config changes (every process hears every device's; each
    hands them to the partitions it owns)."""
    listener = ConfigListener(
        settings.effective_mqtt_url,
        spec,
        flow_id=os.environ.get(ENV_FLOW_ID, "").strip() or spec.id,
        version=version,
        status=status,
        router=router,
    )
    try:
        listener.start()
    except TimeoutError:
        log.warning("config listener: broker not reachable yet; it keeps trying in the background")
    atexit.register(listener.close)
    return listener


def __getattr__(name: str) -> Dataflow:
    # `flow` is built on first access, so importing this module has no side effects.
    if name == "flow":
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
