"""Flows: specs, versions, diff, validate, deploy, rollback, start, stop, status, import/export."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.openapi.spec import Example
from litestar.params import Body, HeaderParameter, JSONBody, PathParameter, QueryParameter

from api.common import audit, audit_version, author_of, base_version, etag, service, store_of
from api.errors import problems
from api.flows.schemas import (
    EXAMPLE_SPEC,
    DeployIn,
    DeployOut,
    DiffOut,
    FlowCreate,
    FlowOut,
    FlowPatch,
    FlowUpdate,
    ImportIn,
    RollbackIn,
    StatusOut,
    ValidationOut,
    VersionOut,
    VersionSummary,
)
from control import service as svc
from control.service import redact
from dataflows.spec import json_schema, parse_spec

IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        required=False,
        description='The version the change is based on (its ETag, e.g. `"3"`); a stale one gets 409',
    ),
]
FlowId = Annotated[str, PathParameter(description="The flow's id (the spec's `id`)", max_length=200)]

SPEC_BODY = Body(
    description="A flow spec v1 document", examples=[Example(summary="one Modbus press", value=EXAMPLE_SPEC)]
)


def _validation(data: dict[str, Any]) -> ValidationOut:
    spec = parse_spec(data)
    return ValidationOut(
        valid=True,
        id=spec.id,
        devices=len(spec.devices),
        tags=sum(len(d.tags) for d in spec.devices),
        nodes=[n.id for n in (*spec.operators, *spec.sinks)],
    )


class FlowSpecController(Controller):
    """The schema of flow spec v1 and stateless validation (the designer's tools)."""

    path = "/api/v1/flow-specs"
    tags = ["flows"]

    @get("/schema", sync_to_thread=False, opt={"permission": "flows:read"})
    def schema(self) -> dict[str, Any]:
        """The JSON Schema of flow spec v1."""
        return json_schema()

    @post(
        "/validate",
        status_code=200,
        sync_to_thread=False,
        opt={"permission": "flows:read"},
        responses=problems(),
    )
    def validate(self, data: Annotated[dict[str, Any], SPEC_BODY]) -> ValidationOut:
        """Check a spec document; 422 with field paths when it is invalid."""
        return _validation(data)


class FlowsController(Controller):
    """Flows and their versions in the config store."""

    path = "/api/v1/flows"
    tags = ["flows"]

    @get("", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(503))
    def list_flows(self, request: Request[Any, Any, Any]) -> list[FlowOut]:
        """Every flow with its desired state, deployed and newest version."""
        return [FlowOut.of(f) for f in store_of(request).list_flows()]

    @post("", sync_to_thread=True, opt={"permission": "flows:write"}, responses=problems(409, 413))
    def create_flow(
        self, request: Request[Any, Any, Any], data: JSONBody[FlowCreate]
    ) -> Response[VersionOut]:
        """Create a flow from a spec document (version 1); 409 when a flow with its id exists."""
        v = svc.create_flow(
            store_of(request),
            data.spec,
            author=author_of(request),
            message=data.message,
            layout=data.layout,
            processes=data.processes,
        )
        audit_version(request, "flow.create", v, v.flow_id)
        return Response(VersionOut.of(v), status_code=201, headers=etag(v.number))

    @post(
        "/validate",
        status_code=200,
        sync_to_thread=False,
        opt={"permission": "flows:read"},
        responses=problems(413),
    )
    def validate(self, data: Annotated[dict[str, Any], SPEC_BODY]) -> ValidationOut:
        """Check a spec document without storing it; 422 with every problem's field path."""
        return _validation(data)

    @post("/import", sync_to_thread=True, opt={"permission": "flows:write"}, responses=problems(409, 413))
    def import_flow(self, request: Request[Any, Any, Any], data: JSONBody[ImportIn]) -> Response[VersionOut]:
        """Import a spec file's text (new flow, or a new version of the flow with its id); kept byte for byte."""
        v, changed = svc.import_text(
            store_of(request), data.text, author=author_of(request), message=data.message, fmt=data.format
        )
        if changed:
            audit_version(request, "flow.create" if v.number == 1 else "flow.update", v, v.flow_id)
        return Response(VersionOut.of(v), status_code=201 if changed else 200, headers=etag(v.number))

    @get("/{flow_id:str}", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(404))
    def get_flow(self, request: Request[Any, Any, Any], flow_id: FlowId) -> Response[FlowOut]:
        """One flow; its ETag is its newest version (send it back in `If-Match` when changing the flow)."""
        f = store_of(request).get_flow(flow_id)
        return Response(FlowOut.of(f), headers=etag(f.latest_version))

    @put(
        "/{flow_id:str}",
        sync_to_thread=True,
        opt={"permission": "flows:write"},
        responses=problems(404, 409, 413),
    )
    def update_flow(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        data: JSONBody[FlowUpdate],
        if_match: IfMatch = None,
    ) -> Response[VersionOut]:
        """Write a new version of the whole spec; masked secrets (`**********`) keep their stored value."""
        v = svc.update_flow(
            store_of(request),
            flow_id,
            data.spec,
            base=base_version(if_match),
            author=author_of(request),
            message=data.message,
            layout=data.layout,
        )
        audit_version(request, "flow.update", v, flow_id)
        return Response(VersionOut.of(v), headers=etag(v.number))

    @patch(
        "/{flow_id:str}", sync_to_thread=True, opt={"permission": "flows:write"}, responses=problems(404, 409)
    )
    def patch_flow(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        data: JSONBody[FlowPatch],
        if_match: IfMatch = None,
    ) -> Response[FlowOut]:
        """Change how the flow runs (`processes`, applied at its next start)."""
        before = store_of(request).get_flow(flow_id).processes
        f = store_of(request).set_processes(flow_id, data.processes, base=base_version(if_match))
        change = {"processes": {"before": before, "after": f.processes}}
        audit(request, "flow.update", target=flow_id, detail={"changes": change})
        svc._wake(service(request, "supervisor"))
        return Response(FlowOut.of(f), headers=etag(f.latest_version))

    @delete(
        "/{flow_id:str}", sync_to_thread=True, opt={"permission": "flows:write"}, responses=problems(404, 409)
    )
    def delete_flow(self, request: Request[Any, Any, Any], flow_id: FlowId, if_match: IfMatch = None) -> None:
        """Delete a stopped flow and its history (409 while it is wanted running)."""
        latest = store_of(request).get_flow(flow_id).latest_version
        store_of(request).delete_flow(flow_id, base=base_version(if_match))
        audit(request, "flow.delete", target=flow_id, detail={"latest_version": latest})
        svc._wake(service(request, "supervisor"))

    @get(
        "/{flow_id:str}/spec", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(404)
    )
    def get_spec(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        version: Annotated[
            int | None, QueryParameter(ge=1, required=False, description="Default: the newest")
        ] = None,
    ) -> Response[dict[str, Any]]:
        """A version's spec document (secrets masked)."""
        v = store_of(request).get_version(flow_id, version)
        return Response(redact(v.spec), headers=etag(v.number))

    @get(
        "/{flow_id:str}/export",
        sync_to_thread=True,
        opt={"permission": "flows:read"},
        responses=problems(404),
        media_type="text/plain",
    )
    def export_flow(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        version: Annotated[
            int | None, QueryParameter(ge=1, required=False, description="Default: the newest")
        ] = None,
    ) -> Response[str]:
        """A version's text exactly as imported (or as written through the API, rendered as YAML).

        Served as `text/plain` (the exact text; the filename in `Content-Disposition` says YAML or JSON).
        A document with passwords or URL credentials comes back rendered with them masked
        (`X-Nexus-Secrets-Masked: true`); `nexus flows export` gives the exact text."""
        text, fmt, masked = svc.export_text(store_of(request), flow_id, version, mask_secrets=True)
        return Response(
            text,
            media_type="text/plain; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{flow_id}.{fmt}"',
                "X-Nexus-Secrets-Masked": "true" if masked else "false",
            },
        )

    @get(
        "/{flow_id:str}/versions",
        sync_to_thread=True,
        opt={"permission": "flows:read"},
        responses=problems(404),
    )
    def list_versions(self, request: Request[Any, Any, Any], flow_id: FlowId) -> list[VersionSummary]:
        """Every version of the flow, newest first (author, time, message, parent)."""
        return [VersionSummary.of(v) for v in store_of(request).list_versions(flow_id)]

    @get(
        "/{flow_id:str}/versions/{number:int}",
        sync_to_thread=True,
        opt={"permission": "flows:read"},
        responses=problems(404),
    )
    def get_version(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        number: Annotated[int, PathParameter(description="The version number")],
    ) -> Response[VersionOut]:
        """One version with its document (secrets masked)."""
        v = store_of(request).get_version(flow_id, number)
        return Response(VersionOut.of(v), headers=etag(v.number))

    @get(
        "/{flow_id:str}/diff", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(404)
    )
    def diff(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        from_version: Annotated[int, QueryParameter(name="from", ge=1, description="The older version")],
        to_version: Annotated[int, QueryParameter(name="to", ge=1, description="The newer version")],
    ) -> DiffOut:
        """What changed between two versions (field paths, old and new values) and what deploying it would do."""
        return DiffOut.model_validate(svc.diff_versions(store_of(request), flow_id, from_version, to_version))

    @post(
        "/{flow_id:str}/deploy",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "flows:deploy"},
        responses=problems(404, 409),
    )
    def deploy(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        data: JSONBody[DeployIn | None] = None,
        if_match: IfMatch = None,
    ) -> DeployOut:
        """Deploy a version (default: the newest) and want the flow running; says hot, redeploy or noop and why."""
        result = svc.deploy(
            store_of(request),
            flow_id,
            version=data.version if data else None,
            base=base_version(if_match),
            supervisor=service(request, "supervisor"),
        )
        audit(request, "flow.deploy", target=flow_id, detail=result.as_json())
        return DeployOut.model_validate(result.as_json())

    @post(
        "/{flow_id:str}/rollback",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "flows:deploy"},
        responses=problems(404, 409),
    )
    def rollback(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        data: JSONBody[RollbackIn],
        if_match: IfMatch = None,
    ) -> DeployOut:
        """Write an older version again as the newest one and deploy it (history only grows)."""
        result = svc.rollback(
            store_of(request),
            flow_id,
            data.version,
            base=base_version(if_match),
            author=author_of(request),
            message=data.message,
            supervisor=service(request, "supervisor"),
        )
        audit(request, "flow.rollback", target=flow_id, detail={"to": data.version, **result.as_json()})
        return DeployOut.model_validate(result.as_json())

    @post(
        "/{flow_id:str}/start",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "flows:operate"},
        responses=problems(404, 409),
    )
    def start(self, request: Request[Any, Any, Any], flow_id: FlowId) -> FlowOut:
        """Want the deployed version running (409 when nothing is deployed)."""
        f = svc.set_state(store_of(request), flow_id, "running", service(request, "supervisor"))
        audit(request, "flow.start", target=flow_id, detail={"deployed_version": f.deployed_version})
        return FlowOut.of(f)

    @post(
        "/{flow_id:str}/stop",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "flows:operate"},
        responses=problems(404),
    )
    def stop(self, request: Request[Any, Any, Any], flow_id: FlowId) -> FlowOut:
        """Want the flow stopped (the supervisor drains it)."""
        f = svc.set_state(store_of(request), flow_id, "stopped", service(request, "supervisor"))
        audit(request, "flow.stop", target=flow_id, detail={"deployed_version": f.deployed_version})
        return FlowOut.of(f)

    @get(
        "/{flow_id:str}/status",
        sync_to_thread=True,
        opt={"permission": "flows:read"},
        responses=problems(404),
    )
    def status(self, request: Request[Any, Any, Any], flow_id: FlowId) -> StatusOut:
        """Desired and actual state: processes, restarts, last error lines, points/s, the version running."""
        return StatusOut.model_validate(
            svc.flow_status(
                store_of(request), flow_id, service(request, "supervisor"), service(request, "live")
            )
        )
