"""The Litestar control API (v1), a thin shell over ``control/``.

- ``/api/v1/flows``: flows and their immutable versions (CRUD, versions, diff, validate, import,
  export, deploy, rollback, start, stop, status); ``/api/v1/flows/{id}/devices[/{device}/tags]``:
  devices and tags as views over the newest version, each change a new validated version;
  ``POST …/devices/{device}/test`` reads a device once; ``…/devices/{device}/browse`` and
  ``POST /api/v1/opcua/browse`` list OPC UA variables; ``POST …/tags/{tag}/value`` writes through
  the flow's command router and answers with the device's ack (504 when none comes).
- Changes carry the version they were based on in ``If-Match`` (the ETag of every read); a stale one
  is a 409. Errors are ``application/problem+json`` with field paths (``api.errors``).
- OpenAPI at ``/schema`` (``/schema/openapi.json``); every route declares its permission in ``opt``.
"""
