"""Runtime settings, read from ``NEXUS_*`` environment variables.

Nothing here starts anything: an empty setting means "use the embedded default".

>>> s = Settings.from_env({"NEXUS_DATABASE_URL": "postgresql://u@db/nexus"})
>>> s.database_url, s.mqtt_url
('postgresql://u@db/nexus', None)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

ENV_DOC: dict[str, str] = {
    "NEXUS_DATABASE_URL": "PostgreSQL/TimescaleDB URL for the historian; empty starts the embedded PostgreSQL",
    "NEXUS_MQTT_URL": "broker URL (mqtt://[user:pass@]host:port); empty starts the embedded broker",
    "NEXUS_SPEC": "flow spec file (YAML or JSON) run by dataflows.telemetry:flow; default: the demo spec",
    "NEXUS_DATA_DIR": "folder for embedded PostgreSQL data and other local state (default .nexus)",
    "NEXUS_PG_PORT": "TCP port of the embedded PostgreSQL (default 54329)",
    "NEXUS_MQTT_PORT": "TCP port of the embedded MQTT broker (default 18830)",
    "NEXUS_LOG_LEVEL": "log level: DEBUG, INFO, WARNING, ERROR (default INFO)",
    "NEXUS_API_HOST": "address the API of `nexus up` binds to (default 127.0.0.1)",
    "NEXUS_API_PORT": "TCP port of the API of `nexus up` (default 8080)",
    "NEXUS_SNAPSHOT_INTERVAL_S": "seconds between a supervised flow's recovery snapshots (default 5)",
}


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    mqtt_url: str | None = None
    spec: str | None = None
    data_dir: Path = Path(".nexus")
    pg_port: int = 54329
    mqtt_port: int = 18830
    log_level: str = "INFO"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    snapshot_interval_s: int = 5

    @property
    def effective_database_url(self) -> str:
        """The configured database, else the embedded PostgreSQL's address."""
        return self.database_url or f"postgresql://postgres@127.0.0.1:{self.pg_port}/nexus"

    @property
    def effective_mqtt_url(self) -> str:
        """The configured broker, else the embedded broker's address."""
        return self.mqtt_url or f"mqtt://127.0.0.1:{self.mqtt_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            key = f"NEXUS_{f.name.upper()}"
            raw = env.get(key, "").strip()
            if not raw:
                continue
            if f.name == "snapshot_interval_s":
                if not raw.isdigit() or int(raw) < 1:
                    raise ValueError(f"{key} must be a whole number of seconds >= 1, got {raw!r}")
                values[f.name] = int(raw)
            elif f.name in ("pg_port", "mqtt_port", "api_port"):
                try:
                    port = int(raw)
                except ValueError:
                    raise ValueError(f"{key} must be a port number, got {raw!r}") from None
                if not 0 < port < 65536:
                    raise ValueError(f"{key} must be in 1..65535, got {port}")
                values[f.name] = port
            elif f.name == "data_dir":
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]
