"""The telemetry dataflow, run by ``python -m bytewax.run "dataflows.telemetry:flow"``.

The spec comes from ``NEXUS_SPEC`` (default: the demo spec), the services from
``NEXUS_DATABASE_URL`` and ``NEXUS_MQTT_URL`` (default: the embedded ones that ``nexus demo``
or ``nexus services`` start). Another spec can be named in the import string:
``python -m bytewax.run "dataflows.telemetry:build('plant.yaml')"``.

Signals: SIGTERM and SIGUSR1 drain the flow (sources stop, sinks flush, exit 0); SIGINT aborts.

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
from core.settings import Settings
from dataflows.compiler import Runtime, compile_flow, writable_tags
from dataflows.hot import ENV_FLOW_ID, ConfigListener, start_version
from dataflows.spec import DEMO_SPEC, FlowSpec, load_spec
from dataflows.status import FlowStatus

log = logging.getLogger(__name__)


def build(spec_path: str | Path | None = None, settings: Settings | None = None) -> Dataflow:
    """Load and check the spec, then compile it against the configured services."""
    settings = settings or Settings.from_env()
    spec = load_spec(spec_path or settings.spec or DEMO_SPEC)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda *_: stop.set())
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
    )
    flow = compile_flow(spec, runtime)
    tune_interpreter()
    return flow


SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Process settings for a flow: the GIL is handed over every ``NEXUS_SWITCH_INTERVAL_S``
    (default 1 ms, Python's is 5 ms) so the shared poll loop, the sinks' network threads and the
    worker take turns quickly; and what start-up built (modules, the spec, clients) is frozen out
    of the garbage collector's full passes, which otherwise stall the flow for tens of ms.
    """
    sys.setswitchinterval(float(os.environ.get("NEXUS_SWITCH_INTERVAL_S") or SWITCH_INTERVAL_S))
    gc.collect()
    gc.freeze()


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
    router = CommandRouter(
        settings.effective_mqtt_url, tags, answer_unknown=first, answer_unowned=not cluster
    )
    try:
        router.start()
    except TimeoutError:
        log.warning("command router: broker not reachable yet; it keeps trying in the background")
    atexit.register(router.close)
    return router


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
