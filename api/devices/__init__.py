"""Devices and tags of a flow (views over its newest version), device test reads, OPC UA browse, tag writes."""

from __future__ import annotations

from typing import Any


def route_handlers() -> list[Any]:
    from api.devices.controllers import DevicesController, OpcUaController, TagsController

    return [DevicesController, TagsController, OpcUaController]
