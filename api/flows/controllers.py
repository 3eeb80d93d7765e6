from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.params import JSONBody

from dataflows.spec import json_schema, parse_spec


class FlowSpecController(Controller):
    path = "/api/v1/flow-specs"

    @get("/schema", sync_to_thread=False, opt={"permission": "flows:read"})
    def schema(self) -> dict[str, Any]:
        """The JSON Schema of flow spec v1."""
        return json_schema()

    @post("/validate", status_code=200, sync_to_thread=False, opt={"permission": "flows:read"})
    def validate(self, data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
        """Check a spec document; 422 with field paths when it is invalid."""
        spec = parse_spec(data)
        return {
            "valid": True,
            "id": spec.id,
            "devices": len(spec.devices),
            "tags": sum(len(d.tags) for d in spec.devices),
            "nodes": [n.id for n in (*spec.operators, *spec.sinks)],
        }
