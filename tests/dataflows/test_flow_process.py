"""The flow process as ``nexus run`` starts it: logging from NEXUS_LOG_LEVEL / NEXUS_LOG_FORMAT,
and Ctrl-C: the first drains (exit 0), a second one aborts (exit 130), never a Rust panic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.mqtt_probe import collect

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
SPEC = """
version: 1
id: sigtest
devices:
  - id: gw-01
    protocol: mqtt
    location: {enterprise: acme, site: plant9, area: utilities, line: line3}
    tags:
      - {name: ambient, topic: sensors/gw-01/ambient, value_path: v, unit: degC}
sinks:
  - {id: uns, type: mqtt_uns, qos: 1}
"""


class Output:
    """Reads a process's merged stdout/stderr line by line on a thread (no blocking reads in tests)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> str:
        self._thread.join(10)
        return self.text()


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], Output]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, "RUST_BACKTRACE": "1", **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, Output(proc)


def test_nexus_run_logs_as_configured_and_ctrl_c_drains(tmp_path: Path, mqtt_url: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    proc, out = _start(
        [sys.executable, "-m", "nexus.cli", "run", "--spec", str(spec)],
        {"NEXUS_MQTT_URL": mqtt_url, "NEXUS_LOG_LEVEL": "INFO", "NEXUS_LOG_FORMAT": "json"},
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or "MQTT source gw-01 connected" in out.text(),
            timeout=60,
            what="the flow's INFO log line that its MQTT source connected",
        )
        assert proc.poll() is None, out.text()
        running = wait_for(lambda: _retained_status(mqtt_url), timeout=30, what="the flow's retained status")
        assert list(running) == ["$nexus/status/flows/sigtest/0"]  # keyed by flow and process id
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.join()
    assert code == 0, text
    assert "panicked" not in text and "Traceback" not in text and "BytewaxRuntimeError" not in text, text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    assert {r["level"] for r in records} <= {"INFO", "WARNING", "ERROR"}
    assert any(r["logger"] == "connectors.mqtt.source" and r["level"] == "INFO" for r in records)
    assert any("draining" in r["message"] for r in records)
    assert _retained_status(mqtt_url) == {}  # a clean stop leaves nothing retained


def _retained_status(mqtt_url: str) -> dict[str, bytes]:
    got = collect(mqtt_url, "$nexus/status/flows/sigtest/#", "$nexus/status/flows/sigtest/marker")
    return {m.topic: m.payload for m in got if m.retain}


HANDLER_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from dataflows.telemetry import install_stop_handlers
    stop = threading.Event()
    install_stop_handlers(stop)
    print("ready", flush=True)
    stop.wait()
    print("draining", flush=True)
    while True:  # a drain that takes long (a sink flushing to a slow service)
        time.sleep(0.05)
    """
)


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_sigint_during_a_drain_aborts_at_once(first: signal.Signals) -> None:
    proc, out = _start([sys.executable, "-c", HANDLER_SCRIPT], {})
    try:
        wait_for(lambda: "ready" in out.text() or proc.poll() is not None, timeout=30, what="ready")
        proc.send_signal(first)
        wait_for(lambda: "draining" in out.text() or proc.poll() is not None, timeout=30, what="draining")
        assert proc.poll() is None, out.text()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.join()
    assert code == 130, text
    assert "aborted" in text and "Traceback" not in text, text
