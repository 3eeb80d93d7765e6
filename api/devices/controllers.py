"""Devices and tags: read the newest version's document; every change writes a new, validated version.

Writes take ``If-Match`` (the version they were based on; stale → 409) and answer with the new
version (also as the ``ETag``). Nothing here changes what runs until the flow is deployed.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.openapi.spec import Example
from litestar.params import Body, HeaderParameter, JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel, ConfigDict, Field

from api.common import audit, audit_version, author_of, base_version, etag, store_of
from api.errors import problems
from control import service as svc
from control.errors import ControlError, InvalidError
from control.store import VersionInfo
from core.settings import Settings

IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match", required=False, description='The version the change is based on, e.g. `"3"`'
    ),
]
FlowId = Annotated[str, PathParameter(description="The flow's id", max_length=200)]
DeviceId = Annotated[str, PathParameter(description="The device's id", max_length=200)]
TagName = Annotated[str, PathParameter(description="The tag's name", max_length=200)]

EXAMPLE_DEVICE: dict[str, Any] = {
    "id": "press-02",
    "connection": {"host": "127.0.0.1", "port": 502, "unit_id": 2, "timeout_s": 1.0},
    "poll_interval_s": 1.0,
    "location": {"enterprise": "acme", "site": "plant1", "area": "pressing", "line": "line1"},
    "tags": [
        {
            "name": "oil_temperature",
            "table": "holding",
            "address": 0,
            "data_type": "int16",
            "scale": 0.1,
            "unit": "degC",
        }
    ],
}
EXAMPLE_TAG: dict[str, Any] = {
    "name": "hydraulic_pressure",
    "table": "holding",
    "address": 1,
    "data_type": "float32",
    "unit": "bar",
    "deadband": {"percent": 0.5, "span": 400},
}
DEVICE_BODY = Body(
    description="A device section of the spec",
    examples=[Example(summary="a Modbus TCP press", value=EXAMPLE_DEVICE)],
)
TAG_BODY = Body(
    description="A tag of the device", examples=[Example(summary="a float32 register", value=EXAMPLE_TAG)]
)
TAG_PATCH_BODY = Body(
    description="JSON merge patch (RFC 7396) onto the tag; `null` removes a field",
    examples=[Example(summary="new scale", value={"scale": 0.01, "deadband": None})],
)


class Written(BaseModel):
    """The version a change wrote."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"flow_id": "line1", "version": 4, "message": "changed tag press-01/temp"}]
        }
    )

    flow_id: str
    version: int
    message: str

    @classmethod
    def of(cls, v: VersionInfo) -> Response[Written]:
        return Response(cls(flow_id=v.flow_id, version=v.number, message=v.message), headers=etag(v.number))


class DeviceTestIn(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"connection": {"host": "192.168.1.20", "port": 502, "unit_id": 1}, "timeout_s": 5}]
        },
    )

    connection: dict[str, Any] | None = Field(
        default=None, description="Try this connection instead of the stored one"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=60)


class TestValue(BaseModel):
    tag: str
    raw: float | str | None
    value: float | str | None
    unit: str
    quality: str


class DeviceTestOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_id": "line1",
                    "device_id": "press-01",
                    "elapsed_ms": 12.5,
                    "values": [
                        {"tag": "temp", "raw": 551.0, "value": 55.1, "unit": "degC", "quality": "good"}
                    ],
                }
            ]
        }
    )

    flow_id: str
    device_id: str
    elapsed_ms: float
    values: list[TestValue]


class BrowseIn(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"connection": {"endpoint": "opc.tcp://127.0.0.1:4840"}, "root": "i=85", "max_depth": 4}
            ]
        },
    )

    connection: dict[str, Any] = Field(description="An OPC UA connection as in a device's `connection`")
    root: str = Field(default="i=85", min_length=1, max_length=500)
    max_depth: int = Field(default=4, ge=1, le=16)
    max_variables: int = Field(default=1000, ge=1, le=10_000)


class BrowsedOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "node_id": "ns=2;s=zone1",
                    "browse_path": "Oven/zone1",
                    "data_type": "Double",
                    "writable": False,
                }
            ]
        }
    )

    node_id: str
    browse_path: str
    data_type: str
    writable: bool


class TagValueIn(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra={"examples": [{"value": 42.5, "timeout_s": 5}]}
    )

    value: float | int | bool | str = Field(description="In the tag's published unit")
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class AckOut(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "request_id": "9f2c",
                    "ok": True,
                    "error": None,
                    "value": 42.5,
                    "timestamp": "2026-11-30T12:00:00.000Z",
                }
            ]
        },
    )

    request_id: str | None = None
    ok: bool
    error: str | None = None


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidError(
            f"{what} must be a JSON object", [("", f"expected an object, got {type(data).__name__}")]
        )
    return data


class DevicesController(Controller):
    path = "/api/v1/flows/{flow_id:str}/devices"
    tags = ["devices"]

    @get("", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(404))
    def list_devices(
        self, request: Request[Any, Any, Any], flow_id: FlowId
    ) -> Response[list[dict[str, Any]]]:
        """The devices of the flow's newest version (secrets masked)."""
        v, devices = svc.list_devices(store_of(request), flow_id)
        return Response(devices, headers=etag(v.number))

    @post("", sync_to_thread=True, opt={"permission": "flows:write"}, responses=problems(404, 409, 413))
    def add_device(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        data: Annotated[Any, DEVICE_BODY],
        if_match: IfMatch = None,
    ) -> Response[Written]:
        """Add a device (a new version; 409 when the id is taken or the version is stale)."""
        v = svc.add_device(
            store_of(request),
            flow_id,
            _object(data, "a device"),
            base=base_version(if_match),
            author=author_of(request),
        )
        audit_version(request, "device.create", v, f"{flow_id}/{data.get('id')}")
        response = Written.of(v)
        response.status_code = 201
        return response

    @get("/{device_id:str}", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(404))
    def get_device(
        self, request: Request[Any, Any, Any], flow_id: FlowId, device_id: DeviceId
    ) -> Response[dict[str, Any]]:
        """One device section of the newest version (secrets masked)."""
        v, device = svc.get_device(store_of(request), flow_id, device_id)
        return Response(device, headers=etag(v.number))

    @put(
        "/{device_id:str}",
        sync_to_thread=True,
        opt={"permission": "flows:write"},
        responses=problems(404, 409, 413),
    )
    def replace_device(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        data: Annotated[Any, DEVICE_BODY],
        if_match: IfMatch = None,
    ) -> Response[Written]:
        """Replace a device section; masked secrets keep their stored value."""
        v = svc.replace_device(
            store_of(request),
            flow_id,
            device_id,
            _object(data, "a device"),
            base=base_version(if_match),
            author=author_of(request),
        )
        audit_version(request, "device.update", v, f"{flow_id}/{device_id}")
        return Written.of(v)

    @delete(
        "/{device_id:str}",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "flows:write"},
        responses=problems(404, 409),
    )
    def delete_device(
        self, request: Request[Any, Any, Any], flow_id: FlowId, device_id: DeviceId, if_match: IfMatch = None
    ) -> Response[Written]:
        """Remove a device (a new version; the flow needs at least one device)."""
        v = svc.delete_device(
            store_of(request), flow_id, device_id, base=base_version(if_match), author=author_of(request)
        )
        audit_version(request, "device.delete", v, f"{flow_id}/{device_id}")
        return Written.of(v)

    @post(
        "/{device_id:str}/test",
        status_code=200,
        opt={"permission": "flows:operate"},
        responses=problems(404, 503),
    )
    async def test_device(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        data: JSONBody[DeviceTestIn | None] = None,
    ) -> DeviceTestOut:
        """Read the device's tags once (with its connection, or `connection` instead): values and qualities.

        A device that does not answer gives bad-quality values (`comm_error`, ...), not an error."""
        body = data or DeviceTestIn()
        result = await svc.read_device_once(
            store_of(request), flow_id, device_id, connection=body.connection, timeout_s=body.timeout_s
        )
        return DeviceTestOut.model_validate(result)

    @get("/{device_id:str}/browse", opt={"permission": "flows:read"}, responses=problems(404, 503))
    async def browse_device(  # noqa: PLR0917 - Litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        root: Annotated[str, QueryParameter(min_length=1, max_length=500)] = "i=85",
        max_depth: Annotated[int, QueryParameter(ge=1, le=16)] = 4,
        max_variables: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
    ) -> list[BrowsedOut]:
        """The variables of an OPC UA device's server under `root` (to pick tags)."""
        store = store_of(request)
        _v, device = svc.get_device(store, flow_id, device_id)
        if device.get("protocol") != "opcua":
            raise InvalidError(
                "not an OPC UA device", [("protocol", f"device {device_id!r} is not an OPC UA device")]
            )
        full = store.get_version(flow_id).spec
        stored = next(d for d in full["devices"] if d.get("id") == device_id)
        found = await svc.browse_opcua(
            stored["connection"], root=root, max_depth=max_depth, max_variables=max_variables
        )
        return [BrowsedOut.model_validate(v) for v in found]


class TagsController(Controller):
    path = "/api/v1/flows/{flow_id:str}/devices/{device_id:str}/tags"
    tags = ["tags"]

    @get("", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(404))
    def list_tags(
        self, request: Request[Any, Any, Any], flow_id: FlowId, device_id: DeviceId
    ) -> Response[list[dict[str, Any]]]:
        """The device's tags in the newest version."""
        v, tags = svc.list_tags(store_of(request), flow_id, device_id)
        return Response(tags, headers=etag(v.number))

    @post("", sync_to_thread=True, opt={"permission": "flows:write"}, responses=problems(404, 409, 413))
    def add_tag(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        data: Annotated[Any, TAG_BODY],
        if_match: IfMatch = None,
    ) -> Response[Written]:
        """Add a tag to the device (a new version)."""
        v = svc.add_tag(
            store_of(request),
            flow_id,
            device_id,
            _object(data, "a tag"),
            base=base_version(if_match),
            author=author_of(request),
        )
        audit_version(request, "tag.create", v, f"{flow_id}/{device_id}/{data.get('name')}")
        response = Written.of(v)
        response.status_code = 201
        return response

    @get("/{tag:str}", sync_to_thread=True, opt={"permission": "flows:read"}, responses=problems(404))
    def get_tag(
        self, request: Request[Any, Any, Any], flow_id: FlowId, device_id: DeviceId, tag: TagName
    ) -> Response[dict[str, Any]]:
        """One tag of the newest version."""
        v, found = svc.get_tag(store_of(request), flow_id, device_id, tag)
        return Response(found, headers=etag(v.number))

    @put(
        "/{tag:str}",
        sync_to_thread=True,
        opt={"permission": "flows:write"},
        responses=problems(404, 409, 413),
    )
    def replace_tag(  # noqa: PLR0917 - Litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        tag: TagName,
        data: Annotated[Any, TAG_BODY],
        if_match: IfMatch = None,
    ) -> Response[Written]:
        """Replace a tag (its `name` must stay)."""
        v = svc.replace_tag(
            store_of(request),
            flow_id,
            device_id,
            tag,
            _object(data, "a tag"),
            base=base_version(if_match),
            author=author_of(request),
        )
        audit_version(request, "tag.update", v, f"{flow_id}/{device_id}/{tag}")
        return Written.of(v)

    @patch(
        "/{tag:str}",
        sync_to_thread=True,
        opt={"permission": "flows:write"},
        responses=problems(404, 409, 413),
    )
    def patch_tag(  # noqa: PLR0917 - Litestar passes them by name
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        tag: TagName,
        data: Annotated[Any, TAG_PATCH_BODY],
        if_match: IfMatch = None,
    ) -> Response[Written]:
        """Change some fields of a tag (JSON merge patch), e.g. its `scale`."""
        v = svc.replace_tag(
            store_of(request),
            flow_id,
            device_id,
            tag,
            _object(data, "a merge patch"),
            base=base_version(if_match),
            author=author_of(request),
            merge=True,
        )
        audit_version(request, "tag.update", v, f"{flow_id}/{device_id}/{tag}")
        return Written.of(v)

    @delete(
        "/{tag:str}",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "flows:write"},
        responses=problems(404, 409),
    )
    def delete_tag(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        tag: TagName,
        if_match: IfMatch = None,
    ) -> Response[Written]:
        """Remove a tag (a new version)."""
        v = svc.delete_tag(
            store_of(request), flow_id, device_id, tag, base=base_version(if_match), author=author_of(request)
        )
        audit_version(request, "tag.delete", v, f"{flow_id}/{device_id}/{tag}")
        return Written.of(v)

    @post(
        "/{tag:str}/value",
        status_code=200,
        sync_to_thread=True,
        opt={"permission": "tags:write_value"},
        responses=problems(404, 409, 503, 504),
    )
    def write_value(
        self,
        request: Request[Any, Any, Any],
        flow_id: FlowId,
        device_id: DeviceId,
        tag: TagName,
        data: JSONBody[TagValueIn],
    ) -> AckOut:
        """Write a value to the device through the flow's command router; the answer is the device's ack (504: none in time).

        `ok: false` with `error` when the router or the device refused the value (read-only tag, out of limits, ...)."""
        settings: Settings = request.app.state.settings
        target = f"{flow_id}/{device_id}/{tag}"
        try:
            ack = svc.write_tag(
                store_of(request),
                settings.effective_mqtt_url,
                flow_id,
                device_id,
                tag,
                data.value,
                timeout_s=data.timeout_s,
            )
        except ControlError as exc:
            detail = {"value": data.value, "error": str(exc)}
            audit(request, "tag.write", target=target, detail=detail, outcome="error")
            raise
        outcome = "ok" if ack.get("ok") else "refused"
        audit(request, "tag.write", target=target, detail={"value": data.value, "ack": ack}, outcome=outcome)
        return AckOut.model_validate(ack)


class OpcUaController(Controller):
    path = "/api/v1/opcua"
    tags = ["devices"]

    @post("/browse", status_code=200, opt={"permission": "flows:read"}, responses=problems(503))
    async def browse(self, data: JSONBody[BrowseIn]) -> list[BrowsedOut]:
        """Browse an OPC UA server's variables before it is in a flow (for picking tags)."""
        found = await svc.browse_opcua(
            data.connection, root=data.root, max_depth=data.max_depth, max_variables=data.max_variables
        )
        return [BrowsedOut.model_validate(v) for v in found]
