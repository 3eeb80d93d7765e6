"""The control plane's Prometheus metrics, on prometheus_client's default registry.

Defined once here; the supervisor and the deploy service import and update them, ``/metrics`` on the
API process exposes them (with the API's request latency histogram, ``nexus_api_request_duration_seconds``,
kept by Litestar's Prometheus middleware).

- ``nexus_flows{state}``: flows per runtime state — the supervisor calls :func:`set_flow_states` after
  each reconcile (every state is set, so a state that empties drops to 0).
- ``nexus_flow_restarts_total{flow}``: ``FLOW_RESTARTS.labels(flow=flow_id).inc()`` per crash restart.
- ``nexus_deploys_total{path}``: ``DEPLOYS.labels(path=plan.kind).inc()`` per deploy (hot, redeploy, noop,
  or start for a first start).

>>> set_flow_states({"a": "running", "b": "failed", "c": "running"})
{'stopped': 0, 'starting': 0, 'running': 2, 'restarting': 0, 'stopping': 0, 'failed': 1}
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Mapping
from typing import Any, get_args

from prometheus_client import Counter, Gauge

from control.types import FlowRuntime, RuntimeState

__all__ = ["DEPLOYS", "FLOWS", "FLOW_RESTARTS", "RUNTIME_STATES", "set_flow_states"]

RUNTIME_STATES: tuple[str, ...] = get_args(RuntimeState)

FLOWS = Gauge("nexus_flows", "Flows by runtime state (as the supervisor sees them)", ["state"])
FLOW_RESTARTS = Counter("nexus_flow_restarts", "Restarts of a flow's processes after a crash", ["flow"])
DEPLOYS = Counter("nexus_deploys", "Deploys by the path taken: hot, redeploy, noop, start", ["path"])


def set_flow_states(flows: Mapping[str, FlowRuntime | str | Any]) -> dict[str, int]:
    """Set ``nexus_flows{state}`` from the supervisor's view (``FlowRuntime`` or state names)."""
    tally = _Tally(f if isinstance(f, str) else f.state for f in flows.values())
    counts = {state: tally.get(state, 0) for state in RUNTIME_STATES}
    for state, n in counts.items():
        FLOWS.labels(state=state).set(n)
    return counts
