"""The shared vocabulary of the control plane: what the store hands the supervisor, what the planner
returns and what the supervisor reports. Plain frozen dataclasses, no I/O.

>>> Plan("hot", ("device press-01 changed",), {"press-01": {"id": "press-01"}}).kind
'hot'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from core.uns import CONFIG_TOPIC

DesiredState = Literal["running", "stopped"]
PlanKind = Literal["noop", "hot", "redeploy"]
RuntimeState = Literal["stopped", "starting", "running", "restarting", "stopping", "failed"]

__all__ = ["CONFIG_TOPIC"]  # re-exported: the topic is part of the vocabulary (core.uns)

#: Environment the supervisor gives each flow process (and that the flow reads).
ENV_FLOW_ID = "NEXUS_FLOW_ID"
ENV_FLOW_VERSION = "NEXUS_FLOW_VERSION"
ENV_SUPERVISOR_ID = "NEXUS_SUPERVISOR_ID"


@dataclass(frozen=True, slots=True)
class DesiredFlow:
    """One flow as the config store wants it: the deployed version's spec document and how to run it."""

    flow_id: str
    desired_state: DesiredState
    version: int | None
    spec: Mapping[str, Any] | None
    processes: int = 1


class DesiredStateSource(Protocol):
    """Where the supervisor reads what should run (the config store implements it)."""

    def desired_flows(self) -> list[DesiredFlow]: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """What a deploy must do to go from the running spec to a new one.

    ``hot``: ``device_patches`` maps each changed device id to its new device section (spec JSON);
    ``redeploy``: ``reasons`` says why (node added, window changed, device added, ...).
    """

    kind: PlanKind
    reasons: tuple[str, ...] = ()
    device_patches: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlowRuntime:
    """What the supervisor knows of one flow's processes."""

    flow_id: str
    state: RuntimeState
    version: int | None = None
    pids: tuple[int, ...] = ()
    restarts: int = 0
    last_error: tuple[str, ...] = ()
    since: datetime | None = None
