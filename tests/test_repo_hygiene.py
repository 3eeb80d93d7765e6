"""Repository hygiene: CI stops only what it started, no dead public names, no pointers to
documents that are not in the repository."""

from __future__ import annotations

import importlib
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]


BY_NAME = re.compile(r"\b(p" + "kill|kill" + r"all)\b")  # spelled apart: this file is not an offender


def test_ci_and_recipes_never_kill_processes_by_name() -> None:
    """Killing by process name would end every matching process on a shared machine, not only ours."""
    offenders = []
    compose = ROOT / "deploy" / "compose"
    deploy = [compose / "Dockerfile", compose / "docker-compose.yml", compose / "docker-compose.emqx.yml"]
    for path in [*_tracked(".ci/*"), ROOT / "justfile", *deploy]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if BY_NAME.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_no_pointer_to_documents_outside_the_repository() -> None:
    outside = re.compile(r"\b(DESIGN|BYTEWAX|STYLE|CONTROL_PLANE)\.md\b|/work/shared")
    me = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _tracked("*.py", "*.md", "*.toml", "*.yaml", "*.yml", "justfile", ".ci/*")
        if path.resolve() != me
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("core.uns", "CONFIG_PREFIX"),  # the control plane's topic is control.types.CONFIG_TOPIC
        ("dataflows.spec", "TagSpec"),
        ("dataflows.spec", "AnyDeviceSpec"),  # DeviceSpec is the discriminated union
        ("connectors.modbus", "loadtest"),  # a benchmark: bench/modbus_loadtest.py
    ],
)
def test_dead_names_are_gone(module: str, name: str) -> None:
    mod = importlib.import_module(module)
    assert not hasattr(mod, name)
    with pytest.raises(ImportError):
        importlib.import_module(f"{module}.{name}")


def test_writable_tag_has_no_unenforced_roles() -> None:
    from connectors.commands import WritableTag

    assert "roles" not in {f.name for f in fields(WritableTag)}


def test_the_modbus_load_test_lives_with_the_benchmarks() -> None:
    assert importlib.import_module("bench.modbus_loadtest").__doc__
