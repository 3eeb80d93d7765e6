"""What the README states about messages, recipes and the API matches what the code does."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from connectors.derived import agg_messages
from connectors.mqtt.publisher import _encode_tags, format_batch
from core.batch import PointBatch
from core.records import AggBatch
from core.tags import TagInfo
from nexus.embedded import free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TAG = TagInfo(7, "press-01", "temp", "degC", "acme/p1/a/l/press-01/temp")


def test_the_telemetry_example_has_the_published_shape() -> None:
    m = re.search(r"`(\{\"value\": 55\.1, \"timestamp\": [^`]*\})`", README)
    assert m, "the telemetry example is gone from the README"
    example = json.loads(m.group(1))
    batch = PointBatch.from_values("press-01", [7], [55.1], ts_ns=1_795_000_000 * 10**9 + 123_456_000)
    ((_, payload),) = format_batch(batch, _encode_tags({7: TAG}))[0]
    real = json.loads(payload)
    assert list(real) == list(example)
    shape = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")  # microseconds, UTC
    assert shape.match(real["timestamp"]) and shape.match(example["timestamp"]), (real, example)


def test_the_aggregate_fields_are_the_published_ones() -> None:
    m = re.search(r"`\{tag topic\}/_agg/\{window\}` with (.*?); alerts:", README, re.S)
    assert m, "the aggregate topic line is gone from the README"
    documented = set(re.findall(r"`([a-z_]+)`", m.group(1))) - {"1m"}
    one = np.array([1.0])
    batch = AggBatch(
        "press-01", "1m", 60 * 10**9, np.array([0], np.int64), np.array([7], np.int64), np.array([1]),
        one, one, one, one, one, one,
    )  # fmt: skip
    ((_, payload),) = agg_messages(batch, {7: TAG})
    assert documented == set(json.loads(payload))


@pytest.mark.skipif(
    shutil.which("just") is None and not (Path(sys.executable).parent / "just").exists(), reason="just"
)
def test_the_just_recipes_are_the_documented_ones() -> None:
    just = shutil.which("just") or str(Path(sys.executable).parent / "just")
    real = set(
        subprocess.run(
            [just, "--summary"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    m = re.search(r"`just` lists the recipes: (.*?)\.\n", README, re.S)
    assert m, "the recipe list is gone from the README"
    assert set(re.findall(r"`([a-z-]+)`", m.group(1))) == real - {"default"}


def test_the_documented_api_command_starts_the_api() -> None:
    m = re.search(r"Start the control API[^`]*`(python -m uvicorn [^`]*)`", README, re.S)
    assert m, "the API start command is gone from the README"
    port = free_port()
    argv = shlex.split(m.group(1).replace("\n", " "))
    argv = [sys.executable if a == "python" else a for a in argv]
    argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def health() -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return bytes(r.read())
        except OSError:
            return None

    try:
        assert json.loads(wait_for(health, timeout=60, what="the API's /health")) == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
