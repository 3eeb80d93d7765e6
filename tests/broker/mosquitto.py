"""A real mosquitto with a given configuration, on a free loopback port, for the broker tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nexus.embedded import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
REPO = Path(__file__).parents[2]
SHIPPED = REPO / "deploy" / "broker"

needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists() or shutil.which("mosquitto_passwd") is None,
    reason="needs Debian's mosquitto (apt-get install mosquitto)",
)


def password_file(folder: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file made with ``mosquitto_passwd`` (hashed, as in production)."""
    path = folder / "passwd"
    for i, (user, password) in enumerate(users.items()):
        args = ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(path), user, password]
        subprocess.run(args, check=True, capture_output=True)
    path.chmod(0o644)  # mosquitto may drop privileges
    return path


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def broker_folder() -> Iterator[Path]:
    """A temp folder mosquitto can read after dropping root (not under pytest's 0700 basetemp)."""
    folder = Path(tempfile.mkdtemp(prefix="nexus-test-broker-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def mosquitto(folder: Path, conf: str) -> Iterator[int]:
    """Run mosquitto with ``conf`` (``{port}`` is replaced by a free port); yields the port."""
    port = free_port()
    path = folder / "mosquitto.conf"
    path.write_text(conf.replace("{port}", str(port)))
    folder.chmod(0o755)
    log = (folder / "mosquitto.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 10
        while not _port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start:\n{(folder / 'mosquitto.log').read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
