"""What the API and the CLI do with the config store: the use cases, framework-free.

Every change to a flow's document (whole spec, one device, one tag) reads the newest version, edits
the document, and writes it back as a new version through :meth:`ConfigStore.commit` with the
version it was based on, so a concurrent edit is a 409 and never a lost update. Secrets (passwords,
credentials in URLs) are masked in what the API returns; a document written back with the mask in
place keeps the stored secret.

Deploys are planned with :func:`control.planner.plan` against the version the flow runs (the
supervisor's view when it has one, else the deployed version); the answer says ``hot``,
``redeploy`` or ``noop`` and why. The supervisor acts on it (it is woken after every deploy, start
and stop, and also listens to ``NOTIFY nexus_config``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from prometheus_client import Counter

from control.errors import ConflictError, InvalidError, NotFoundError, UnavailableError
from control.planner import changes, plan
from control.store import ConfigStore, FlowInfo, SourceFormat, VersionInfo, render_yaml, validate_document
from control.types import FlowRuntime, Plan
from core.redact import MASK, SECRET_KEYS, URL_KEYS, redact, redact_url, restore_secrets
from core.uns import CMD_PREFIX

log = logging.getLogger(__name__)


class AckTimeoutError(UnavailableError):
    """The device's acknowledgement of a write did not arrive in time (the API answers 504)."""


# -- metrics -----------------------------------------------------------------------------------------


def _deploys() -> Counter:
    """``nexus_deploys_total{path}``, defined once in :mod:`control.metrics` (with the API's ``/metrics``)."""
    from control.metrics import DEPLOYS

    return DEPLOYS


# -- documents ---------------------------------------------------------------------------------------


def parse_text(
    text: str, fmt: SourceFormat | None = None, source: str | None = None
) -> tuple[dict[str, Any], SourceFormat]:
    """A spec document from YAML or JSON text (format from ``fmt``, else guessed: JSON starts with ``{``)."""
    fmt = fmt or ("json" if text.lstrip("\ufeff \t\r\n").startswith("{") else "yaml")
    try:
        doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        where = f" ({source})" if source else ""
        raise InvalidError(f"not valid {fmt.upper()}{where}", [("", str(exc))]) from None
    if not isinstance(doc, dict):
        raise InvalidError("a spec is a mapping", [("", f"a spec is a mapping, got {type(doc).__name__}")])
    return doc, fmt


# -- flows -------------------------------------------------------------------------------------------


def _check_base(flow_id: str, current: VersionInfo, base: int | None) -> None:
    if base is not None and base != current.number:
        raise ConflictError(
            f"flow {flow_id!r} is at version {current.number}; this change was based on version {base} "
            "(reload and apply it again)"
        )


def create_flow(
    store: ConfigStore,
    doc: Mapping[str, Any],
    *,
    author: str,
    message: str = "",
    layout: Mapping[str, Any] | None = None,
    processes: int = 1,
) -> VersionInfo:
    return store.create_flow(
        doc, author=author, message=message or "created", layout=layout, processes=processes
    )


def update_flow(
    store: ConfigStore,
    flow_id: str,
    doc: Mapping[str, Any],
    *,
    base: int | None,
    author: str,
    message: str = "",
    layout: Mapping[str, Any] | None = None,
) -> VersionInfo:
    """Write a whole new document as the next version (masked secrets keep their stored value)."""
    current = store.get_version(flow_id)
    _check_base(flow_id, current, base)
    restored = restore_secrets(doc, current.spec)
    return store.commit(
        flow_id, restored, base=current.number, author=author, message=message or "updated", layout=layout
    )


def import_text(
    store: ConfigStore,
    text: str,
    *,
    author: str,
    message: str = "",
    fmt: SourceFormat | None = None,
    source: str | None = None,
) -> tuple[VersionInfo, bool]:
    """Import a spec file: a new flow, or a new version of the flow with its id; ``(version, changed)``.

    The text is kept as it is, so :func:`export_text` gives back the same bytes. Importing the
    text the newest version already has writes nothing (``changed`` is false).
    """
    doc, fmt = parse_text(text, fmt, source)
    validate_document(doc, source)
    flow_id = str(doc["id"])
    try:
        latest = store.get_version(flow_id)
    except NotFoundError:
        version = store.create_flow(
            doc,
            author=author,
            message=message or f"imported {source or ''}".strip(),
            source_text=text,
            source_format=fmt,
        )
        return version, True
    if latest.source_text == text:
        return latest, False
    version = store.commit(
        flow_id,
        doc,
        base=latest.number,
        author=author,
        message=message or f"imported {source or ''}".strip(),
        source_text=text,
        source_format=fmt,
    )
    return version, True


def export_text(
    store: ConfigStore, flow_id: str, number: int | None = None, *, mask_secrets: bool = False
) -> tuple[str, SourceFormat, bool]:
    """The text of a version (default: the newest) exactly as it was imported or written: ``(text, format, masked)``.

    ``mask_secrets`` (the API): a document holding passwords or URL credentials is rendered from its
    masked form instead (``masked`` is then true); the exact text stays for the CLI, whose user
    reaches the database anyway.
    """
    version = store.get_version(flow_id, number)
    if mask_secrets:
        shown = redact(version.spec)
        if shown != version.spec:
            if version.source_format == "json":
                return json.dumps(shown, indent=2) + "\n", "json", True
            return render_yaml(shown), "yaml", True
    return version.source_text, version.source_format, False


def _shown(path: str, value: Any) -> Any:
    """A diff value as the API may show it: secrets masked (the change itself still shows)."""
    key = path.rsplit(".", 1)[-1]
    if key in SECRET_KEYS and isinstance(value, str) and value:
        return MASK
    if key in URL_KEYS and isinstance(value, str):
        return redact_url(value)
    return redact(value)


def diff_versions(store: ConfigStore, flow_id: str, a: int, b: int) -> dict[str, Any]:
    """What changed from version ``a`` to ``b`` (field paths, old and new values) and what deploying it would do."""
    old, new = store.get_version(flow_id, a), store.get_version(flow_id, b)
    found = [
        (path, kind, _shown(path, o), _shown(path, n)) for path, kind, o, n in changes(old.spec, new.spec)
    ]
    p = plan(validate_document(old.spec), validate_document(new.spec))
    return {
        "flow_id": flow_id,
        "from_version": a,
        "to_version": b,
        "changes": [{"path": path, "op": kind, "old": o, "new": n} for path, kind, o, n in found],
        "plan": plan_json(p),
    }


def plan_json(p: Plan) -> dict[str, Any]:
    return {"path": p.kind, "reasons": list(p.reasons), "devices": sorted(p.device_patches)}


# -- deploy, start, stop ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeployResult:
    """What a deploy did: the version now deployed, and the path the running flow takes to it."""

    flow: FlowInfo
    version: int
    against: int | None
    path: Literal["hot", "redeploy", "noop"]
    reasons: tuple[str, ...]
    devices: tuple[str, ...] = ()
    created_version: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "flow_id": self.flow.flow_id,
            "version": self.version,
            "against": self.against,
            "path": self.path,
            "reasons": list(self.reasons),
            "devices": list(self.devices),
            "desired_state": self.flow.desired_state,
        }


def running_version(flow: FlowInfo, supervisor: Any | None) -> int | None:
    """The version the flow runs: the supervisor's word when it has the flow, else the deployed one
    (when the flow is wanted running)."""
    if supervisor is not None:
        try:
            runtime: FlowRuntime | None = supervisor.status().get(flow.flow_id)
        except Exception:  # a supervisor that cannot answer must not block a deploy
            log.warning("supervisor status unavailable; planning against the deployed version", exc_info=True)
            runtime = None
        if runtime is not None and runtime.state not in ("stopped", "failed") and runtime.version is not None:
            return runtime.version
    return flow.deployed_version if flow.desired_state == "running" else None


def _plan_against(store: ConfigStore, flow_id: str, against: int | None, target: VersionInfo) -> Plan:
    if against is None:
        return Plan("redeploy", (f"the flow is not running; it starts on version {target.number}",))
    if against == target.number:
        return Plan("noop", (f"the flow already runs version {against}",))
    old = store.get_version(flow_id, against)
    return plan(validate_document(old.spec), validate_document(target.spec))


def _wake(supervisor: Any | None) -> None:
    if supervisor is not None:
        try:
            supervisor.wake()
        except Exception:  # NOTIFY reaches it anyway; a failed wake only delays the reconcile
            log.warning("could not wake the supervisor", exc_info=True)


def deploy(
    store: ConfigStore,
    flow_id: str,
    *,
    version: int | None = None,
    base: int | None = None,
    supervisor: Any | None = None,
) -> DeployResult:
    """Deploy ``version`` (default: the newest) and want the flow running; plan it against what runs."""
    flow = store.get_flow(flow_id)
    if base is not None and base != flow.latest_version:
        raise ConflictError(
            f"flow {flow_id!r} is at version {flow.latest_version}; this deploy was based on version {base}"
        )
    target = store.get_version(flow_id, version)
    against = running_version(flow, supervisor)
    p = _plan_against(store, flow_id, against, target)
    deployed, _previous = store.deploy(flow_id, target.number, base=base)
    _deploys().labels(p.kind).inc()
    _wake(supervisor)
    log.info("deployed", extra={"flow": flow_id, "version": target.number, "path": p.kind})
    return DeployResult(deployed, target.number, against, p.kind, p.reasons, tuple(sorted(p.device_patches)))


def rollback(
    store: ConfigStore,
    flow_id: str,
    number: int,
    *,
    base: int | None,
    author: str,
    message: str | None = None,
    supervisor: Any | None = None,
) -> DeployResult:
    """Write version ``number`` again as the newest version and deploy it."""
    flow = store.get_flow(flow_id)
    against = running_version(flow, supervisor)
    version = store.rollback(flow_id, number, base=base, author=author, message=message)
    p = _plan_against(store, flow_id, against, version)
    _deploys().labels(p.kind).inc()
    _wake(supervisor)
    return DeployResult(
        store.get_flow(flow_id),
        version.number,
        against,
        p.kind,
        p.reasons,
        tuple(sorted(p.device_patches)),
        True,
    )


def set_state(
    store: ConfigStore, flow_id: str, state: Literal["running", "stopped"], supervisor: Any | None = None
) -> FlowInfo:
    flow = store.set_desired_state(flow_id, state)
    _wake(supervisor)
    return flow


def flow_status(
    store: ConfigStore, flow_id: str, supervisor: Any | None = None, live: Any | None = None
) -> dict[str, Any]:
    """Desired and actual state of a flow: the store's view, the supervisor's processes, the flow's own status."""
    flow = store.get_flow(flow_id)
    out: dict[str, Any] = {
        "flow_id": flow_id,
        "desired_state": flow.desired_state,
        "deployed_version": flow.deployed_version,
        "latest_version": flow.latest_version,
        "state": "unknown" if supervisor is None else "stopped",
        "version": None,
        "pids": [],
        "restarts": 0,
        "last_error": [],
        "since": None,
        "points_per_s": None,
        "live": None,
    }
    if supervisor is not None:
        try:
            runtime: FlowRuntime | None = supervisor.status().get(flow_id)
        except Exception:  # the store's view still answers
            log.warning("supervisor status unavailable", exc_info=True)
            runtime = None
        if runtime is not None:
            out.update(
                state=runtime.state,
                version=runtime.version,
                pids=list(runtime.pids),
                restarts=runtime.restarts,
                last_error=list(runtime.last_error),
                since=runtime.since.isoformat() if runtime.since is not None else None,
            )
    if live is not None:
        status = live.flow_status(flow_id)
        if status is not None:
            out["live"] = status
            pps = status.get("points_per_s")
            out["points_per_s"] = pps if isinstance(pps, int | float) else None
    return out


# -- devices and tags: views over the newest version -------------------------------------------------


def _find(items: list[dict[str, Any]], key: str, value: str, what: str, where: str) -> int:
    for i, item in enumerate(items):
        if item.get(key) == value:
            return i
    raise NotFoundError(f"{what} {value!r} does not exist in {where}")


def list_devices(store: ConfigStore, flow_id: str) -> tuple[VersionInfo, list[dict[str, Any]]]:
    version = store.get_version(flow_id)
    return version, [redact(d) for d in version.spec["devices"]]


def get_device(store: ConfigStore, flow_id: str, device_id: str) -> tuple[VersionInfo, dict[str, Any]]:
    version = store.get_version(flow_id)
    i = _find(version.spec["devices"], "id", device_id, "device", f"flow {flow_id!r}")
    return version, redact(version.spec["devices"][i])


def _edit(
    store: ConfigStore,
    flow_id: str,
    *,
    base: int | None,
    author: str,
    message: str,
    edit: Any,
) -> VersionInfo:
    """Read the newest version, apply ``edit(doc)`` to a copy, write it back based on that version."""
    current = store.get_version(flow_id)
    _check_base(flow_id, current, base)
    doc = copy.deepcopy(current.spec)
    edit(doc)
    return store.commit(flow_id, doc, base=current.number, author=author, message=message)


def _check_device_doc(device: Any) -> None:
    if not isinstance(device, Mapping):
        raise InvalidError(
            "a device is an object", [("", f"expected an object, got {type(device).__name__}")]
        )
    if not isinstance(device.get("id"), str):
        raise InvalidError("a device needs an id", [("id", "Field required")])


def add_device(
    store: ConfigStore,
    flow_id: str,
    device: Mapping[str, Any],
    *,
    base: int | None,
    author: str,
    message: str = "",
) -> VersionInfo:
    _check_device_doc(device)
    device_id = str(device["id"])

    def edit(doc: dict[str, Any]) -> None:
        if any(d.get("id") == device_id for d in doc["devices"]):
            raise ConflictError(f"device {device_id!r} already exists in flow {flow_id!r}")
        doc["devices"].append(dict(device))

    return _edit(
        store, flow_id, base=base, author=author, message=message or f"added device {device_id}", edit=edit
    )


def replace_device(
    store: ConfigStore,
    flow_id: str,
    device_id: str,
    device: Mapping[str, Any],
    *,
    base: int | None,
    author: str,
    message: str = "",
) -> VersionInfo:
    _check_device_doc(device)
    if device["id"] != device_id:
        raise InvalidError("the device's id is not the one in the path", [("id", f"must be {device_id!r}")])

    def edit(doc: dict[str, Any]) -> None:
        i = _find(doc["devices"], "id", device_id, "device", f"flow {flow_id!r}")
        doc["devices"][i] = restore_secrets(dict(device), doc["devices"][i])

    return _edit(
        store, flow_id, base=base, author=author, message=message or f"changed device {device_id}", edit=edit
    )


def delete_device(
    store: ConfigStore, flow_id: str, device_id: str, *, base: int | None, author: str
) -> VersionInfo:
    def edit(doc: dict[str, Any]) -> None:
        i = _find(doc["devices"], "id", device_id, "device", f"flow {flow_id!r}")
        del doc["devices"][i]

    return _edit(store, flow_id, base=base, author=author, message=f"removed device {device_id}", edit=edit)


def _device_tags(doc: dict[str, Any], flow_id: str, device_id: str) -> list[dict[str, Any]]:
    i = _find(doc["devices"], "id", device_id, "device", f"flow {flow_id!r}")
    tags: list[dict[str, Any]] = doc["devices"][i]["tags"]
    return tags


def list_tags(store: ConfigStore, flow_id: str, device_id: str) -> tuple[VersionInfo, list[dict[str, Any]]]:
    version = store.get_version(flow_id)
    return version, [redact(t) for t in _device_tags(version.spec, flow_id, device_id)]


def get_tag(store: ConfigStore, flow_id: str, device_id: str, tag: str) -> tuple[VersionInfo, dict[str, Any]]:
    version = store.get_version(flow_id)
    tags = _device_tags(version.spec, flow_id, device_id)
    return version, redact(tags[_find(tags, "name", tag, "tag", f"device {device_id!r}")])


def _check_tag_doc(tag: Any) -> None:
    if not isinstance(tag, Mapping):
        raise InvalidError("a tag is an object", [("", f"expected an object, got {type(tag).__name__}")])
    if not isinstance(tag.get("name"), str):
        raise InvalidError("a tag needs a name", [("name", "Field required")])


def add_tag(
    store: ConfigStore,
    flow_id: str,
    device_id: str,
    tag: Mapping[str, Any],
    *,
    base: int | None,
    author: str,
    message: str = "",
) -> VersionInfo:
    _check_tag_doc(tag)
    name = str(tag["name"])

    def edit(doc: dict[str, Any]) -> None:
        tags = _device_tags(doc, flow_id, device_id)
        if any(t.get("name") == name for t in tags):
            raise ConflictError(f"tag {name!r} already exists on device {device_id!r}")
        tags.append(dict(tag))

    return _edit(
        store,
        flow_id,
        base=base,
        author=author,
        message=message or f"added tag {device_id}/{name}",
        edit=edit,
    )


def replace_tag(
    store: ConfigStore,
    flow_id: str,
    device_id: str,
    name: str,
    tag: Mapping[str, Any],
    *,
    base: int | None,
    author: str,
    message: str = "",
    merge: bool = False,
) -> VersionInfo:
    """Replace a tag (``merge``: JSON merge patch, RFC 7396, onto the stored tag; ``null`` removes a field)."""
    if not isinstance(tag, Mapping):
        raise InvalidError("a tag is an object", [("", f"expected an object, got {type(tag).__name__}")])

    def edit(doc: dict[str, Any]) -> None:
        tags = _device_tags(doc, flow_id, device_id)
        i = _find(tags, "name", name, "tag", f"device {device_id!r}")
        new = merge_patch(tags[i], tag) if merge else dict(tag)
        if new.get("name") != name:
            raise InvalidError(
                "a tag is renamed by removing it and adding the new one", [("name", f"must be {name!r}")]
            )
        tags[i] = new

    return _edit(
        store,
        flow_id,
        base=base,
        author=author,
        message=message or f"changed tag {device_id}/{name}",
        edit=edit,
    )


def delete_tag(
    store: ConfigStore, flow_id: str, device_id: str, name: str, *, base: int | None, author: str
) -> VersionInfo:
    def edit(doc: dict[str, Any]) -> None:
        tags = _device_tags(doc, flow_id, device_id)
        del tags[_find(tags, "name", name, "tag", f"device {device_id!r}")]

    return _edit(
        store, flow_id, base=base, author=author, message=f"removed tag {device_id}/{name}", edit=edit
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch.

    >>> merge_patch({"a": 1, "b": {"c": 2}}, {"b": {"c": None, "d": 3}})
    {'a': 1, 'b': {'d': 3}}
    """
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# -- device test read and OPC UA browse ---------------------------------------------------------------


async def read_device_once(
    store: ConfigStore,
    flow_id: str,
    device_id: str,
    *,
    connection: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Read the device's tags once with its connection (or ``connection`` instead): values and qualities.

    Uses the protocol's own client, as the flow would; a device that does not answer gives
    bad-quality values, not an error.
    """
    from core.quality import quality_name
    from dataflows.compiler import device_plans
    from dataflows.spec import MqttDeviceSpec, OpcUaDeviceSpec

    version = store.get_version(flow_id)
    doc = copy.deepcopy(version.spec)
    i = _find(doc["devices"], "id", device_id, "device", f"flow {flow_id!r}")
    if connection is not None:
        doc["devices"][i]["connection"] = restore_secrets(
            dict(connection), doc["devices"][i].get("connection")
        )
    try:
        spec = validate_document(doc)
    except InvalidError as exc:
        raise InvalidError(
            exc.args[0], [(p.replace(f"devices[{i}].", "", 1), m) for p, m in exc.problems]
        ) from None
    device = spec.devices[i]
    if isinstance(device, MqttDeviceSpec):
        raise InvalidError("an MQTT device is not polled", [("protocol", "subscribe to its topics instead")])
    if isinstance(device, OpcUaDeviceSpec) and device.connection.mode == "subscribe":
        conn = device.connection.model_copy(update={"mode": "poll"})
        spec = spec.model_copy(
            update={
                "devices": [
                    device.model_copy(update={"connection": conn}) if d.id == device_id else d
                    for d in spec.devices
                ]
            }
        )
        device = spec.devices[i]
    (dev_plan,) = [p for p in device_plans(spec) if p.device_id == device_id]
    client = _test_client(dev_plan)
    started = time.monotonic()
    try:
        batch = await asyncio.wait_for(client.poll(), timeout_s)
    except TimeoutError:
        raise UnavailableError(f"device {device_id!r} did not answer within {timeout_s:g} s") from None
    finally:
        try:
            await asyncio.wait_for(client.close(), 5.0)
        except Exception:
            log.debug("closing the test client failed", exc_info=True)
    elapsed_ms = (time.monotonic() - started) * 1000
    from core.batch import tag_id_for

    tags = {tag_id_for(device_id, t.name): t for t in device.tags}
    text = batch.text or {}
    values: list[dict[str, Any]] = []
    for tag_id, raw, q in zip(
        batch.tag_ids.tolist(), batch.values.tolist(), batch.quality.tolist(), strict=True
    ):
        tag = tags.get(tag_id)
        if tag is None:
            continue
        number = raw if not math.isnan(raw) else None
        values.append(
            {
                "tag": tag.name,
                "raw": text.get(tag_id, number),
                "value": number * tag.scale + tag.offset if number is not None else text.get(tag_id),
                "unit": tag.unit,
                "quality": quality_name(q),
            }
        )
    return {"flow_id": flow_id, "device_id": device_id, "elapsed_ms": round(elapsed_ms, 1), "values": values}


def _test_client(dev_plan: Any) -> Any:
    """The protocol's client for one read, outside the process's device metrics (the flow owns those)."""
    from connectors.modbus.client import ModbusDeviceClient
    from connectors.modbus.config import ModbusDevicePlan
    from connectors.opcua.client import OpcUaDeviceClient
    from connectors.opcua.config import OpcUaDevicePlan
    from connectors.s7.client import S7DeviceClient

    if isinstance(dev_plan, ModbusDevicePlan):
        return ModbusDeviceClient(dev_plan, metrics=False)
    if isinstance(dev_plan, OpcUaDevicePlan):
        return OpcUaDeviceClient(dev_plan, metrics=False)
    return S7DeviceClient(dev_plan, metrics=False)


async def browse_opcua(
    connection: Mapping[str, Any], *, root: str = "i=85", max_depth: int = 4, max_variables: int = 1000
) -> list[dict[str, Any]]:
    """The variables of an OPC UA server under ``root`` (for picking tags before deploying)."""
    from pydantic import ValidationError

    from connectors.opcua.client import browse_server
    from connectors.opcua.config import OpcUaConnection

    try:
        conn = OpcUaConnection.model_validate(dict(connection))
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
        raise InvalidError(
            "invalid OPC UA connection", [(f"connection.{p}" if p else "connection", m) for p, m in problems]
        ) from None
    try:
        found = await browse_server(conn, root, max_depth=max_depth, max_variables=max_variables)
    except ValueError as exc:
        raise InvalidError("cannot browse", [("root", str(exc))]) from None
    except (TimeoutError, OSError, ConnectionError) as exc:
        raise UnavailableError(
            f"OPC UA server {conn.endpoint} did not answer: {type(exc).__name__}"
        ) from None
    except Exception as exc:  # asyncua raises its own UaError family for a server that refuses
        raise UnavailableError(
            f"OPC UA server {conn.endpoint} refused the browse: {type(exc).__name__}"
        ) from None
    return [
        {"node_id": v.node_id, "browse_path": v.browse_path, "data_type": v.data_type, "writable": v.writable}
        for v in found
    ]


# -- tag write through the command router -------------------------------------------------------------


@dataclass
class _AckWait:
    request_id: str
    event: threading.Event = field(default_factory=threading.Event)
    ack: dict[str, Any] | None = None
    error: str | None = None


def write_tag(  # noqa: PLR0917 - the path of a tag, then the value
    store: ConfigStore,
    mqtt_url: str,
    flow_id: str,
    device_id: str,
    tag: str,
    value: Any,
    *,
    timeout_s: float = 5.0,
    command_key: bytes | None = None,
) -> dict[str, Any]:
    """Publish a write command for a tag of a deployed flow and wait for the device's ack.

    The command is signed with ``command_key`` (:mod:`core.signing`; unsigned without one, which
    only a flow with ``commands: {require_signature: false}`` accepts). The command router of the
    flow process validates it and answers on the ack topic; :class:`AckTimeoutError` when no answer
    comes within ``timeout_s``.
    """
    from connectors.mqtt.client import make_client, reason_failed, unique_client_id
    from connectors.mqtt.url import parse_mqtt_url
    from core.signing import sign_command

    flow = store.get_flow(flow_id)
    if flow.deployed_version is None:
        raise ConflictError(f"flow {flow_id!r} is not deployed; nothing can take the write")
    spec = store.get_version(flow_id, flow.deployed_version).spec
    tags = _device_tags(spec, flow_id, device_id)
    _find(tags, "name", tag, "tag", f"device {device_id!r} (deployed version {flow.deployed_version})")
    broker = parse_mqtt_url(mqtt_url)
    wait = _AckWait(request_id=uuid.uuid4().hex)
    base = f"{CMD_PREFIX}/{device_id}/{tag}"
    subscribed = threading.Event()
    client = make_client(broker, unique_client_id("nexus-api-write"))

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason_failed(reason):
            wait.error = f"broker refused the connection: {reason}"
            wait.event.set()
            return
        c.subscribe(f"{base}/ack", qos=1)

    def on_subscribe(_c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any = None) -> None:
        if any(reason_failed(r) for r in reasons):
            wait.error = "broker refused the ack subscription"
            wait.event.set()
        subscribed.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(payload, dict) and payload.get("request_id") == wait.request_id:
            if (
                payload.get("code") == "replayed"
            ):  # a redelivery of this very command: its ack is the first one
                return
            wait.ack = payload
            wait.event.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    deadline = time.monotonic() + timeout_s
    try:
        client.connect_async(broker.host, broker.port)
        client.loop_start()
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise AckTimeoutError(f"broker did not answer within {timeout_s:g} s")
        if wait.error:
            raise UnavailableError(wait.error)
        if command_key is not None:
            command = sign_command(command_key, device_id, tag, value, request_id=wait.request_id)
        else:
            command = {"value": value, "request_id": wait.request_id}
        info = client.publish(f"{base}/set", json.dumps(command), qos=1)
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not wait.event.wait(max(0.0, deadline - time.monotonic())):
            raise AckTimeoutError(
                f"no ack from device {device_id!r} for tag {tag!r} within {timeout_s:g} s (is the flow running?)"
            )
        if wait.error or wait.ack is None:
            raise UnavailableError(wait.error or "no ack")
        return wait.ack
    except RuntimeError as exc:  # paho: publish not acknowledged in time
        raise AckTimeoutError(f"broker did not take the command: {exc}") from None
    finally:
        client.loop_stop()
        client.disconnect()
