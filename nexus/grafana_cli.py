"""``nexus grafana ...``: dashboards generated from the flows, and Grafana's read-only database role.

``export`` reads the deployed spec of every flow in the config store (or the spec files given) and
writes the dashboards as JSON files for Grafana's file provisioning; ``--every`` keeps doing so, so a
new flow or a new line shows up in Grafana without a restart (unchanged files are not rewritten).
``role`` creates or updates the read-only role (``nexus_grafana``) with the password from
``NEXUS_GRAFANA_DB_PASSWORD``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path
from typing import Any

from core.settings import Settings

log = logging.getLogger(__name__)


def _specs(args: argparse.Namespace, settings: Settings) -> list[Any]:
    from dataflows.spec import SpecError, load_spec, parse_spec

    if args.spec:
        return [load_spec(p) for p in args.spec]
    from nexus.flows_cli import open_store

    specs = []
    with open_store(settings) as store:
        for flow in store.desired_flows():
            if flow.spec is None:
                continue
            try:
                specs.append(parse_spec(flow.spec, source=f"flow {flow.flow_id}"))
            except SpecError as exc:  # a stored version no longer valid: leave it out, say so
                log.warning("grafana export: flow %s left out: %s", flow.flow_id, exc)
    return specs


def cmd_grafana_export(args: argparse.Namespace, settings: Settings) -> int:
    from control.grafana.dashboards import TagModel, write_dashboards

    stop = threading.Event()
    while True:
        paths = write_dashboards(TagModel.of(_specs(args, settings)), Path(args.output))
        print("wrote " + ", ".join(str(p) for p in paths), flush=True)
        if not args.every or stop.wait(args.every):
            return 0


def cmd_grafana_role(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from control.grafana.role import ensure_readonly_role

    password = os.environ.get(args.password_env, "")
    if not password:
        print(f"nexus grafana role: set {args.password_env} to the role's password", flush=True)
        return 1
    url = settings.database_url
    if not url:
        print("nexus grafana role: set NEXUS_DATABASE_URL (the historian's owner role)", flush=True)
        return 1
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        ensure_readonly_role(conn, password, role=args.role)
    print(f"role {args.role}: SELECT on the historian tables, read-only sessions", flush=True)
    return 0


def add_grafana_parser(sub: Any) -> None:
    """``nexus grafana export|role``."""
    p = sub.add_parser(
        "grafana",
        help="Grafana dashboards generated from the flows; the read-only database role",
        description="`export` writes the dashboards (plant overview, tag trends) for Grafana's file "
        "provisioning, generated from the deployed flows (or --spec files); `role` creates the "
        "read-only role Grafana connects as.",
    )
    gsub = p.add_subparsers(dest="grafana_command", required=True, metavar="SUBCOMMAND")
    q = gsub.add_parser("export", help="write the dashboards as JSON files")
    q.add_argument(
        "-o", "--output", default="grafana-dashboards", help="folder (default: grafana-dashboards)"
    )
    q.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="FILE",
        help="spec file (repeatable; default: the store)",
    )
    q.add_argument("--every", type=float, default=0, metavar="S", help="export again every S seconds")
    q.set_defaults(func=cmd_grafana_export)
    q = gsub.add_parser("role", help="create or update the read-only database role for Grafana")
    q.add_argument("--role", default="nexus_grafana", help="role name (default: nexus_grafana)")
    q.add_argument(
        "--password-env",
        default="NEXUS_GRAFANA_DB_PASSWORD",
        metavar="VAR",
        help="environment variable holding its password (default: NEXUS_GRAFANA_DB_PASSWORD)",
    )
    q.set_defaults(func=cmd_grafana_role)
