"""Historian: tags, raw points, aggregates, latest values, alerts, OEE, CSV export (``/api/v1/historian``)."""

from __future__ import annotations

from typing import Any


def route_handlers() -> list[Any]:
    from api.historian.controllers import HistorianController

    return [HistorianController]


def on_shutdown() -> list[Any]:
    from api.historian.controllers import close_historian

    return [close_historian]
