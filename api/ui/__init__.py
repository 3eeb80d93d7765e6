"""The web UI: the built bundle in ``api/ui_dist`` (shipped in the package) served at ``/``.

``/assets/*`` are content-hashed files (cached for a year); every other path that is not the API's
answers ``index.html`` (the single-page app routes in the browser). Paths under the API's own prefixes
(``/api``, ``/schema``, ``/metrics``, ``/health``) never fall back to the UI: an unknown one stays 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.exceptions import NotFoundException
from litestar.response import File

DIST = Path(__file__).resolve().parent.parent / "ui_dist"
"""Where ``just ui`` builds the bundle (vite's ``outDir``)."""

RESERVED = ("api", "schema", "metrics", "health")
"""First path segments that belong to the API, never to the UI."""

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".json": "application/json",
}


def _index() -> Response[bytes]:
    index = DIST / "index.html"
    if not index.is_file():
        raise NotFoundException("the web UI is not built (run `just ui`)")
    return Response(
        index.read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@get("/assets/{name:str}", opt={"permission": "public"}, include_in_schema=False, sync_to_thread=False)
def asset(name: str) -> File:
    """A bundle file by its (content-hashed) name; names with a path separator are never files here."""
    folder = DIST / "assets"
    path = folder / name
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise NotFoundException(f"no UI asset {name[:80]!r}")
    return File(
        path,
        content_disposition_type="inline",
        media_type=_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"},
    )


@get(["/", "/{path:path}"], opt={"permission": "public"}, include_in_schema=False, sync_to_thread=False)
def spa(path: str | None = None) -> Response[bytes]:
    """``index.html`` for the app's client-side routes (``/devices``, ``/flows/demo``, ...)."""
    first = (path or "").strip("/").split("/", 1)[0]
    if first in RESERVED or first == "assets":
        raise NotFoundException(f"no route {path!r}")
    return _index()


def route_handlers() -> list[Any]:
    return [asset, spa]
