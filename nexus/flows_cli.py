"""``nexus flows ...``: the config store from the command line (import, export, list), through the
same service functions as the API.

``import`` keeps the file's text byte for byte with the version, and ``export`` writes exactly
those bytes back, so a spec can live in git and round-trip through the store unchanged. Without
``NEXUS_DATABASE_URL`` the commands use the embedded PostgreSQL in ``NEXUS_DATA_DIR`` (started for
the command when ``nexus up`` is not running it, and stopped again afterwards).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.settings import Settings


@contextmanager
def open_store(settings: Settings) -> Iterator[Any]:
    """The migrated config store of ``settings`` (the embedded PostgreSQL when no URL is configured)."""
    from control.store import ConfigStore

    url = settings.database_url
    pg = None
    if not url:
        from nexus.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(settings.data_dir / "pg", port=settings.pg_port)
        was_running = pg.running
        pg.start()
        url = pg.url
    store = ConfigStore(url)
    try:
        store.migrate()
        yield store
    finally:
        store.close()
        if pg is not None and not was_running:
            pg.stop()


def _author(args: argparse.Namespace) -> str:
    if args.author:
        return str(args.author)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_flows_import(args: argparse.Namespace, settings: Settings) -> int:
    from control import service
    from control.store import SourceFormat

    path = Path(args.file)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        print(f"nexus flows import: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as exc:
        print(
            f"nexus flows import: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
            file=sys.stderr,
        )
        return 1
    fmt: SourceFormat = "json" if path.suffix == ".json" else "yaml"
    with open_store(settings) as store:
        version, changed = service.import_text(
            store, text, author=_author(args), message=args.message or "", fmt=fmt, source=path.name
        )
        what = (
            f"version {version.number}" if changed else f"unchanged (version {version.number} has this text)"
        )
        print(f"flow {version.flow_id!r}: {what}")
        if args.deploy:
            result = service.deploy(store, version.flow_id, version=version.number)
            print(f"deployed version {result.version}: {result.path} ({'; '.join(result.reasons)})")
    return 0


def cmd_flows_export(args: argparse.Namespace, settings: Settings) -> int:
    from control import service

    with open_store(settings) as store:
        text, _fmt, _masked = service.export_text(store, args.flow_id, args.version)
    data = text.encode("utf-8")
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def cmd_flows_list(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        flows = store.list_flows()
    if not flows:
        print("no flows")
    for f in flows:
        deployed = f.deployed_version if f.deployed_version is not None else "-"
        print(f"{f.flow_id:<30} {f.desired_state:<8} deployed {deployed!s:<5} newest {f.latest_version}")
    return 0


def run_flows_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs a ``flows`` subcommand; control-plane errors become one clear line and exit status 1."""
    from control.errors import ControlError, InvalidError

    try:
        return int(args.flows_func(args, settings))
    except ControlError as exc:
        print(f"nexus flows {args.flows_command}: {exc}", file=sys.stderr)
        if isinstance(exc, InvalidError):
            for path, message in exc.problems:
                print(f"  {path}: {message}" if path else f"  {message}", file=sys.stderr)
        return 1


def add_flows_parser(sub: Any) -> None:
    """``nexus flows import|export|list``."""
    p = sub.add_parser(
        "flows",
        help="import, export and list flows in the config store",
        description="Flows in the config store (PostgreSQL schema nexus_config). `import` writes a spec file "
        "as a new version (its text kept byte for byte), `export` prints a version's text exactly as imported.",
    )
    p.set_defaults(func=run_flows_command)
    fsub = p.add_subparsers(dest="flows_command", required=True, metavar="SUBCOMMAND")
    q = fsub.add_parser("import", help="store a spec file as a new flow or a new version of its flow")
    q.add_argument("file", metavar="FILE", help="YAML or JSON spec file")
    q.add_argument("-m", "--message", help="version message (default: imported FILE)")
    q.add_argument("--author", help="version author (default: cli:<user>)")
    q.add_argument("--deploy", action="store_true", help="deploy the imported version")
    q.set_defaults(flows_func=cmd_flows_import)
    q = fsub.add_parser("export", help="print a version's spec text exactly as it was imported")
    q.add_argument("flow_id", metavar="ID", help="flow id")
    q.add_argument("--version", type=int, default=None, help="version number (default: the newest)")
    q.add_argument("-o", "--output", help="write to this file instead of standard output")
    q.set_defaults(flows_func=cmd_flows_export)
    q = fsub.add_parser("list", help="list the flows with their desired state and versions")
    q.set_defaults(flows_func=cmd_flows_list)
