"""What Grafana does to a panel's SQL before sending it to PostgreSQL, for the tests.

Template variables first (the frontend: a multi-value SQL variable becomes a comma-separated list of
quoted values, quotes doubled; ``$__interval`` the interval string), then the PostgreSQL datasource's
macros as its macro engine expands them (``pkg/tsdb/grafana-postgresql-datasource/macros.go``: the same
pattern, the same output for ``$__timeFilter``, ``$__timeFrom``, ``$__timeTo``, ``$__timeGroup`` and
``$__timeGroupAlias`` with and without the TimescaleDB toggle).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _rfc3339(t: datetime) -> str:
    """Go's ``time.RFC3339Nano`` of a UTC time (trailing zeros of the fraction dropped)."""
    t = t.astimezone(UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += ("." + f"{t.microsecond:06d}").rstrip("0")
    return text + "Z"


def _go_float(x: float) -> str:
    """Go's ``%v`` of a float64 (``60`` for 60.0, ``0.5`` for 0.5)."""
    return str(int(x)) if x == int(x) else repr(x)


def parse_interval(text: str) -> float:
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h|d|w|y)", text.strip("'"))
    if m is None:
        raise ValueError(f"error parsing interval {text}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate_variables(sql: str, variables: Mapping[str, Sequence[str]], interval: str) -> str:
    sql = sql.replace("$__interval_ms", str(int(parse_interval(interval) * 1000)))
    sql = sql.replace("$__interval", interval)
    for name in sorted(variables, key=len, reverse=True):
        values = ",".join(quote(v) for v in variables[name]) or "NULL"
        sql = sql.replace("${" + name + "}", values)
        sql = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m, v=values: v, sql)
    return sql


def expand_macros(sql: str, time_from: datetime, time_to: datetime, *, timescaledb: bool = False) -> str:
    def evaluate(name: str, args: list[str]) -> str:
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(time_from)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(time_to)}'"
        if name == "__timeGroup":
            seconds = parse_interval(args[1])
            if timescaledb:
                return f"time_bucket('{seconds:.3f}s',{args[0]})"
            return f"floor(extract(epoch from {args[0]})/{_go_float(seconds)})*{_go_float(seconds)}"
        if name == "__timeGroupAlias":
            return evaluate("__timeGroup", args) + ' AS "time"'
        raise ValueError(f"unknown macro {name!r}")

    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__timeGroup":  # followed by ',': the pre-5.3 form that adds the alias
            end = sql.find(m.group(0))
            if end >= 0 and sql[end + len(m.group(0)) : end + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        return evaluate(name, [a.strip(" ") for a in m.group(2).split(",")])

    return _MACRO.sub(replace, sql)


def render(
    sql: str,
    variables: Mapping[str, Sequence[str]],
    *,
    interval: str,
    time_from: datetime,
    time_to: datetime,
    timescaledb: bool = False,
) -> str:
    """The SQL Grafana would send for this panel."""
    return expand_macros(
        interpolate_variables(sql, variables, interval), time_from, time_to, timescaledb=timescaledb
    )
