"""The change planner: what a deploy must do to take a running flow from one spec to another.

A pure function over two validated specs. A change inside an existing device (timeouts, poll
interval, adaptive polling, tags added, removed or changed, calculated tags) is applied **hot**: the
plan carries the new section of each changed device and the running flow swaps it in at its next
poll. Anything that changes the flow's shape (operators, sinks, machines, shifts, devices added or
removed or reordered, a device's protocol, location or endpoint) needs a **redeploy**: drain, then
start the new version on the same recovery directory. Equal specs are a **noop**.

>>> from dataflows.spec import parse_spec
>>> doc = {"version": 1, "id": "f", "sinks": [{"id": "uns", "type": "mqtt_uns"}], "devices": [
...     {"id": "d1", "connection": {"host": "127.0.0.1"},
...      "location": {"enterprise": "e", "site": "s", "area": "a", "line": "l"},
...      "tags": [{"name": "t", "table": "holding", "address": 0}]}]}
>>> old = parse_spec(doc)
>>> plan(old, old).kind
'noop'
>>> doc["devices"][0]["tags"][0]["scale"] = 0.1
>>> p = plan(old, parse_spec(doc))
>>> p.kind, p.reasons, p.device_patches["d1"]["tags"][0]["scale"]
('hot', ('device d1: tags[t].scale changed',), 0.1)
>>> doc["operators"] = [{"id": "n", "type": "normalize"}, {"id": "w", "type": "window", "windows": ["1m"]}]
>>> plan(old, parse_spec(doc)).reasons
('operators: node n (normalize) added', 'operators: node w (window) added')

The property the tests check: ``apply_patches(spec_json(running), plan.device_patches) ==
spec_json(new)`` whenever the plan is hot (and trivially for a noop), up to ``description``, which
is documentation and reaches the flow with the version number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from control.types import Plan
from dataflows.spec import FlowSpec

__all__ = [
    "HOT_CONNECTION_KEYS",
    "Change",
    "apply_patches",
    "changes",
    "device_json",
    "diff_paths",
    "plan",
    "spec_json",
]

HOT_CONNECTION_KEYS = re.compile(
    r"^(timeout_s|reconnect_(min|max)_s|breaker_\w+|max_\w+|split_reprobe_s|watchdog_interval_s)$"
)
"""Connection settings a running device client can take without a new connection: timeouts,
backoff, breaker and request sizing. Any other connection key (host, port, unit id, endpoint,
security, mode, ...) means a new connection, and that is a redeploy."""

_FLOW_KEYS = ("id", "operators", "sinks", "machines", "shifts", "shift_timezone", "commands")
"""Top-level parts of a spec that shape the dataflow; ``description`` is documentation only."""


def _jsonable(value: Any) -> Any:
    """A model dump as plain JSON types, secrets included (the spec document holds them in clear)."""
    if isinstance(value, SecretStr | SecretBytes):
        secret = value.get_secret_value()
        return secret.decode() if isinstance(secret, bytes) else secret
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="python"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def spec_json(spec: FlowSpec) -> dict[str, Any]:
    """The full JSON form of a validated spec (defaults filled in, secrets in clear)."""
    out = _jsonable(spec)
    assert isinstance(out, dict)
    return out


def device_json(spec: FlowSpec, device_id: str) -> dict[str, Any]:
    """One device section of :func:`spec_json`, as a hot patch carries it."""
    for device in spec.devices:
        if device.id == device_id:
            out = _jsonable(device)
            assert isinstance(out, dict)
            return out
    raise KeyError(device_id)


def apply_patches(running: Mapping[str, Any], patches: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The spec document ``running`` with each patched device section replaced (what a hot plan does)."""
    unknown = set(patches) - {d["id"] for d in running["devices"]}
    if unknown:
        raise KeyError(f"patches for devices the flow does not have: {sorted(unknown)}")
    devices = [dict(patches[d["id"]]) if d["id"] in patches else d for d in running["devices"]]
    return {**running, "devices": devices}


def _key(item: Any, i: int) -> str:
    if isinstance(item, Mapping):
        for k in ("id", "name"):
            if isinstance(item.get(k), str):
                return item[k]
    return str(i)


Change = tuple[str, str, Any, Any]
"""``(field path, "changed" | "added" | "removed" | "reordered", old value, new value)``."""


def changes(old: Any, new: Any, path: str = "") -> list[Change]:
    """Where ``old`` and ``new`` differ; list items with an ``id``/``name`` are matched by it.

    >>> changes({"tags": [{"name": "t", "scale": 1}]}, {"tags": [{"name": "t", "scale": 2}]})
    [('tags[t].scale', 'changed', 1, 2)]
    """
    if old == new:
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[Change] = []
        for k in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{k}" if path else str(k)
            if k not in new:
                out.append((sub, "removed", old[k], None))
            elif k not in old:
                out.append((sub, "added", None, new[k]))
            else:
                out += changes(old[k], new[k], sub)
        return out
    lists = isinstance(old, Sequence) and isinstance(new, Sequence)
    if lists and not isinstance(old, str | bytes) and not isinstance(new, str | bytes):
        old_keys = [_key(x, i) for i, x in enumerate(old)]
        new_keys = [_key(x, i) for i, x in enumerate(new)]
        if len(set(old_keys)) == len(old_keys) and len(set(new_keys)) == len(new_keys):
            old_map = dict(zip(old_keys, old, strict=True))
            new_map = dict(zip(new_keys, new, strict=True))
            out = [(f"{path}[{k}]", "removed", old_map[k], None) for k in old_keys if k not in new_map]
            out += [(f"{path}[{k}]", "added", None, new_map[k]) for k in new_keys if k not in old_map]
            for k in new_keys:
                if k in old_map:
                    out += changes(old_map[k], new_map[k], f"{path}[{k}]")
            common_old = [k for k in old_keys if k in new_map]
            common_new = [k for k in new_keys if k in old_map]
            if common_old != common_new:
                out.append((path, "reordered", common_old, common_new))
            return out
    return [(path, "changed", old, new)]


def diff_paths(old: Any, new: Any, path: str = "") -> list[str]:
    """:func:`changes` as readable lines.

    >>> diff_paths({"a": 1, "tags": [{"name": "t", "scale": 1}]}, {"a": 1, "tags": [{"name": "t", "scale": 2}]})
    ['tags[t].scale changed']
    """
    return [f"{p} {kind}".strip() for p, kind, _old, _new in changes(old, new, path)]


def _device_reasons(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(reasons that need a redeploy, changes that can go hot) for one device present in both specs."""
    dev = new["id"]
    cold: list[str] = []
    if old.get("protocol") != new.get("protocol"):
        cold.append(f"device {dev}: protocol changed (its partition is keyed by protocol)")
    if old["location"] != new["location"]:
        cold.append(f"device {dev}: location changed (its UNS topics change)")
    old_conn, new_conn = old.get("connection", {}), new.get("connection", {})
    for key in sorted(set(old_conn) | set(new_conn)):
        if old_conn.get(key) != new_conn.get(key) and not HOT_CONNECTION_KEYS.match(key):
            cold.append(f"device {dev}: connection.{key} changed (needs a new connection)")
    hot = [f"device {dev}: {p}" for p in diff_paths(old, new)]
    return cold, hot


def plan(running: FlowSpec, new: FlowSpec) -> Plan:
    """What it takes to go from ``running`` to ``new``: ``noop``, ``hot`` (with device patches) or ``redeploy``."""
    old_doc, new_doc = spec_json(running), spec_json(new)
    if old_doc == new_doc:
        return Plan("noop", ("the specs are equal",))
    cold: list[str] = []
    for key in _FLOW_KEYS:
        changes = diff_paths(old_doc.get(key), new_doc.get(key), key)
        cold += [_node_reason(c, (old_doc, new_doc), key) for c in changes]
    old_devices = {d["id"]: d for d in old_doc["devices"]}
    new_devices = {d["id"]: d for d in new_doc["devices"]}
    cold += [f"device {d} added" for d in new_devices if d not in old_devices]
    cold += [f"device {d} removed" for d in old_devices if d not in new_devices]
    common_old = [d for d in old_devices if d in new_devices]
    common_new = [d for d in new_devices if d in old_devices]
    if common_old != common_new:
        cold.append("devices reordered")
    hot: list[str] = []
    patches: dict[str, dict[str, Any]] = {}
    for dev in common_new:
        if old_devices[dev] == new_devices[dev]:
            continue
        dev_cold, dev_hot = _device_reasons(old_devices[dev], new_devices[dev])
        cold += dev_cold
        hot += dev_hot
        patches[dev] = new_devices[dev]
    if cold:
        return Plan("redeploy", tuple(cold))
    if not patches:
        return Plan("noop", ("only the description changed",))
    return Plan("hot", tuple(hot), patches)


def _node_reason(change: str, docs: Sequence[Mapping[str, Any]], key: str) -> str:
    """``operators: node w (window) added`` rather than ``operators[w] added``."""
    m = re.match(rf"^{key}\[([^\]]+)\]\.?(.*)$", change)
    if not m:
        return change
    node_id, rest = m.group(1), m.group(2).strip()
    kinds = {
        n.get("id"): n.get("type", "?") for doc in docs for n in doc.get(key, []) if isinstance(n, Mapping)
    }
    node = f"node {node_id} ({kinds.get(node_id, '?')})"
    return f"{key}: {node} {rest}" if rest.split(" ")[0] in ("added", "removed") else f"{key}: {node}.{rest}"
