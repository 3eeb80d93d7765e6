"""Publishing hot config changes to a running flow (the supervisor calls this for a ``hot`` plan).

Each changed device section goes, retained and with QoS 1, to
``$nexus/config/flows/{flow}/devices/{device}`` as ``{"version": N, "device": {...}}``; the flow
process's config listener (``dataflows.hot``) validates it and hands it to the device's partition,
which applies it at its next poll. Retained, so a flow process that (re)starts with an older
version still picks the change up; versioned, so a process started with the new version (or a
newer one) ignores it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import paho.mqtt.client as mqtt

from connectors.mqtt.client import make_client, reason_failed, unique_client_id
from connectors.mqtt.url import parse_mqtt_url
from control.errors import InvalidError, UnavailableError
from control.types import CONFIG_TOPIC

__all__ = ["clear_device_configs", "config_payload", "publish_device_configs"]


def config_payload(version: int, device: Mapping[str, Any]) -> str:
    """The notification of one device.

    >>> config_payload(3, {"id": "press-01"})
    '{"version": 3, "device": {"id": "press-01"}}'
    """
    return json.dumps({"version": version, "device": dict(device)}, allow_nan=False)


def _check(flow_id: str, version: int, patches: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    problems: list[tuple[str, str]] = []
    if not flow_id or any(c in flow_id for c in "/+#"):
        problems.append(("flow_id", f"not usable in a topic: {flow_id!r}"))
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problems.append(("version", f"a whole number >= 1 is required, got {version!r}"))
    messages: dict[str, str] = {}
    for device_id, section in patches.items():
        where = f"patches.{device_id}"
        if not device_id or any(c in device_id for c in "/+#"):
            problems.append((where, f"device id not usable in a topic: {device_id!r}"))
            continue
        if section.get("id") != device_id:
            problems.append((f"{where}.id", f"{section.get('id')!r} does not match the device id"))
            continue
        try:
            messages[CONFIG_TOPIC.format(flow=flow_id, device=device_id)] = config_payload(version, section)
        except (TypeError, ValueError) as exc:
            problems.append((where, f"not serialisable as JSON: {exc}"))
    if problems:
        raise InvalidError("device config notifications refused", problems)
    return messages


def publish_device_configs(
    mqtt_url: str,
    flow_id: str,
    version: int,
    patches: Mapping[str, Mapping[str, Any]],
    timeout_s: float = 5.0,
) -> None:
    """Publish each device's new section (retained, QoS 1) and wait until the broker acknowledged
    every one; :class:`UnavailableError` when it does not within ``timeout_s`` (some may have been
    published: publishing again with the same version is harmless)."""
    messages = _check(flow_id, version, patches)
    _publish(mqtt_url, flow_id, messages, timeout_s)


def clear_device_configs(
    mqtt_url: str, flow_id: str, device_ids: Iterable[str], timeout_s: float = 5.0
) -> None:
    """Remove the retained notifications of ``device_ids`` (empty retained payloads).

    Call it when a flow is deleted, or after a redeploy for the devices it had: a flow created
    again under the same id starts its versions anew, and an old retained notification with a
    higher version would otherwise be taken for a change.
    """
    topics = {}
    for device_id in device_ids:
        if not device_id or any(c in device_id for c in "/+#"):
            raise InvalidError(
                "device config notifications refused",
                [("device_ids", f"not usable in a topic: {device_id!r}")],
            )
        topics[CONFIG_TOPIC.format(flow=flow_id, device=device_id)] = ""
    _publish(mqtt_url, flow_id, topics, timeout_s)


def _publish(mqtt_url: str, flow_id: str, messages: Mapping[str, str], timeout_s: float) -> None:
    if not messages:
        return
    url = parse_mqtt_url(mqtt_url)
    done = threading.Condition()
    state: dict[str, Any] = {"connected": False, "error": None, "acked": set()}

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        with done:
            if reason_failed(reason):
                state["error"] = f"connection refused: {reason}"
            else:
                state["connected"] = True
            done.notify_all()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, _r: object, _p: object) -> None:
        with done:
            state["acked"].add(mid)
            done.notify_all()

    client = make_client(url, unique_client_id("nexus-config-pub"))
    client.on_connect = on_connect
    client.on_publish = on_publish
    deadline = time.monotonic() + timeout_s
    where = f"broker {url.redacted()}"
    try:
        client.connect_async(url.host, url.port, keepalive=30)
        client.loop_start()
        with done:
            while not state["connected"] and state["error"] is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UnavailableError(f"{where}: not connected within {timeout_s:g} s")
                done.wait(remaining)
            if state["error"] is not None:
                raise UnavailableError(f"{where}: {state['error']}")
        mids = [
            client.publish(topic, payload.encode() or None, qos=1, retain=True).mid
            for topic, payload in messages.items()
        ]
        with done:
            while not set(mids) <= state["acked"]:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = len(set(mids) - state["acked"])
                    raise UnavailableError(
                        f"{where}: {missing} of {len(mids)} config notifications of flow {flow_id!r} "
                        f"not acknowledged within {timeout_s:g} s"
                    )
                done.wait(remaining)
    finally:
        client.disconnect()
        client.loop_stop()
