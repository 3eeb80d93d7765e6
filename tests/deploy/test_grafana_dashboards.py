"""Every generated panel's SQL, expanded as Grafana expands it, runs against a real PostgreSQL holding a
short flow run's data — as the read-only ``nexus_grafana`` role — and returns the columns the panel
expects, with rows. The flow is the real one (``bytewax.run dataflows.telemetry:flow``) polling a
simulated Modbus device, plus a device nobody answers for (bad points), drained at the end so the
open 1-minute buckets and OEE periods are written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from control.grafana.dashboards import TagModel, dashboards, panel_targets, write_dashboards
from control.grafana.role import ensure_readonly_role
from dataflows.spec import parse_spec
from nexus.demo import simulated_devices
from nexus.embedded import free_port
from tests.conftest import wait_for
from tests.deploy.grafana_sql import render

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TABLE_COLUMNS = {
    "Latest values": ["device", "tag", "value", "unit", "quality", "time"],
    "Alerts": ["time", "device", "tag", "kind", "state", "severity", "value", "limit", "message"],
    "OEE per machine and shift": [
        "machine", "shift", "start_time", "end_time", "availability", "performance", "quality", "oee",
        "total_count", "good_count", "unplanned_stop_s",
    ],
    "Share of bad points per device": ["device", "bad_share", "points"],
    "Bad tags now per device": ["device", "bad_share", "tags"],
    "Tag statistics": ["device", "tag", "unit", "min", "max", "avg", "count"],
}  # fmt: skip


def spec_doc(port: int, dead_port: int) -> dict[str, Any]:
    location = {"enterprise": "acme", "site": "plant-1", "area": "pressing", "line": "line1"}
    return {
        "version": 1,
        "id": "grafana-check",
        "devices": [
            {
                "id": "press-a",
                "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout_s": 1.0},
                "poll_interval_s": 0.5,
                "location": location,
                "tags": [
                    {"name": "temp", "table": "holding", "address": 0, "data_type": "int16", "scale": 0.1,
                     "unit": "degC", "alarms": {"high": 60, "hysteresis": 1, "severity": "warning"},
                     "simulate": {"kind": "sine", "offset": 700, "amplitude": 20, "period_s": 10}},
                    {"name": "state", "table": "holding", "address": 1, "data_type": "uint16",
                     "simulate": {"kind": "constant", "offset": 1}},
                    {"name": "count", "table": "holding", "address": 2, "data_type": "uint16",
                     "simulate": {"kind": "counter", "amplitude": 1, "period_s": 1}},
                ],
            },
            {
                "id": "press-b",
                # TEST-NET-1 (RFC 5737): nothing answers, and the simulators serve loopback devices only
                "connection": {"host": "192.0.2.1", "port": dead_port, "unit_id": 1, "timeout_s": 0.2},
                "poll_interval_s": 0.5,
                "location": {**location, "line": "line2"},
                "tags": [{"name": "temp", "table": "holding", "address": 0, "data_type": "int16"}],
            },
        ],
        "operators": [
            {"id": "normalize", "type": "normalize"},
            {"id": "agg", "type": "window", "windows": ["10s", "1m"], "lateness_s": 0.5},
            {"id": "alarms", "type": "anomaly"},
            {"id": "oee", "type": "oee", "window": "10s"},
        ],
        "sinks": [{"id": "historian", "type": "historian", "max_delay_s": 0.5}],
        "machines": [
            {"id": "press-a", "device": "press-a", "state_tag": "state", "states": {1: "running"},
             "counter_tag": "count", "ideal_cycle_s": 1.0},
        ],
        "shifts": [{"name": "am", "start": "00:00", "end": "12:00"}, {"name": "pm", "start": "12:00", "end": "00:00"}],
        "shift_timezone": "UTC",
    }  # fmt: skip


def _count(url: str, table: str, where: str = "true") -> int:
    with psycopg.connect(url) as conn:
        if not conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:  # type: ignore[index]
            return 0
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])  # type: ignore[index]


@pytest.fixture(scope="module")
def flow_run(
    postgres_url: str, mqtt_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A database filled by the real flow for a few seconds (drained), and the spec it ran."""
    name = f"test_grafana_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(postgres_url, dbname=name)
    tmp = tmp_path_factory.mktemp("grafana-flow")
    doc = spec_doc(free_port(), free_port())
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    started = datetime.now(UTC)
    env = {
        **os.environ,
        "NEXUS_SPEC": str(spec_path),
        "NEXUS_DATABASE_URL": url,
        "NEXUS_MQTT_URL": mqtt_url,
        "NEXUS_SPOOL_DIR": str(tmp / "spool"),
    }
    try:
        with simulated_devices(parse_spec(doc)):
            log = (tmp / "flow.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", "dataflows.telemetry:flow"],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                wait_for(
                    lambda: (
                        _count(url, "nexus_agg_10s") > 0
                        and _count(url, "nexus_alerts") > 0
                        and _count(url, "nexus_points", "quality >= 128") > 0
                        and _count(url, "nexus_oee", "period LIKE 'window:%'") > 0
                    ),
                    timeout=240,
                    interval=0.5,
                    what="aggregates, an alert, bad points and an OEE window in the historian",
                )
            finally:
                proc.send_signal(signal.SIGTERM)  # drain: open buckets and OEE periods are flushed
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
        assert proc.returncode == 0, (tmp / "flow.log").read_text(errors="replace")[-3000:]
        yield {"url": url, "spec": parse_spec(doc), "from": started - timedelta(minutes=2),
               "to": datetime.now(UTC) + timedelta(minutes=1)}  # fmt: skip
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def grafana_url(flow_run: dict[str, Any]) -> Iterator[str]:
    """The database as the read-only role Grafana connects as (a role name of its own: roles are per server)."""
    role, password = f"nexus_grafana_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(flow_run["url"], autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS nexus_config")
        conn.execute("CREATE TABLE IF NOT EXISTS nexus_config.secret_thing (x text)")
        ensure_readonly_role(conn, password, role=role)
        ensure_readonly_role(conn, password, role=role)  # idempotent
    params = conninfo_to_dict(flow_run["url"])
    yield make_conninfo(flow_run["url"], user=role, password=password)
    with psycopg.connect(make_conninfo(**params), autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def _variables(url: str, board: dict[str, Any]) -> dict[str, list[str]]:
    """Each variable's values as Grafana reads them (in order, each query seeing the ones before), all selected."""
    values: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        for var in board["templating"]["list"]:
            sql = render(
                var["query"], values, interval="10s", time_from=datetime.now(UTC), time_to=datetime.now(UTC)
            )
            values[var["name"]] = [str(r[0]) for r in conn.execute(sql).fetchall()]
    return values


def _run(url: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        assert cur.description is not None
        return [c.name for c in cur.description], cur.fetchall()


def test_variables_come_from_the_tag_model(flow_run: dict[str, Any], grafana_url: str) -> None:
    board = dashboards(TagModel.of([flow_run["spec"]]))[0]
    values = _variables(grafana_url, board)
    assert values == {
        "site": ["plant-1"],
        "line": ["line1", "line2"],
        "device": ["press-a", "press-b"],
        "tag": ["count", "state", "temp"],
    }


@pytest.mark.parametrize("timescaledb", [False, True], ids=["postgres", "timescaledb"])
@pytest.mark.parametrize("uid", ["nexus-overview", "nexus-trends"])
def test_every_panel_runs_as_grafana_would_and_returns_its_columns(
    flow_run: dict[str, Any], grafana_url: str, uid: str, timescaledb: bool
) -> None:
    """With the datasource's TimescaleDB toggle on, ``$__timeGroup`` becomes ``time_bucket``: run only
    where the historian runs on TimescaleDB (not installable on the test machines)."""
    if timescaledb and _count(flow_run["url"], "pg_extension", "extname = 'timescaledb'") == 0:
        pytest.skip("the historian database has no TimescaleDB extension here")
    model = TagModel.of([flow_run["spec"]])
    board = next(b for b in dashboards(model) if b["uid"] == uid)
    values = _variables(grafana_url, board)
    seen = 0
    for panel, target in panel_targets(board):
        sql = render(
            target["rawSql"],
            values,
            interval="10s",
            time_from=flow_run["from"],
            time_to=flow_run["to"],
            timescaledb=timescaledb,
        )
        columns, rows = _run(grafana_url, sql)
        where = f"panel {panel['title']!r}: {sql}"
        assert rows, f"no rows: {where}"
        if target["format"] == "time_series":
            assert columns[0] == "time" and "metric" in columns and len(columns) >= 3, where
            assert all(isinstance(r[columns.index("metric")], str) for r in rows), where
            times = [r[0] for r in rows]
            assert times == sorted(times), f"not sorted by time: {where}"
        else:
            expected = next(v for k, v in TABLE_COLUMNS.items() if panel["title"].startswith(k))
            assert columns == expected, where
        seen += 1
    assert seen >= (6 if uid == "nexus-overview" else 4)


def test_panels_show_what_the_flow_did(flow_run: dict[str, Any], grafana_url: str) -> None:
    model = TagModel.of([flow_run["spec"]])
    overview = dashboards(model)[0]
    values = _variables(grafana_url, overview)
    by_title = {p["title"]: t for p, t in panel_targets(overview)}

    def rows(title: str) -> list[tuple[Any, ...]]:
        sql = render(
            by_title[title]["rawSql"],
            values,
            interval="10s",
            time_from=flow_run["from"],
            time_to=flow_run["to"],
        )
        return _run(grafana_url, sql)[1]

    quality = {r[0]: r[1] for r in rows("Share of bad points per device")}
    assert quality["press-b"] == 1.0 and quality["press-a"] == 0.0
    now = {r[0]: r[1] for r in rows("Bad tags now per device")}
    assert now == {"press-a": 0.0, "press-b": 1.0}
    assert {(r[0], r[1], r[4]) for r in rows("Alerts")} >= {
        (r[0], "press-a", "raised") for r in rows("Alerts")[:1]
    }
    assert any(r[1] == "press-a" and r[2] == "temp" and r[4] == "raised" for r in rows("Alerts"))
    assert {r[1] for r in rows("Latest values — plant-1 / pressing / line1")} == {"temp", "state", "count"}
    oee = rows("OEE per machine and shift")
    assert {r[0] for r in oee} == {"press-a"} and {r[1] for r in oee} <= {"am", "pm"}


def test_the_role_reads_the_historian_only(flow_run: dict[str, Any], grafana_url: str) -> None:
    with psycopg.connect(grafana_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO nexus_tags (tag_id, device_id, name) VALUES (1, 'x', 'y')")
        conn.execute("SET default_transaction_read_only = off")  # even then: no privilege
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM nexus_points")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM nexus_config.secret_thing")


def test_export_writes_provisionable_files(flow_run: dict[str, Any], tmp_path: Path) -> None:
    paths = write_dashboards(TagModel.of([flow_run["spec"]]), tmp_path)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert sorted(p.name for p in paths) == ["nexus-overview.json", "nexus-trends.json"]
    for p in paths:
        board = json.loads(p.read_text())
        assert board["uid"] == p.stem and board["templating"]["list"]
        assert all(t["datasource"]["uid"] == "nexus-historian" for _, t in panel_targets(board))
    write_dashboards(TagModel.of([flow_run["spec"]]), tmp_path)
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # unchanged: not rewritten


def test_cli_exports_from_the_config_store_and_creates_the_role(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nexus grafana export`` reads the deployed flows from the store; ``nexus grafana role`` makes the role."""
    from control import service
    from control.store import ConfigStore
    from nexus.cli import main

    store = ConfigStore(db)
    store.migrate()
    doc = spec_doc(15020, 15021)
    service.import_text(store, yaml.safe_dump(doc), author="test", source="spec.yaml")
    service.deploy(store, doc["id"])
    store.close()
    monkeypatch.setenv("NEXUS_DATABASE_URL", db)
    assert main(["grafana", "export", "-o", str(tmp_path)]) == 0
    overview = json.loads((tmp_path / "nexus-overview.json").read_text())
    titles = [p["title"] for p in overview["panels"]]
    assert "Latest values — plant-1 / pressing / line1" in titles and "OEE per machine and shift" in titles
    trends = json.loads((tmp_path / "nexus-trends.json").read_text())
    assert [p["title"] for p in trends["panels"] if p["type"] == "timeseries"] == [
        "Tag trends — 10s averages",
        "Tag trends — 1m averages",
    ]

    role = f"nexus_grafana_{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("NEXUS_GRAFANA_DB_PASSWORD", raising=False)
    assert main(["grafana", "role", "--role", role]) == 1  # no password: refused, nothing created
    monkeypatch.setenv("NEXUS_GRAFANA_DB_PASSWORD", uuid.uuid4().hex)
    assert main(["grafana", "role", "--role", role]) == 0
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
        assert row == (True, False, False)
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')
