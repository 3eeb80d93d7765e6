"""Runtime settings, read from ``NEXUS_*`` environment variables.

Nothing here starts anything: an empty setting means "use the embedded default".

>>> s = Settings.from_env({"NEXUS_DATABASE_URL": "postgresql://u@db/nexus"})
>>> s.database_url, s.mqtt_url
('postgresql://u@db/nexus', None)
>>> redact_url("postgresql://nexus:s3cret@db:5432/nexus?sslmode=require&password=s3cret")
'postgresql://nexus:***@db:5432/nexus?sslmode=require&password=***'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_DOC: dict[str, str] = {
    "NEXUS_DATABASE_URL": "PostgreSQL/TimescaleDB URL for the historian; empty starts the embedded PostgreSQL",
    "NEXUS_MQTT_URL": "broker URL (mqtt://[user:pass@]host:port); empty starts the embedded broker",
    "NEXUS_SPEC": "flow spec file (YAML or JSON) run by dataflows.telemetry:flow; default: the demo spec",
    "NEXUS_DATA_DIR": "folder for embedded PostgreSQL data and other local state (default .nexus)",
    "NEXUS_PG_PORT": "TCP port of the embedded PostgreSQL (default 54329)",
    "NEXUS_MQTT_PORT": "TCP port of the embedded MQTT broker (default 18830)",
    "NEXUS_SPOOL_DIR": "folder of the sinks' disk spools (store-and-forward while the broker or the database "
    "is away; default {NEXUS_DATA_DIR}/spool); one sub-folder per flow, sink and worker",
    "NEXUS_LOG_LEVEL": "log level: DEBUG, INFO, WARNING, ERROR (default INFO)",
    "NEXUS_LOG_FORMAT": "log format: text or json (one JSON object per line; default text)",
    "NEXUS_API_HOST": "address the API of `nexus up` binds to (default 127.0.0.1)",
    "NEXUS_API_PORT": "TCP port of the API of `nexus up` (default 8080)",
    "NEXUS_SNAPSHOT_INTERVAL_S": "seconds between a supervised flow's recovery snapshots (default 5)",
    "NEXUS_ADMIN_PASSWORD": "password of the `admin` user made on first start (unset: a random one is printed "
    "once and written to {NEXUS_DATA_DIR}/admin-password, mode 0600)",
    "NEXUS_AUTH_SECRET": "key that signs the API's access tokens, >= 32 characters; set the same on every API "
    "process behind one address (unset: random per process, clients refresh after a restart)",
    "NEXUS_ACCESS_TOKEN_TTL_S": "seconds an access token is valid (default 900)",
    "NEXUS_AUDIT_RETENTION_DAYS": "days audit events are kept (default 365)",
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
    log_format: str = "text"
    spool_dir: Path | None = None

    @property
    def effective_spool_dir(self) -> Path:
        """The configured spool folder, else ``spool`` under the data folder.

        >>> Settings().effective_spool_dir, Settings(spool_dir=Path("/var/spool/nexus")).effective_spool_dir
        (PosixPath('.nexus/spool'), PosixPath('/var/spool/nexus'))
        """
        return self.spool_dir or self.data_dir / "spool"

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    snapshot_interval_s: int = 5
    admin_password: str | None = field(default=None, repr=False)
    auth_secret: str | None = field(default=None, repr=False)
    access_token_ttl_s: int = 900
    audit_retention_days: int = 365

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
            if f.name in ("snapshot_interval_s", "access_token_ttl_s", "audit_retention_days"):
                if not raw.isdigit() or int(raw) < 1:
                    raise ValueError(f"{key} must be a whole number >= 1, got {raw!r}")
                values[f.name] = int(raw)
            elif f.name in ("pg_port", "mqtt_port", "api_port"):
                try:
                    port = int(raw)
                except ValueError:
                    raise ValueError(f"{key} must be a port number, got {raw!r}") from None
                if not 0 < port < 65536:
                    raise ValueError(f"{key} must be in 1..65535, got {port}")
                values[f.name] = port
            elif f.name in ("data_dir", "spool_dir"):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]


_SECRET_QUERY = re.compile(r"(?i)(^|[?&;])(password|passwd|pwd|secret|token)=[^&;#]*")


def redact_url(url: str) -> str:
    """The URL with its password (userinfo and ``password=`` query parameters) masked as ``***``:
    what may be printed, logged or put in a status message. Works for any scheme (PostgreSQL DSN
    URLs, MQTT, HTTP); a string that is not a URL comes back with only its query secrets masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an invalid port: mask everything between :// and @
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}"
    query = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_without_password(url: str) -> str:
    """The URL with its password removed (not masked), for a command a person copies: ``psql``
    then asks for the password instead of receiving a wrong one.

    >>> url_without_password("postgresql://nexus:s3cret@db:5432/nexus")
    'postgresql://nexus@db:5432/nexus'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}@{hostport}"
    query = _SECRET_QUERY.sub("", parts.query).lstrip("&;")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
