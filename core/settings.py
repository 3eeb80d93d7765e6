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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from core.redact import redact_url, url_without_password

__all__ = ["ENV_DOC", "Settings", "redact_url", "url_without_password", "with_tls_files"]

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
    "NEXUS_COMMAND_KEY": "shared key the API signs write commands with and the flows verify them with "
    "(HMAC-SHA256); `nexus up`/`nexus demo` make one in the data folder when unset. Never logged",
    "NEXUS_MQTT_CA_FILE": "CA certificate (PEM) that verifies the broker of an mqtts:// URL (default: the system's)",
    "NEXUS_MQTT_CERT_FILE": "client certificate (PEM) for mqtts:// brokers that require one",
    "NEXUS_MQTT_KEY_FILE": "private key (PEM) of NEXUS_MQTT_CERT_FILE",
    "NEXUS_TLS_CERT_FILE": "certificate (PEM) the API serves HTTPS with (with NEXUS_TLS_KEY_FILE)",
    "NEXUS_TLS_KEY_FILE": "private key (PEM) of NEXUS_TLS_CERT_FILE",
    "NEXUS_ADMIN_PASSWORD": "password of the `admin` user made on first start (unset: a random one is printed "
    "once and written to {NEXUS_DATA_DIR}/admin-password, mode 0600)",
    "NEXUS_AUTH_SECRET": "key that signs the API's access tokens, >= 32 characters; set the same on every API "
    "process behind one address (unset: random per process, clients refresh after a restart)",
    "NEXUS_ACCESS_TOKEN_TTL_S": "seconds an access token is valid (default 900)",
    "NEXUS_AUDIT_RETENTION_DAYS": "days audit events are kept (default 365)",
    "NEXUS_FLOW_MQTT_URL": "broker URL the supervisor gives the flows (their own broker user); default NEXUS_MQTT_URL",
    "NEXUS_SUPERVISOR_BACKEND": "where flows run: local (child processes, default) or kubernetes (StatefulSets)",
    "NEXUS_K8S_NAMESPACE": "kubernetes backend: the namespace of the flows' StatefulSets (default nexus)",
    "NEXUS_K8S_IMAGE": "kubernetes backend: the image the flow pods run (default nexus-edge:0.1.0)",
    "NEXUS_K8S_FLOW_SECRET": "kubernetes backend: Secret with the flows' database-url and mqtt-url (default nexus-flow)",
    "NEXUS_SOURCE_MAX_WAIT_MS": "flows: how long a source with nothing to hand over may keep its worker asleep "
    "(0..1000 ms, default 0: the worker polls every 1 ms as Bytewax does; e.g. 20 for mostly idle flows), see connectors/nap.py",
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
    command_key: str | None = field(default=None, repr=False)
    """Shared HMAC key of signed write commands (:mod:`core.signing`); never printed."""
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    admin_password: str | None = field(default=None, repr=False)
    auth_secret: str | None = field(default=None, repr=False)
    access_token_ttl_s: int = 900
    audit_retention_days: int = 365
    flow_mqtt_url: str | None = None
    supervisor_backend: str = "local"
    k8s_namespace: str = "nexus"
    k8s_image: str = "nexus-edge:0.1.0"
    k8s_flow_secret: str = "nexus-flow"

    @property
    def effective_database_url(self) -> str:
        """The configured database, else the embedded PostgreSQL's address."""
        return self.database_url or f"postgresql://postgres@127.0.0.1:{self.pg_port}/nexus"

    @property
    def effective_mqtt_url(self) -> str:
        """The configured broker, else the embedded broker's address."""
        url = self.mqtt_url or f"mqtt://127.0.0.1:{self.mqtt_port}"
        return with_tls_files(url, self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)

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
            elif f.name in ("data_dir", "spool_dir") or f.name.endswith("_file"):
                values[f.name] = Path(raw)
            elif f.name == "supervisor_backend" and raw not in ("local", "kubernetes"):
                raise ValueError(f"{key} must be local or kubernetes, got {raw!r}")
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]


def with_tls_files(url: str, ca: Path | None, cert: Path | None, key: Path | None) -> str:
    """``url`` with the MQTT TLS files as query parameters (``ca_file``, ``cert_file``, ``key_file``),
    the form :func:`connectors.mqtt.url.parse_mqtt_url` reads, so one URL carries everything a
    client needs (to the flows, the API's subscribers, every sink). Files the URL names win.

    >>> with_tls_files("mqtts://b:8883", Path("/etc/ca.pem"), None, None)
    'mqtts://b:8883?ca_file=%2Fetc%2Fca.pem'
    """
    from urllib.parse import parse_qsl, urlencode

    if not url.startswith(("mqtts://", "ssl://")):
        return url  # the files only matter for a TLS broker
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, path in (("ca_file", ca), ("cert_file", cert), ("key_file", key)):
        if path is not None:
            query.setdefault(name, str(path))
    return urlunsplit(parts._replace(query=urlencode(query))) if query else url
