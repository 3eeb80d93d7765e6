"""The ``nexus`` command as a person runs it: what it prints about services and busy ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from core.settings import redact_url, url_without_password
from dataflows.spec import parse_spec
from nexus.demo import _banner
from nexus.embedded import free_port

SECRET = "s3cret-pw"


def _nexus(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nexus.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _spec_text(port: int) -> str:
    return f"""
version: 1
id: busy
devices:
  - id: press-01
    connection: {{host: 127.0.0.1, port: {port}, unit_id: 1}}
    location: {{enterprise: acme, site: plant1, area: pressing, line: line1}}
    tags:
      - {{name: t, table: holding, address: 0, data_type: int16, simulate: {{kind: constant, offset: 5}}}}
sinks:
  - {{id: uns, type: mqtt_uns}}
"""


def test_redact_url_masks_every_password_form() -> None:
    assert redact_url(f"postgresql://nexus:{SECRET}@db:5432/nexus") == "postgresql://nexus:***@db:5432/nexus"
    assert SECRET not in redact_url(f"postgresql://db/nexus?sslmode=require&password={SECRET}")
    assert (
        redact_url("postgresql://postgres@127.0.0.1:5432/nexus")
        == "postgresql://postgres@127.0.0.1:5432/nexus"
    )
    assert url_without_password(f"postgresql://nexus:{SECRET}@db/n") == "postgresql://nexus@db/n"


def test_services_prints_the_database_url_redacted() -> None:
    proc = _nexus(
        "services",
        env={
            "NEXUS_DATABASE_URL": f"postgresql://nexus:{SECRET}@127.0.0.1:{free_port()}/nexus",
            "NEXUS_MQTT_URL": f"mqtt://edge:{SECRET}@127.0.0.1:{free_port()}",
        },
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends when the process ends, so a crash cannot hang the test
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert "database  postgresql://nexus:***@127.0.0.1:" in out, out + err
    assert SECRET not in out + err


def test_demo_banner_never_shows_the_database_password() -> None:
    spec = parse_spec(yaml.safe_load(_spec_text(15020)))
    text = _banner(
        spec, Path("x.yaml"), f"postgresql://nexus:{SECRET}@db:5432/nexus", "mqtt://u:p@127.0.0.1:1"
    )
    assert SECRET not in text
    assert "database  postgresql://nexus:***@db:5432/nexus" in text
    assert "psql 'postgresql://nexus@db:5432/nexus'" in text  # psql asks for the password


def test_simulate_on_a_busy_port_is_one_line_naming_the_field(tmp_path: Path, busy_port: int) -> None:
    spec = tmp_path / "busy.yaml"
    spec.write_text(_spec_text(busy_port))
    proc = _nexus("simulate", "--spec", str(spec), env={})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"127.0.0.1:{busy_port}" in lines[0]
    assert "devices[0].connection.port (press-01)" in lines[0]
    assert str(spec) in lines[0]


def test_embedded_broker_on_a_busy_port_names_the_setting(busy_port: int) -> None:
    proc = _nexus(
        "services",
        env={
            "NEXUS_DATABASE_URL": f"postgresql://nexus:{SECRET}@127.0.0.1:{free_port()}/nexus",
            "NEXUS_MQTT_URL": "",
            "NEXUS_MQTT_PORT": str(busy_port),
        },
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    assert "NEXUS_MQTT_PORT" in err.strip().splitlines()[-1]
