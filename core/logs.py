"""Process logging for every NEXUS entry point: ``nexus`` and the flow process alike.

``bytewax.run`` configures no logging, so the flow module calls :func:`configure_logging` itself;
``NEXUS_LOG_LEVEL`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``) and ``NEXUS_LOG_FORMAT`` (``text``
or ``json``: one JSON object per line, for log shippers) apply to both. Records go to stderr.

>>> import io, json, logging
>>> buf = io.StringIO()
>>> configure_logging("INFO", "json", stream=buf)
>>> logging.getLogger("nexus.example").info("polled device=%s", "press-01", extra={"device": "press-01"})
>>> line = json.loads(buf.getvalue())
>>> line["level"], line["logger"], line["message"], line["device"]
('INFO', 'nexus.example', 'polled device=press-01', 'press-01')
>>> reset_logging()
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "configure_logging", "reset_logging"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("amqtt", "transitions", "pymodbus", "asyncua", "snap7", "alembic")
"""Libraries that are chatty at INFO: kept at WARNING unless the level is DEBUG."""
WIRE_DUMPERS = ("asyncua", "amqtt")
"""Libraries whose DEBUG records dump whole protocol messages, credentials included (an OPC UA
ActivateSession carries the user's password, an MQTT CONNECT the broker password): never below
INFO, whatever ``NEXUS_LOG_LEVEL`` says."""

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO-8601 UTC), ``level``, ``logger``, ``message``,
    the fields given with ``extra=`` and, for an exception, ``exc_info`` (the formatted traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


class _NexusHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (found again to be replaced, never doubled)."""


def configure_logging(level: str = "INFO", fmt: str = "text", *, stream: TextIO | None = None) -> None:
    """Send every record at ``level`` and above to ``stream`` (stderr) as ``fmt``; idempotent.

    Raises ``ValueError`` naming the setting for an unknown level or format.
    """
    level = level.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"NEXUS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    fmt = fmt.lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"NEXUS_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    reset_logging()
    handler = _NexusHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
    if level == "DEBUG":
        for name in WIRE_DUMPERS:
            logging.getLogger(name).setLevel(logging.INFO)


def reset_logging() -> None:
    """Remove the handler :func:`configure_logging` installed, if any."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _NexusHandler)]:
        root.removeHandler(h)
