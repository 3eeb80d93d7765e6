"""Grafana dashboards generated from the flows' tag model.

Two dashboards over the historian's tables (``nexus_tags``, ``nexus_latest``, ``nexus_points``,
``nexus_agg_{window}``, ``nexus_alerts``, ``nexus_oee``):

- **plant overview** (``nexus-overview``): one row per site / area / line of the specs with the latest
  value of every tag there, the alerts, OEE per machine and shift (machines from the specs), and the
  data quality (share of bad points per device);
- **tag trends** (``nexus-trends``): one time series per aggregate window of the specs
  (``nexus_agg_10s``, ``nexus_agg_1m``, ...) grouped with ``$__timeGroupAlias``, and the range's
  statistics per tag.

Variables ``site``, ``line``, ``device`` and ``tag`` (multi-value, "All" by default) are read from
``nexus_tags``, so a device added later shows up without regenerating; the rows per line, the windows
and the machines come from the specs (``nexus grafana export`` regenerates them).

>>> spec = {"version": 1, "id": "f", "devices": [{"id": "d", "connection": {"host": "127.0.0.1"},
...     "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l1"},
...     "tags": [{"name": "t", "table": "holding", "address": 0}]}], "operators": [{"id": "w", "type": "window", "windows": ["1m"]}]}
>>> from dataflows.spec import parse_spec
>>> model = TagModel.of([parse_spec(spec)])
>>> model.lines[0].prefix, model.windows
('e/s/a/l1/', ('1m',))
>>> sorted(d["uid"] for d in dashboards(model))
['nexus-overview', 'nexus-trends']
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from connectors.historian.derived import agg_table
from core.uns import topic_level
from dataflows.spec import FlowSpec, OeeNode, WindowNode
from operators.window import parse_window

DATASOURCE_UID = "nexus-historian"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": DATASOURCE_UID}
BAD_QUALITY = 128
"""Quality codes from 128 up are bad (``core.quality``)."""

Format = Literal["time_series", "table"]


def sql_literal(text: str) -> str:
    """A SQL string literal (quotes doubled).

    >>> sql_literal("it's")
    "'it''s'"
    """
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Line:
    """One ISA-95 line of the specs, as the UNS spells its levels, with its devices."""

    enterprise: str
    site: str
    area: str
    line: str
    devices: tuple[str, ...]

    @property
    def prefix(self) -> str:
        """The start of every ``uns_path`` of the line's tags."""
        return f"{self.enterprise}/{self.site}/{self.area}/{self.line}/"

    @property
    def title(self) -> str:
        return f"{self.site} / {self.area} / {self.line}"


@dataclass(frozen=True)
class TagModel:
    """What the dashboards are generated from: lines, aggregate windows, OEE machines and shifts."""

    lines: tuple[Line, ...]
    windows: tuple[str, ...]
    machines: tuple[tuple[str, str], ...]
    """``(machine id, device id)`` of every OEE machine of a flow with an ``oee`` node."""
    shifts: bool

    @classmethod
    def of(cls, specs: Iterable[FlowSpec]) -> TagModel:
        lines: dict[tuple[str, str, str, str], list[str]] = {}
        windows: dict[float, str] = {}
        machines: dict[str, str] = {}
        shifts = False
        for spec in specs:
            for device in spec.devices:
                key = tuple(topic_level(p) for p in device.location.isa_path().levels())
                devices = lines.setdefault(key, [])  # type: ignore[arg-type]
                if device.id not in devices:
                    devices.append(device.id)
            for node in spec.operators:
                if isinstance(node, WindowNode):
                    for w in node.windows:
                        windows.setdefault(parse_window(w), w)
                elif isinstance(node, OeeNode):
                    machines.update({m.id: m.device for m in spec.machines})
                    shifts = shifts or bool(spec.shifts)
        return cls(
            lines=tuple(Line(*key, devices=tuple(devs)) for key, devs in sorted(lines.items())),
            windows=tuple(windows[s] for s in sorted(windows)),
            machines=tuple(sorted(machines.items())),
            shifts=shifts,
        )


# ------------------------------------------------------------------------------------------ variables

_SITE = "split_part(t.uns_path, '/', 2)"
_LINE = "split_part(t.uns_path, '/', 4)"
TAG_FILTER = "t.device_id IN ($device) AND t.name IN ($tag)"
"""Every tag panel's filter: the selected devices and tags (devices are already limited by site/line)."""


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: new devices appear
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def variables() -> list[dict[str, Any]]:
    """``site`` → ``line`` → ``device`` → ``tag``, each limited by the ones before."""
    return [
        _variable("site", "Site", f"SELECT DISTINCT {_SITE} FROM nexus_tags t ORDER BY 1"),
        _variable(
            "line", "Line", f"SELECT DISTINCT {_LINE} FROM nexus_tags t WHERE {_SITE} IN ($site) ORDER BY 1"
        ),
        _variable(
            "device",
            "Device",
            f"SELECT DISTINCT t.device_id FROM nexus_tags t WHERE {_SITE} IN ($site) AND {_LINE} IN ($line) "
            "ORDER BY 1",
        ),
        _variable(
            "tag", "Tag", "SELECT DISTINCT t.name FROM nexus_tags t WHERE t.device_id IN ($device) ORDER BY 1"
        ),
    ]


# ------------------------------------------------------------------------------------------ panels


class _Layout:
    """Places panels on Grafana's 24-column grid, left to right, top to bottom."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.ids = itertools.count(1)

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0


def _row(layout: _Layout, title: str) -> dict[str, Any]:
    layout.newline()
    pos = layout.place(24, 1)
    layout.newline()
    return {
        "id": next(layout.ids),
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": pos,
        "panels": [],
    }


def _panel(
    layout: _Layout,
    kind: str,
    title: str,
    sql: str,
    fmt: Format,
    *,
    w: int = 12,
    h: int = 8,
    unit: str | None = None,
    description: str = "",
) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": next(layout.ids),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": layout.place(w, h),
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "editorMode": "code",
                "rawQuery": True,
                "format": fmt,
                "rawSql": sql,
            }
        ],
    }
    if unit:
        panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    return panel


def line_latest_sql(line: Line) -> str:
    """The newest stored value of every tag of one line (``nexus_latest``, one row per tag)."""
    return (
        "SELECT t.device_id AS device, t.name AS tag, l.value, t.unit, l.quality, l.time "
        "FROM nexus_latest l JOIN nexus_tags t USING (tag_id) "
        f"WHERE starts_with(t.uns_path, {sql_literal(line.prefix)}) AND t.device_id IN ($device) "
        "ORDER BY 1, 2"
    )


ALERTS_SQL = (
    "SELECT a.time, a.device_id AS device, t.name AS tag, a.kind, a.state, a.severity, a.value, "
    'a."limit", a.message '
    "FROM nexus_alerts a LEFT JOIN nexus_tags t USING (tag_id) "
    "WHERE $__timeFilter(a.time) AND a.device_id IN ($device) "
    "ORDER BY a.time DESC LIMIT 1000"
)

QUALITY_SQL = (
    "SELECT t.device_id AS device, "
    f"(count(*) FILTER (WHERE p.quality >= {BAD_QUALITY}))::float8 / count(*) AS bad_share, "
    "count(*) AS points "
    "FROM nexus_points p JOIN nexus_tags t USING (tag_id) "
    "WHERE $__timeFilter(p.time) AND t.device_id IN ($device) "
    "GROUP BY 1 ORDER BY 2 DESC, 1"
)

QUALITY_NOW_SQL = (
    "SELECT t.device_id AS device, "
    f"(count(*) FILTER (WHERE l.quality >= {BAD_QUALITY}))::float8 / count(*) AS bad_share, "
    "count(*) AS tags "
    "FROM nexus_latest l JOIN nexus_tags t USING (tag_id) "
    "WHERE t.device_id IN ($device) "
    "GROUP BY 1 ORDER BY 2 DESC, 1"
)
"""Share of each device's tags whose newest point is bad: one row per tag to read, cheap at any size."""

QUALITY_TREND_SQL = (
    "SELECT $__timeGroupAlias(p.time, $__interval), t.device_id AS metric, "
    f"(count(*) FILTER (WHERE p.quality >= {BAD_QUALITY}))::float8 / count(*) AS bad_share "
    "FROM nexus_points p JOIN nexus_tags t USING (tag_id) "
    "WHERE $__timeFilter(p.time) AND t.device_id IN ($device) "
    "GROUP BY 1, 2 ORDER BY 1, 2"
)


def _machines_values(machines: Sequence[tuple[str, str]]) -> str:
    rows = ", ".join(f"({sql_literal(m)}, {sql_literal(d)})" for m, d in machines)
    return f"(VALUES {rows}) AS m(machine, device_id)"


def oee_shift_sql(model: TagModel) -> str:
    """One row per machine and shift instance in the range (or per period, without shifts)."""
    period = "substr(o.period, 7) AS shift" if model.shifts else "o.period"
    only = " AND starts_with(o.period, 'shift:')" if model.shifts else ""
    return (
        f"SELECT o.machine, {period}, o.start_time, o.end_time, o.availability, o.performance, o.quality, "
        "o.oee, o.total_count, o.good_count, o.unplanned_stop_s "
        f"FROM nexus_oee o JOIN {_machines_values(model.machines)} USING (machine) "
        # shifts overlapping the range (a shift that started before it still shows)
        f"WHERE o.end_time >= $__timeFrom() AND o.start_time <= $__timeTo(){only} AND m.device_id IN ($device) "
        "ORDER BY o.start_time DESC, o.machine"
    )


def oee_trend_sql(model: TagModel) -> str:
    """OEE per machine over the window periods (the shorter, regular ones)."""
    return (
        "SELECT $__timeGroupAlias(o.start_time, $__interval), o.machine AS metric, avg(o.oee) AS oee "
        f"FROM nexus_oee o JOIN {_machines_values(model.machines)} USING (machine) "
        "WHERE $__timeFilter(o.start_time) AND starts_with(o.period, 'window:') AND m.device_id IN ($device) "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )


def trend_sql(window: str) -> str:
    """The selected tags' averages from ``nexus_agg_{window}``, regrouped to Grafana's interval."""
    return (
        "SELECT $__timeGroupAlias(a.bucket, $__interval), t.device_id || '/' || t.name AS metric, "
        "sum(a.avg * a.count) / nullif(sum(a.count), 0) AS value "
        f"FROM {agg_table(window)} a JOIN nexus_tags t USING (tag_id) "
        f"WHERE $__timeFilter(a.bucket) AND {TAG_FILTER} "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )


def stats_sql(window: str) -> str:
    """Minimum, maximum, count-weighted mean and point count of each selected tag over the range."""
    return (
        "SELECT t.device_id AS device, t.name AS tag, t.unit, min(a.min) AS min, max(a.max) AS max, "
        "sum(a.avg * a.count) / nullif(sum(a.count), 0) AS avg, sum(a.count) AS count "
        f"FROM {agg_table(window)} a JOIN nexus_tags t USING (tag_id) "
        f"WHERE $__timeFilter(a.bucket) AND {TAG_FILTER} "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2"
    )


RAW_TREND_SQL = (
    "SELECT $__timeGroupAlias(p.time, $__interval), t.device_id || '/' || t.name AS metric, avg(p.value) AS value "
    "FROM nexus_points p JOIN nexus_tags t USING (tag_id) "
    f"WHERE $__timeFilter(p.time) AND {TAG_FILTER} AND p.quality < {BAD_QUALITY} "
    "GROUP BY 1, 2 ORDER BY 1, 2"
)


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]], time_from: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["nexus"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["nexus"], "asDropdown": False, "title": "NEXUS"}],
        "panels": panels,
    }


def overview(model: TagModel) -> dict[str, Any]:
    """Per line latest values, alerts, OEE per machine and shift, data quality."""
    layout = _Layout()
    panels: list[dict[str, Any]] = []
    for line in model.lines:
        panels.append(_row(layout, f"{line.enterprise} / {line.title}"))
        panels.append(
            _panel(
                layout,
                "table",
                f"Latest values — {line.title}",
                line_latest_sql(line),
                "table",
                w=24,
                description="Devices: " + ", ".join(line.devices),
            )
        )
    panels.append(_row(layout, "Alerts"))
    panels.append(_panel(layout, "table", "Alerts", ALERTS_SQL, "table", w=24))
    if model.machines:
        panels.append(_row(layout, "OEE"))
        title = "OEE per machine and shift" if model.shifts else "OEE per machine and period"
        panels.append(_panel(layout, "table", title, oee_shift_sql(model), "table", w=24, unit="percentunit"))
        panels.append(
            _panel(
                layout,
                "timeseries",
                "OEE per machine",
                oee_trend_sql(model),
                "time_series",
                w=24,
                unit="percentunit",
            )
        )
    panels.append(_row(layout, "Data quality"))
    raw = "Reads the raw points of the range: on a large plant keep the range short."
    for kind, title, sql, fmt, description in (
        ("table", "Bad tags now per device", QUALITY_NOW_SQL, "table", "From each tag's newest point."),
        ("table", "Share of bad points per device", QUALITY_SQL, "table", raw),
        ("timeseries", "Bad points over time", QUALITY_TREND_SQL, "time_series", raw),
    ):
        panels.append(_panel(layout, kind, title, sql, fmt, w=8, unit="percentunit", description=description))  # type: ignore[arg-type]
    return _dashboard("nexus-overview", "NEXUS Edge — plant overview", panels, "now-6h")


def trends(model: TagModel) -> dict[str, Any]:
    """The selected tags over time, from each aggregate table (raw points when no flow aggregates)."""
    layout = _Layout()
    panels: list[dict[str, Any]] = []
    for window in model.windows:
        panels.append(_row(layout, f"{window} aggregates ({agg_table(window)})"))
        panels.append(
            _panel(
                layout,
                "timeseries",
                f"Tag trends — {window} averages",
                trend_sql(window),
                "time_series",
                w=24,
            )
        )
        panels.append(_panel(layout, "table", f"Tag statistics — {window}", stats_sql(window), "table", w=24))
    if not model.windows:
        panels.append(_row(layout, "Raw points (no window operator in the flows)"))
        panels.append(
            _panel(layout, "timeseries", "Tag trends — raw points", RAW_TREND_SQL, "time_series", w=24)
        )
    return _dashboard("nexus-trends", "NEXUS Edge — tag trends", panels, "now-24h")


def dashboards(model: TagModel) -> list[dict[str, Any]]:
    return [overview(model), trends(model)]


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every ``(panel, target)`` of a dashboard (rows excluded)."""
    return [(p, t) for p in dashboard["panels"] if p["type"] != "row" for t in p.get("targets", [])]


def write_dashboards(model: TagModel, folder: Path) -> list[Path]:
    """Write the dashboards as ``{uid}.json``; a file whose content is unchanged is not rewritten
    (Grafana's file provider reloads on modification time)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for board in dashboards(model):
        path = folder / f"{board['uid']}.json"
        text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        written.append(path)
    return written
