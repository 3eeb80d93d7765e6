"""A benchmark child process started from a checkout, on a database of its own (A/B modules).

The A/B benchmarks run the code under test from each side's checkout in a child process
(``python -c SCRIPT`` with the checkout as its working folder, so its packages are the ones
imported), each child on a fresh database of one embedded PostgreSQL; the child prints one JSON
object on its last line, with the ``module`` file it imported (checked to be the checkout's).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

from nexus.embedded import EmbeddedPostgres


def run_child(
    root: Path, pg: EmbeddedPostgres, script: str, args: list[str], *, what: str, timeout: float = 600
) -> dict[str, Any]:
    """Run ``script`` from checkout ``root`` with the URL of a fresh database and ``args``; its JSON
    object, without ``module``. ``what`` names the code under test in the errors."""
    name = f"child_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, pg.url_for(name), *args],
            cwd=root, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"the {what} from {root} failed:\n{proc.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if not Path(result.pop("module")).is_relative_to(root.resolve()):
        raise RuntimeError(f"the child from {root} imported another checkout's {what}")
    return result
