"""``nexus up``: the whole platform on one box — database, broker, API, supervisor and its flows.

``nexus up`` starts the configured (or embedded) PostgreSQL and broker, migrates the config store,
serves the API with uvicorn on ``NEXUS_API_HOST:NEXUS_API_PORT`` and runs the supervisor, which starts
every flow whose desired state is ``running``. ``--simulate`` also serves the simulated devices of
the deployed specs (and follows new deploys). ``nexus demo`` is ``nexus up --simulate`` that imports
and deploys the demo flow on first start. Ctrl-C (or SIGTERM) stops the API, drains the flows, stops
the simulators, the broker and the database, in that order.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from control.supervisor import Supervisor
from control.types import DesiredFlow
from core.settings import Settings
from nexus.demo import Progress, Simulator, describe, services, simulators_for

log = logging.getLogger(__name__)

SIM_SYNC_S = 2.0
"""How often ``--simulate`` looks for newly deployed devices to serve."""

_SIM_TAG_FIELDS = frozenset(
    {"name", "table", "address", "data_type", "length", "bit", "byte_order", "word_order", "node_id"}
    | {"simulate", "access"}
)


def simulation_key(spec: Mapping[str, Any]) -> str:
    """What the simulators of a spec serve: devices, connections and the tags' addresses and signals.

    A change the simulators do not see (a tag's scale, a deadband, an operator) keeps the key, so a
    hot reload never restarts a simulator (and never forces a device reconnect).

    >>> a = {"devices": [{"id": "d", "connection": {"port": 1}, "tags": [{"name": "t", "scale": 1}]}]}
    >>> b = {"devices": [{"id": "d", "connection": {"port": 1}, "tags": [{"name": "t", "scale": 2}]}]}
    >>> simulation_key(a) == simulation_key(b)
    True
    """
    devices = []
    for device in spec.get("devices") or []:
        tags = [{k: v for k, v in t.items() if k in _SIM_TAG_FIELDS} for t in device.get("tags") or []]
        devices.append(
            {
                "id": device.get("id"),
                "protocol": device.get("protocol", "modbus"),
                "connection": device.get("connection"),
                "tags": tags,
            }
        )
    return json.dumps(devices, sort_keys=True, default=str)


class SimulatorPool:
    """The simulators of the deployed specs, one set per flow, restarted only when what they serve changes."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[str, list[Simulator]]] = {}
        self._lock = threading.Lock()

    def sync(self, desired: Iterable[DesiredFlow]) -> None:
        from dataflows.spec import SpecError, parse_spec

        want: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for flow in desired:
            if flow.spec is not None:
                want[flow.flow_id] = (simulation_key(flow.spec), flow.spec)
        with self._lock:
            for flow_id in list(self._running):
                if flow_id not in want or want[flow_id][0] != self._running[flow_id][0]:
                    self._stop(flow_id)
            for flow_id, (key, doc) in want.items():
                if flow_id in self._running:
                    continue
                try:
                    sims = simulators_for(parse_spec(doc))
                except SpecError as exc:
                    log.warning("simulate: flow %s: spec not servable: %s", flow_id, exc)
                    continue
                started: list[Simulator] = []
                for sim in sims:
                    try:
                        sim.start()
                    except Exception as exc:  # a port taken by another flow's simulator or program
                        log.warning("simulate: flow %s: %s not started: %s", flow_id, describe(sim), exc)
                        continue
                    started.append(sim)
                    print(f"simulating {describe(sim)}  (flow {flow_id})", flush=True)
                self._running[flow_id] = (key, started)

    def _stop(self, flow_id: str) -> None:
        _, sims = self._running.pop(flow_id)
        for sim in sims:
            try:
                sim.stop()
            except Exception:
                log.exception("simulate: stopping %s", describe(sim))

    def stop(self) -> None:
        with self._lock:
            for flow_id in list(self._running):
                self._stop(flow_id)


def ensure_flow(store: Any, spec_path: Path, *, author: str = "nexus demo") -> str | None:
    """Import ``spec_path`` as a flow and deploy it, unless a flow with its id exists already.

    Returns the flow id when it was imported now, ``None`` when it was there before (a second
    ``nexus demo`` keeps the user's edits).
    """
    from control import service
    from control.errors import NotFoundError
    from dataflows.spec import load_spec

    spec = load_spec(spec_path)  # refuse a bad spec before anything starts
    try:
        store.get_flow(spec.id)
        return None
    except NotFoundError:
        pass
    text = spec_path.read_text(encoding="utf-8")
    service.import_text(store, text, author=author, source=spec_path.name)  # kept byte for byte
    service.deploy(store, spec.id)
    return spec.id


def _live_status(mqtt_url: str) -> Any:
    """The API's live status subscriber (flow states, alerts, watched tag values for ``/api/v1/ws``)."""
    from control.live import LiveStatus

    status = LiveStatus(mqtt_url)
    status.start()
    return status


def redact_dsn(url: str) -> str:
    """A database URL or conninfo without its password, for printing.

    >>> redact_dsn("postgresql://nexus:secret@db:5432/nexus")
    'postgresql://nexus:***@db:5432/nexus'
    >>> redact_dsn("host=db user=u password=secret dbname=n")
    'host=db user=u password=*** dbname=n'
    """
    import re

    url = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password=)\S+", r"\1***", url)


def _banner(api_url: str, db_url: str, mqtt_url: str, demo_spec: Any | None) -> str:
    from connectors.mqtt.url import parse_mqtt_url

    url = parse_mqtt_url(mqtt_url)
    auth = f" -u {url.username} -P '***'" if url.username else ""
    lines = [
        "",
        f"NEXUS Edge is up{' (demo)' if demo_spec is not None else ''}",
        f"  API       {api_url}   (OpenAPI document: {api_url}/schema)",
        f"  flows     curl {api_url}/api/v1/flows",
        f"  database  {redact_dsn(db_url)}",
        f"  broker    {url.redacted()}",
    ]
    if demo_spec is not None:
        enterprise = demo_spec.devices[0].location.enterprise
        lines += [
            "Look at the data:",
            f"  mosquitto_sub -h {url.host} -p {url.port}{auth} -t '{enterprise}/#' -v",
            f"  psql '{redact_dsn(db_url)}' -c \"SELECT p.time, t.uns_path, p.value, p.quality FROM nexus_points p"
            ' JOIN nexus_tags t USING (tag_id) ORDER BY p.time DESC LIMIT 20"',
            f"Flow status: curl {api_url}/api/v1/flows/{demo_spec.id}/status",
        ]
    lines += ["Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


def _progress_loop(progress: Progress, done: threading.Event) -> None:
    """The demo's line a second: points read, messages published, rows stored (rates and totals)."""
    import time

    started = time.monotonic()
    last = (0, 0, 0)
    while not done.wait(1.0):
        progress.poll_db()
        now = (progress.read, progress.published, progress.stored)
        rates = [b - a for a, b in zip(last, now, strict=True)]
        last = now
        print(
            f"  {time.monotonic() - started:6.0f}s  read {rates[0]:6d} pts/s ({now[0]})"
            f"  published {rates[1]:6d} msg/s ({now[1]})  stored {rates[2]:6d} rows/s ({now[2]})",
            flush=True,
        )


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_up(
    settings: Settings,
    *,
    simulate: bool = False,
    import_spec: Path | None = None,
    duration_s: float | None = None,
) -> int:
    """Run the platform until Ctrl-C / SIGTERM (or ``duration_s``); returns the exit code."""
    import uvicorn

    from api.app import create_app
    from control.store import ConfigStore
    from dataflows.spec import load_spec
    from nexus.users_cli import ensure_admin

    demo_spec = load_spec(import_spec) if import_spec is not None else None  # refused before anything starts
    with services(settings) as (db_url, mqtt_url):
        store = ConfigStore(db_url)
        store.migrate()
        ensure_admin(store, settings)
        if import_spec is not None and ensure_flow(store, import_spec):
            print(f"imported and deployed {import_spec}", flush=True)
        pool = SimulatorPool() if simulate else None
        if pool is not None:
            pool.sync(store.desired_flows())
        supervisor = Supervisor(
            store,
            settings,
            data_dir=settings.data_dir,
            mqtt_url=mqtt_url,
            database_url=db_url,
            snapshot_interval_s=settings.snapshot_interval_s,
        )
        live = _live_status(mqtt_url)
        app = create_app(settings, store=store, supervisor=supervisor, live=live)
        config = uvicorn.Config(
            app, host=settings.api_host, port=settings.api_port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        done = threading.Event()

        def follow_deploys() -> None:
            while not done.wait(SIM_SYNC_S):
                try:
                    assert pool is not None
                    pool.sync(store.desired_flows())
                except Exception as exc:
                    log.warning("simulate: cannot follow the deployed specs: %s", exc)

        def stop_after() -> None:
            if duration_s is not None and not done.wait(duration_s):
                server.should_exit = True

        threads = [threading.Thread(target=stop_after, daemon=True)]
        if pool is not None:
            threads.append(threading.Thread(target=follow_deploys, name="nexus-simulate", daemon=True))
        progress = Progress(demo_spec, mqtt_url, db_url) if demo_spec is not None else None
        if progress is not None:
            threads.append(threading.Thread(target=_progress_loop, args=(progress, done), daemon=True))
        supervisor.start()
        for t in threads:
            t.start()
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        print(_banner(api_url, db_url, mqtt_url, demo_spec), flush=True)
        code = 0
        # SIGTERM (containers, service managers) stops as cleanly as Ctrl-C: uvicorn re-raises the
        # signal after its shutdown, and this handler turns it into the same path
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.run()  # returns on SIGINT / SIGTERM (uvicorn re-raises the signal afterwards)
            if not server.started:
                print(f"the API could not start on {settings.api_host}:{settings.api_port}", flush=True)
                code = 1
        except KeyboardInterrupt:
            pass
        finally:
            # a second Ctrl-C must not cut the drain short and leave flows behind
            previous = signal.signal(signal.SIGINT, lambda *_: print("still stopping ...", flush=True))
            print("\nstopping: draining flows ...", flush=True)
            done.set()
            if progress is not None:
                progress.close()
            supervisor.stop()
            if pool is not None:
                pool.stop()
            live.stop()
            store.close()
            signal.signal(signal.SIGINT, previous)
        print("stopped: API, flows, simulators, broker and database", flush=True)
        return code
