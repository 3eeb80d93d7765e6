"""``nexus flows import`` / ``export`` round-trip a spec file byte for byte through a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.store import ConfigStore
from dataflows.spec import DEMO_SPEC
from nexus.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def env(db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NEXUS_DATABASE_URL", db)
    return db


def test_import_export_round_trips_exact_bytes(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # comments, flow-style maps, CRLF line ends and a trailing space: all things a YAML dump would change
    original = DEMO_SPEC.read_bytes().replace(b"\n", b"\r\n") + b"# end \r\n"
    src = tmp_path / "line.yaml"
    src.write_bytes(original)
    assert main(["flows", "import", str(src), "-m", "from git"]) == 0
    assert "flow 'telemetry': version 1" in capsys.readouterr().out
    out = tmp_path / "exported.yaml"
    assert main(["flows", "export", "telemetry", "-o", str(out)]) == 0
    assert out.read_bytes() == original
    # importing the same text again writes nothing; a changed file writes version 2, and v1 still exports
    assert main(["flows", "import", str(src)]) == 0
    assert "unchanged" in capsys.readouterr().out
    src.write_bytes(original.replace(b"poll_interval_s: 2.0", b"poll_interval_s: 3.0"))
    assert main(["flows", "import", str(src), "--deploy"]) == 0
    printed = capsys.readouterr().out
    assert "version 2" in printed and "deployed version 2" in printed
    assert main(["flows", "export", "telemetry", "--version", "1", "-o", str(out)]) == 0
    assert out.read_bytes() == original
    store = ConfigStore(env)
    try:
        v2 = store.get_version("telemetry", 2)
        assert v2.author.startswith("cli") and v2.parent_number == 1
        assert store.get_flow("telemetry").deployed_version == 2
    finally:
        store.close()


def test_json_specs_round_trip_too(env: str, tmp_path: Path) -> None:
    text = (
        '{"version": 1, "id": "j1",  "devices": [{"id": "d", "connection": {"host": "127.0.0.1"},\n'
        '"location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},\n'
        '"tags": [{"name": "t", "table": "holding", "address": 0}]}], "sinks": [{"id": "u", "type": "mqtt_uns"}]}'
    )
    src = tmp_path / "j1.json"
    src.write_text(text, encoding="utf-8")
    assert main(["flows", "import", str(src)]) == 0
    out = tmp_path / "out.json"
    assert main(["flows", "export", "j1", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == text


def test_a_bad_file_names_the_field(env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.yaml"
    src.write_text(DEMO_SPEC.read_text().replace("poll_interval_s: 1.0", "poll_interval_s: -1", 1))
    assert main(["flows", "import", str(src)]) == 1
    err = capsys.readouterr().err
    assert "devices[0].poll_interval_s" in err
    assert main(["flows", "export", "ghost"]) == 1
    assert "'ghost' does not exist" in capsys.readouterr().err
