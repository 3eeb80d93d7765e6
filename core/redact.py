"""Secrets out of sight: URLs, DSNs and documents as they may be logged, printed or answered.

One place decides what a secret is, so logs, the CLI, status messages and the API mask the same
things the same way (``***``):

>>> redact_url("postgresql://nexus:s3cret@db:5432/nexus?sslmode=require&password=s3cret")
'postgresql://nexus:***@db:5432/nexus?sslmode=require&password=***'
>>> redact_url("host=db user=u password='s3 cret' dbname=n")
'host=db user=u password=*** dbname=n'
>>> doc = {"connection": {"url": "mqtt://edge:pw@b:1883", "password": "pw", "username": "edge"}}
>>> redact(doc)
{'connection': {'url': 'mqtt://edge:***@b:1883', 'password': '***', 'username': 'edge'}}
>>> restore_secrets(redact(doc), doc) == doc
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MASK",
    "SECRET_KEYS",
    "URL_KEYS",
    "is_masked",
    "redact",
    "redact_url",
    "restore_secrets",
    "url_without_password",
]

MASK = "***"
"""What a secret reads as in every answer, log line and message."""

_LEGACY_MASKS = frozenset({MASK, "**********"})
"""Masks a client may send back to keep a stored secret (the API used ten stars before)."""

SECRET_KEYS = frozenset(
    {"password", "passwd", "secret", "token", "api_key", "private_key_password", "command_key", "passphrase"}
)
"""Keys whose string values are secrets, wherever they are in a document."""

URL_KEYS = frozenset({"url", "endpoint", "database_url", "mqtt_url", "dsn"})
"""Keys whose values are URLs that may carry credentials."""

_SECRET_QUERY = re.compile(r"(?i)(^|[?&;])(password|passwd|pwd|secret|token)=[^&;#]*")
_CONNINFO_PASSWORD = re.compile(r"(?i)\b(password|passwd)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def is_masked(value: object) -> bool:
    return isinstance(value, str) and value in _LEGACY_MASKS


def redact_url(url: str) -> str:
    """The URL with its password (userinfo and ``password=`` query parameters) masked as ``***``:
    what may be printed, logged or put in a status message. Works for any scheme (PostgreSQL DSN
    URLs, MQTT, HTTP) and for key=value conninfo strings."""
    if "://" not in url:
        return _CONNINFO_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an invalid port: mask everything between :// and @
        return re.sub(r"(://[^:/@]*:)[^@]*@", rf"\1{MASK}@", url)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}", parts.query)
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


def redact(doc: Any) -> Any:
    """A copy of ``doc`` (mappings and lists, any depth) with secrets and URL credentials masked."""
    if isinstance(doc, Mapping):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            if k in SECRET_KEYS and isinstance(v, str) and v:
                out[k] = MASK
            elif k in URL_KEYS and isinstance(v, str):
                out[k] = redact_url(v)
            else:
                out[k] = redact(v)
        return out
    if isinstance(doc, list | tuple):
        return [redact(v) for v in doc]
    return doc


def _key_of(item: Any) -> str | None:
    if isinstance(item, Mapping):
        for k in ("id", "name"):
            if isinstance(item.get(k), str):
                return str(item[k])
    return None


def restore_secrets(new: Any, old: Any) -> Any:
    """``new`` (a document sent back by a client) with every masked secret taken from ``old`` at the
    same place (list items matched by ``id``/``name``, else by position): sending back ``***`` keeps
    the stored value. A masked URL keeps the stored one only if nothing else in it changed."""
    if isinstance(new, Mapping):
        old_map = old if isinstance(old, Mapping) else {}
        out: dict[str, Any] = {}
        for k, v in new.items():
            prev = old_map.get(k)
            if k in SECRET_KEYS and is_masked(v) and isinstance(prev, str):
                out[k] = prev
            elif k in URL_KEYS and isinstance(v, str) and isinstance(prev, str) and _has_mask(v):
                out[k] = prev if _same_masked(v, prev) else v
            else:
                out[k] = restore_secrets(v, prev)
        return out
    if isinstance(new, list):
        old_list = old if isinstance(old, list) else []
        by_key = {_key_of(o): o for o in old_list if _key_of(o) is not None}
        return [
            restore_secrets(
                v,
                by_key.get(_key_of(v))
                if _key_of(v) is not None
                else (old_list[i] if i < len(old_list) else None),
            )
            for i, v in enumerate(new)
        ]
    return new


def _has_mask(url: str) -> bool:
    return any(m in url for m in _LEGACY_MASKS)


def _same_masked(shown: str, stored: str) -> bool:
    masked = redact_url(stored)
    return shown in (masked, masked.replace(MASK, "**********"))
