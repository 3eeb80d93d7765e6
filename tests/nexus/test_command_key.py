"""``nexus up``/``nexus demo`` always have a command key: the configured one, else one kept in the data folder."""

from __future__ import annotations

import stat
from pathlib import Path

from core.settings import Settings
from nexus.up import COMMAND_KEY_FILE, with_command_key


def test_a_key_is_made_once_in_the_data_folder_and_a_configured_one_wins(tmp_path: Path) -> None:
    first = with_command_key(Settings(data_dir=tmp_path))
    path = tmp_path / COMMAND_KEY_FILE
    assert first.command_key and path.read_text().strip() == first.command_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert with_command_key(Settings(data_dir=tmp_path)).command_key == first.command_key  # a restart
    configured = with_command_key(Settings(data_dir=tmp_path, command_key="from-env"))
    assert configured.command_key == "from-env"
