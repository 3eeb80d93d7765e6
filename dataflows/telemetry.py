"""The telemetry dataflow, run by ``python -m bytewax.run "dataflows.telemetry:flow"``.

The spec comes from ``NEXUS_SPEC`` (default: the demo spec), the services from
``NEXUS_DATABASE_URL`` and ``NEXUS_MQTT_URL`` (default: the embedded ones that ``nexus demo``
or ``nexus services`` start). Another spec can be named in the import string:
``python -m bytewax.run "dataflows.telemetry:build('plant.yaml')"``.

Signals: SIGTERM and SIGUSR1 drain the flow (sources stop, sinks flush, exit 0); SIGINT aborts.
"""

from __future__ import annotations

import atexit
import signal
import threading
from pathlib import Path

from bytewax.dataflow import Dataflow

from core.settings import Settings
from dataflows.compiler import Runtime, compile_flow
from dataflows.spec import DEMO_SPEC, load_spec
from dataflows.status import FlowStatus


def build(spec_path: str | Path | None = None, settings: Settings | None = None) -> Dataflow:
    """Load and check the spec, then compile it against the configured services."""
    settings = settings or Settings.from_env()
    spec = load_spec(spec_path or settings.spec or DEMO_SPEC)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda *_: stop.set())
    status = FlowStatus(spec.id, settings.effective_mqtt_url)
    status.start()
    atexit.register(status.stop)
    runtime = Runtime(
        database_url=settings.effective_database_url,
        mqtt_url=settings.effective_mqtt_url,
        stop_event=stop,
        status=status,
    )
    return compile_flow(spec, runtime)


def __getattr__(name: str) -> Dataflow:
    # `flow` is built on first access, so importing this module has no side effects.
    if name == "flow":
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
