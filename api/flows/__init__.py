"""Flows: specs, versions, deploys."""

from __future__ import annotations

from typing import Any


def route_handlers() -> list[Any]:
    from api.flows.controllers import FlowsController, FlowSpecController

    return [FlowSpecController, FlowsController]
