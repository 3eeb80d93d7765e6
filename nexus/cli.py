"""The ``nexus`` command: demo, up, run, services, simulate, browse, validate, schema, flows, users."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.logs import configure_logging
from core.settings import ENV_DOC, Settings

if TYPE_CHECKING:
    from connectors.opcua.client import BrowsedVariable

EPILOG = "environment:\n" + "\n".join(f"  {k:<20} {v}" for k, v in ENV_DOC.items())


def _spec_path(arg: str | None, settings: Settings) -> Path:
    from dataflows.spec import DEMO_SPEC

    return Path(arg or settings.spec or DEMO_SPEC)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from nexus.up import run_up

    return run_up(
        settings, simulate=True, import_spec=_spec_path(args.spec, settings), duration_s=args.duration
    )


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from nexus.up import run_up

    return run_up(settings, simulate=args.simulate, duration_s=args.duration)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from dataflows.spec import load_spec

    path = _spec_path(args.spec, settings)
    load_spec(path)  # refuse a bad spec before anything starts
    env = {**os.environ, "NEXUS_SPEC": str(path.resolve())}
    argv = [sys.executable, "-m", "bytewax.run", "dataflows.telemetry:flow", *args.bytewax_args]
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def cmd_services(args: argparse.Namespace, settings: Settings) -> int:
    from nexus.demo import run_services

    return run_services(settings)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from dataflows.spec import load_spec
    from nexus.demo import run_simulators

    path = _spec_path(args.spec, settings)
    return run_simulators(load_spec(path), str(path))


def cmd_browse(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from connectors.opcua.client import SessionError, browse_server
    from connectors.opcua.config import OpcUaConnection

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise ValueError(f"--password-env: environment variable {args.password_env!r} is not set")
    fields: dict[str, object] = {
        "endpoint": args.endpoint,
        "security_mode": args.security_mode,
        "security_policy": args.policy,
        "username": args.username,
        "password": password,
        "timeout_s": args.timeout,
        "trusted_server_certs": tuple(args.trust),
    }
    if args.cert_dir:
        fields["certificate_dir"] = args.cert_dir
    conn = OpcUaConnection.model_validate({k: v for k, v in fields.items() if v is not None})
    try:
        found = asyncio.run(
            browse_server(conn, args.root, max_depth=args.depth, max_variables=args.max_variables)
        )
    except (SessionError, OSError, TimeoutError) as exc:  # SessionError messages never hold the password
        print(f"nexus browse: {conn.endpoint}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    if args.json:
        rows = [
            {
                "node_id": v.node_id,
                "browse_path": v.browse_path,
                "data_type": v.data_type,
                "writable": v.writable,
            }
            for v in found
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif args.yaml:
        sys.stdout.write(tags_yaml(found, conn.endpoint))
    else:
        sys.stdout.write(browse_table(found))
        print(f"{len(found)} variables under {args.root} on {conn.endpoint}")
    return 0


def browse_table(found: Sequence[BrowsedVariable]) -> str:
    """The browsed variables as an aligned text table."""
    rows = [("NODE ID", "BROWSE PATH", "TYPE", "WRITABLE")]
    rows += [(v.node_id, v.browse_path, v.data_type, "yes" if v.writable else "no") for v in found]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}\n" for r in rows)


_NOT_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")


def tag_name(browse_path: str) -> str:
    """A flow-spec tag name for a browse path: ``Line 1/Temp`` -> ``Line_1.Temp``.

    >>> tag_name("Line 1/Temp"), tag_name("_x/°C")
    ('Line_1.Temp', 'x._C')
    """
    name = _NOT_NAME.sub("_", browse_path.replace("/", ".")).lstrip("_.-")
    return (name or "tag")[:63]


def tags_yaml(found: Sequence[BrowsedVariable], endpoint: str) -> str:
    """A ``tags:`` section for an OPC UA device of a flow spec, one tag per variable."""
    lines = [
        f"# {len(found)} variables of {endpoint}; paste under a device with",
        f"#   protocol: opcua\n#   connection: {{endpoint: {json.dumps(endpoint)}}}",
        "tags:",
    ]
    seen: set[str] = set()
    for v in found:
        base = name = tag_name(v.browse_path)
        k = 1
        while name in seen:
            k += 1
            name = f"{base[: 63 - len(str(k)) - 1]}_{k}"
        seen.add(name)
        access = ", access: read_write" if v.writable else ""
        lines.append(
            f"  - {{name: {json.dumps(name)}, node_id: {json.dumps(v.node_id)}{access}}}  # {v.data_type}"
        )
    return "\n".join(lines) + "\n"


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from dataflows.spec import load_spec

    spec = load_spec(args.spec)
    tags = sum(len(d.tags) for d in spec.devices)
    print(
        f"{args.spec}: valid flow spec v{spec.version} {spec.id!r}: {len(spec.devices)} devices, {tags} tags"
    )
    return 0


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from dataflows.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus",
        description="NEXUS Edge: PLC data to a Unified Namespace and a historian, through Bytewax dataflows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "up",
        help="run the platform: PostgreSQL, MQTT broker, the API, the supervisor and every running flow",
        description="Start the database and broker (embedded unless NEXUS_DATABASE_URL / NEXUS_MQTT_URL "
        "are set), migrate the config store, serve the API on NEXUS_API_HOST:NEXUS_API_PORT "
        "(default 127.0.0.1:8080) and run the supervisor, which starts every flow whose desired state "
        "is running. Ctrl-C (or SIGTERM) drains the flows and stops every part.",
    )
    p.add_argument(
        "--simulate", action="store_true", help="also serve the simulated devices of the deployed specs"
    )
    p.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "demo",
        help="`nexus up --simulate` with the demo flow imported and deployed on first start",
        description="Like `nexus up --simulate`; on first start it imports the demo flow (or --spec) into "
        "the config store and deploys it, then prints the API URL, where to look at the data and "
        "live progress. Data lives in NEXUS_DATA_DIR; a second run keeps your edits. Ctrl-C stops "
        "every part.",
    )
    p.add_argument("--spec", help="flow spec file (default: NEXUS_SPEC or the demo spec)")
    p.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "run",
        help="run a flow spec as `python -m bytewax.run dataflows.telemetry:flow` against configured services",
        description="Check the spec, then exec the Bytewax runtime on it. Services come from "
        "NEXUS_DATABASE_URL and NEXUS_MQTT_URL (default: the embedded ones of `nexus services`). "
        "Arguments after `--` go to bytewax.run (e.g. -- -w 1 -r recovery/ -s 5).",
    )
    p.add_argument("--spec", help="flow spec file (default: NEXUS_SPEC or the demo spec)")
    p.add_argument("bytewax_args", nargs=argparse.REMAINDER, help="arguments passed to bytewax.run")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "services",
        help="start only the embedded PostgreSQL and MQTT broker and print their URLs",
        description="Start the embedded PostgreSQL and MQTT broker (those not configured by URL) and "
        "keep them running until Ctrl-C, for `nexus run` or your own tools.",
    )
    p.set_defaults(func=cmd_services)

    p = sub.add_parser(
        "simulate",
        help="run simulated Modbus, OPC UA and S7 servers for the loopback devices of a spec",
        description="Serve every loopback device of the spec (Modbus TCP, OPC UA, S7) from the protocol "
        "libraries' own servers (pymodbus, asyncua, snap7) with the signals in the tags' `simulate:` "
        "sections, print what is served where, and run until Ctrl-C.",
    )
    p.add_argument("--spec", help="flow spec file (default: NEXUS_SPEC or the demo spec)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "browse",
        help="list an OPC UA server's variables (node id, browse path, type, writable) for tag discovery",
        description="Browse an OPC UA server from --root down to --depth levels and list its variables "
        "as a table, as JSON (--json) or as a `tags:` section to paste into a flow spec (--yaml). "
        "The password is read from the environment variable named by --password-env, never from "
        "the command line, and is never printed.",
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help="opc.tcp://host:port[/path]")
    p.add_argument("--username", help="user name (anonymous without it)")
    p.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    p.add_argument("--security-mode", choices=["None", "Sign", "SignAndEncrypt"], default="None")
    p.add_argument(
        "--policy", choices=["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"], default=None
    )
    p.add_argument("--cert-dir", help="client certificate folder (default: .nexus/opcua/pki)")
    p.add_argument(
        "--trust", action="append", default=[], metavar="CERT", help="trusted server certificate (repeatable)"
    )
    p.add_argument("--root", default="i=85", help="node id to start from (default: i=85, the Objects folder)")
    p.add_argument("--depth", type=int, default=8, help="levels to descend (default: 8)")
    p.add_argument("--max-variables", type=int, default=10_000, help="stop after this many (default: 10000)")
    p.add_argument("--timeout", type=float, default=4.0, help="request timeout in seconds (default: 4)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--yaml", action="store_true", help="print a `tags:` section for a flow spec")
    p.set_defaults(func=cmd_browse)

    p = sub.add_parser(
        "validate",
        help="check a flow spec and print every problem with its field path",
        description="Validate a YAML/JSON flow spec; exit 1 and name each bad field if it is invalid.",
    )
    p.add_argument("spec", help="flow spec file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of flow spec v1",
        description="Print (or write) the published JSON Schema of flow spec v1.",
    )
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func=cmd_schema)

    from nexus.flows_cli import add_flows_parser

    add_flows_parser(sub)

    from nexus.users_cli import add_users_parser

    add_users_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dataflows.spec import SpecError
    from nexus.embedded import EmbeddedServiceError

    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        return int(args.func(args, settings))
    except (SpecError, ValueError, EmbeddedServiceError) as exc:
        print(f"nexus {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
