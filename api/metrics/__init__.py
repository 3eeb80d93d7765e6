"""``/metrics``: Prometheus text of the API process (control.metrics plus request latency)."""

from __future__ import annotations

from typing import Any

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

import control.metrics  # noqa: F401 - registers the control plane's metrics

PROMETHEUS = PrometheusConfig(
    app_name="nexus",
    prefix="nexus_api",
    group_path=True,  # label by route template, not by concrete path (bounded cardinality)
    exclude=["^/metrics$"],
)


class MetricsController(PrometheusController):
    path = "/metrics"
    opt = {"permission": "metrics:read"}
    include_in_schema = False


def route_handlers() -> list[Any]:
    return [MetricsController]


def middleware() -> list[Any]:
    return [PROMETHEUS.middleware]
