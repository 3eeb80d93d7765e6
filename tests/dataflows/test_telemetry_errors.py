"""Issue 12.7: `python -m bytewax.run "dataflows.telemetry:build(F)"` with an invalid spec prints
the field errors only, no Python traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("how", ["build", "env"])
def test_an_invalid_spec_prints_the_field_errors_only(tmp_path: Path, how: str) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "version: 1\nid: bad\ndevices:\n  - id: d1\n    connection: {host: 127.0.0.1}\n"
        "    poll_interval_s: -5\n    location: {enterprise: e, site: s, area: a, line: l}\n"
        "    tags: [{name: t, table: holding, address: 0, data_type: float128}]\n"
    )
    target = f"dataflows.telemetry:build({str(spec)!r})" if how == "build" else "dataflows.telemetry:flow"
    env = {**os.environ, "NEXUS_SPEC": str(spec), "NEXUS_MQTT_URL": "mqtt://127.0.0.1:9"}
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"flow spec ({spec}) is invalid (2 problems):",
        "  devices[0].poll_interval_s: Input should be greater than 0 (got -5)",
        "  devices[0].tags[0].data_type: Input should be 'bool', 'bit', 'int16', 'uint16', 'int32', 'uint32', "
        "'int64', 'uint64', 'float32', 'float64' or 'string' (got 'float128')",
    ]
