"""The ``nexus`` command: demo, run, services, simulate, validate, schema."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from core.settings import ENV_DOC, Settings

EPILOG = "environment:\n" + "\n".join(f"  {k:<20} {v}" for k, v in ENV_DOC.items())


def _spec_path(arg: str | None, settings: Settings) -> Path:
    from dataflows.spec import DEMO_SPEC

    return Path(arg or settings.spec or DEMO_SPEC)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from nexus.demo import run_demo

    return run_demo(settings, _spec_path(args.spec, settings), duration_s=args.duration)


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

    return run_simulators(load_spec(_spec_path(args.spec, settings)))


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
        "demo",
        help="start everything on embedded defaults: PostgreSQL, MQTT broker, simulated PLCs, the dataflow",
        description="Start an embedded PostgreSQL (data in NEXUS_DATA_DIR), an embedded MQTT broker, "
        "simulated Modbus devices and the telemetry dataflow; print where to look and live progress. "
        "NEXUS_DATABASE_URL / NEXUS_MQTT_URL switch to real services. Ctrl-C stops every part.",
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
        help="run simulated Modbus devices for the devices of a spec",
        description="Serve every loopback device of the spec from pymodbus servers with the signals "
        "in the tags' `simulate:` sections, until Ctrl-C.",
    )
    p.add_argument("--spec", help="flow spec file (default: NEXUS_SPEC or the demo spec)")
    p.set_defaults(func=cmd_simulate)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dataflows.spec import SpecError

    try:
        settings = Settings.from_env()
        level = settings.log_level.upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if level != "DEBUG":  # the embedded broker and the protocol libraries are chatty at INFO
            for noisy in ("amqtt", "transitions", "pymodbus", "asyncua"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
        return int(args.func(args, settings))
    except (SpecError, ValueError) as exc:
        print(f"nexus {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
