"""The flows API's request and response bodies (DTOs; never the store's table models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control.service import redact
from control.store import FlowInfo, VersionInfo

EXAMPLE_SPEC: dict[str, Any] = {
    "version": 1,
    "id": "line1",
    "description": "One press, published and stored",
    "devices": [
        {
            "id": "press-01",
            "connection": {"host": "127.0.0.1", "port": 502, "unit_id": 1, "timeout_s": 1.0},
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
                    "deadband": {"absolute": 0.2},
                },
            ],
        }
    ],
    "operators": [{"id": "norm", "type": "normalize"}, {"id": "db", "type": "deadband"}],
    "sinks": [{"id": "uns", "type": "mqtt_uns"}, {"id": "hist", "type": "historian"}],
}


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(frozen=True, extra="forbid", json_schema_extra={"examples": [example]})


class FlowCreate(_In):
    model_config = _example({"spec": EXAMPLE_SPEC, "message": "first version", "processes": 1})

    spec: dict[str, Any] = Field(description="The flow spec v1 document; the flow's id is the spec's `id`")
    message: str = Field(default="", max_length=2000)
    layout: dict[str, Any] | None = Field(default=None, description="The flow designer's layout")
    processes: int = Field(default=1, ge=1, le=64, description="Bytewax processes that run the flow")


class FlowUpdate(_In):
    model_config = _example({"spec": EXAMPLE_SPEC, "message": "scale of oil_temperature"})

    spec: dict[str, Any]
    message: str = Field(default="", max_length=2000)
    layout: dict[str, Any] | None = None


class FlowPatch(_In):
    model_config = _example({"processes": 2})

    processes: int = Field(ge=1, le=64)


class ImportIn(_In):
    model_config = _example({"text": "version: 1\nid: line1\n...", "format": "yaml", "message": "from git"})

    text: str = Field(
        min_length=1, max_length=5_000_000, description="The spec file's text, kept byte for byte"
    )
    format: Literal["yaml", "json"] | None = Field(
        default=None, description="Default: JSON if it starts with `{`"
    )
    message: str = Field(default="", max_length=2000)


class DeployIn(_In):
    model_config = _example({"version": 3})

    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="Default: the newest version")


class RollbackIn(_In):
    model_config = _example({"version": 2, "message": "back to the scale that worked"})

    version: int = Field(ge=1, le=2**31 - 1)
    message: str | None = Field(default=None, max_length=2000)


class FlowOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "line1",
                    "name": "line1",
                    "description": "",
                    "desired_state": "running",
                    "deployed_version": 3,
                    "latest_version": 3,
                    "processes": 1,
                    "created_at": "2026-11-30T12:00:00Z",
                    "updated_at": "2026-11-30T12:05:00Z",
                }
            ]
        }
    )

    id: str
    name: str
    description: str
    desired_state: Literal["running", "stopped"]
    deployed_version: int | None
    latest_version: int
    processes: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, f: FlowInfo) -> FlowOut:
        return cls(
            id=f.flow_id,
            name=f.name,
            description=f.description,
            desired_state=f.desired_state,
            deployed_version=f.deployed_version,
            latest_version=f.latest_version,
            processes=f.processes,
            created_at=f.created_at,
            updated_at=f.updated_at,
        )


class VersionSummary(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_id": "line1",
                    "number": 2,
                    "parent_number": 1,
                    "author": "api",
                    "message": "scale of oil_temperature",
                    "created_at": "2026-11-30T12:05:00Z",
                }
            ]
        }
    )

    flow_id: str
    number: int
    parent_number: int | None
    author: str
    message: str
    created_at: datetime

    @classmethod
    def of(cls, v: VersionInfo) -> VersionSummary:
        return cls(
            flow_id=v.flow_id,
            number=v.number,
            parent_number=v.parent_number,
            author=v.author,
            message=v.message,
            created_at=v.created_at,
        )


class VersionOut(VersionSummary):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_id": "line1",
                    "number": 2,
                    "parent_number": 1,
                    "author": "api",
                    "message": "scale",
                    "created_at": "2026-11-30T12:05:00Z",
                    "spec": EXAMPLE_SPEC,
                    "layout": None,
                    "source_format": "yaml",
                }
            ]
        }
    )

    spec: dict[str, Any] = Field(description="The document, secrets masked")
    layout: dict[str, Any] | None
    source_format: Literal["yaml", "json"]

    @classmethod
    def of(cls, v: VersionInfo) -> VersionOut:
        return cls(
            flow_id=v.flow_id,
            number=v.number,
            parent_number=v.parent_number,
            author=v.author,
            message=v.message,
            created_at=v.created_at,
            spec=redact(v.spec),
            layout=v.layout,
            source_format=v.source_format,
        )


class ValidationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"valid": True, "id": "line1", "devices": 1, "tags": 1, "nodes": ["norm", "uns"]}]
        }
    )

    valid: bool
    id: str
    devices: int
    tags: int
    nodes: list[str]


class DeployOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_id": "line1",
                    "version": 3,
                    "against": 2,
                    "path": "hot",
                    "reasons": ["device press-01: tags[oil_temperature].scale changed"],
                    "devices": ["press-01"],
                    "desired_state": "running",
                }
            ]
        }
    )

    flow_id: str
    version: int = Field(description="The version now deployed")
    against: int | None = Field(description="The version the flow ran when the deploy was planned")
    path: Literal["hot", "redeploy", "noop"]
    reasons: list[str]
    devices: list[str] = Field(description="Devices a hot deploy patches")
    desired_state: Literal["running", "stopped"]


class ChangeOut(BaseModel):
    path: str
    op: Literal["changed", "added", "removed", "reordered"]
    old: Any = None
    new: Any = None


class PlanOut(BaseModel):
    path: Literal["hot", "redeploy", "noop"]
    reasons: list[str]
    devices: list[str]


class DiffOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_id": "line1",
                    "from_version": 1,
                    "to_version": 2,
                    "changes": [
                        {
                            "path": "devices[press-01].tags[oil_temperature].scale",
                            "op": "changed",
                            "old": 0.1,
                            "new": 0.01,
                        }
                    ],
                    "plan": {
                        "path": "hot",
                        "reasons": ["device press-01: tags[oil_temperature].scale changed"],
                        "devices": ["press-01"],
                    },
                }
            ]
        }
    )

    flow_id: str
    from_version: int
    to_version: int
    changes: list[ChangeOut]
    plan: PlanOut


class StatusOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_id": "line1",
                    "desired_state": "running",
                    "deployed_version": 3,
                    "latest_version": 3,
                    "state": "running",
                    "version": 3,
                    "pids": [4242],
                    "restarts": 0,
                    "last_error": [],
                    "since": "2026-11-30T12:05:00+00:00",
                    "points_per_s": 812.5,
                    "live": None,
                }
            ]
        }
    )

    flow_id: str
    desired_state: Literal["running", "stopped"]
    deployed_version: int | None
    latest_version: int
    state: str = Field(description="What the supervisor reports (`unknown` when no supervisor runs here)")
    version: int | None = Field(description="The version the flow's processes run")
    pids: list[int]
    restarts: int
    last_error: list[str]
    since: str | None
    points_per_s: float | None
    live: dict[str, Any] | None = Field(description="The flow's latest status-topic payload")
