"""Hot config changes inside a running flow process: the config listener.

The control plane publishes a changed device section, retained, on
``$nexus/config/flows/{flow}/devices/{device}`` as ``{"version": N, "device": {...}}`` (see
``control.hot``). Every flow process runs one :class:`ConfigListener` (like the command router:
one subscription, handlers registered by the source partitions the process owns). For each
notification it:

1. ignores it when ``version`` is not newer than the version the process started with
   (``NEXUS_FLOW_VERSION``) or than the device's last accepted one — a retained notification is
   delivered again at every (re)subscription;
2. validates the whole spec with the device section replaced (:func:`dataflows.spec.parse_spec`),
   so a change that breaks a machine's tag reference is refused like a bad field; a refused
   change is logged as an error naming the field, and the flow keeps its old config;
3. refuses what cannot change live (an unknown device, another protocol, another broker session
   for MQTT devices: those redeploy);
4. hands the device's new polling plan (an MQTT device: its subscriptions) and its in-band :class:`~core.device_config.DeviceConfig`
   to the partition that owns the device, which applies them at its next poll boundary (see
   :meth:`connectors.polling.PollingPartition.request_change`); a change that arrives before the
   partition is built waits for it. The command router learns the device's new tags at once.

The status topic reports each owned device's running version once its partition applied it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretBytes, SecretStr

from connectors.commands import CommandRouter
from connectors.devices import protocol_of
from connectors.mqtt.subscriber import DeviceSubscriber
from connectors.polling import DeviceChange, PolledDevice
from core.uns import CONFIG_TOPIC
from dataflows.compiler import (
    adaptive_for,
    device_config_for,
    device_plan_for,
    mqtt_source_config,
    writable_tags,
)
from dataflows.spec import FlowSpec, MqttDeviceSpec, SpecError, parse_spec
from dataflows.status import FlowStatus

__all__ = ["ENV_FLOW_ID", "ENV_FLOW_VERSION", "ConfigListener", "config_topic", "start_version"]

log = logging.getLogger(__name__)

ENV_FLOW_ID = "NEXUS_FLOW_ID"
"""The flow's id in the config store (default: the spec's id); same name as ``control.types``."""
ENV_FLOW_VERSION = "NEXUS_FLOW_VERSION"
"""The flow version the process starts with (default 0); same name as ``control.types``."""

Apply = Callable[[DeviceChange], None]


def config_topic(flow_id: str, device_id: str | None = None) -> str:
    """``$nexus/config/flows/{flow}/devices/{device}``, or the filter of all of a flow's devices.

    >>> config_topic("plant"), config_topic("plant", "press-01")
    ('$nexus/config/flows/plant/#', '$nexus/config/flows/plant/devices/press-01')
    """
    if device_id is not None:
        return CONFIG_TOPIC.format(flow=flow_id, device=device_id)
    return CONFIG_TOPIC.format(flow=flow_id, device="").removesuffix("/devices/") + "/#"


def start_version(env: dict[str, str] | None = None) -> int:
    """``NEXUS_FLOW_VERSION`` as an int (0 when unset); a malformed value is refused by name.

    >>> start_version({}), start_version({"NEXUS_FLOW_VERSION": "7"})
    (0, 7)
    """
    raw = (os.environ if env is None else env).get(ENV_FLOW_VERSION, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_FLOW_VERSION} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{ENV_FLOW_VERSION} must be >= 0, got {value}")
    return value


class ChangeRefused(ValueError):  # noqa: N818 - the name says what happened
    """A config notification that is not applied; the message says why (field paths included)."""


class ConfigListener(DeviceSubscriber[Apply]):
    """The process's listener of ``$nexus/config/flows/{flow}/#`` (see the module docstring)."""

    name = "config listener"

    def __init__(
        self,
        mqtt_url: str,
        spec: FlowSpec,
        *,
        flow_id: str | None = None,
        version: int = 0,
        status: FlowStatus | None = None,
        router: CommandRouter | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.flow_id = flow_id or spec.id
        super().__init__(
            mqtt_url,
            config_topic(self.flow_id),
            client_prefix="nexus-config",
            connect_timeout_s=connect_timeout_s,
        )
        self.spec = spec
        self._doc = _document(spec)
        """The running spec as a document (secrets in clear), each accepted section swapped in."""
        self.mqtt_url = mqtt_url
        """The flow's broker (the default of MQTT devices' connection)."""
        self.start_version = version
        self.status = status
        self.router = router
        self._accepted: dict[str, int] = {}
        """The newest version accepted per device (applied or waiting for its partition)."""
        self._waiting: dict[str, DeviceChange] = {}
        """Accepted changes whose device has no partition in this process yet."""
        self._spec_lock = threading.Lock()
        self.counts = dict.fromkeys(("received", "accepted", "ignored", "refused"), 0)

    # -- registration (source partitions) ------------------------------------------------------

    def register(self, device_id: str, handler: Apply) -> None:
        """A partition of this process polls the device: it takes the device's changes from now on
        (one that arrived before it was built is handed over at once)."""
        with self._cond:  # one lock with _handle's lookup: a change is either waiting or handed over
            self._handlers[device_id] = handler
            waiting = self._waiting.pop(device_id, None)
        if self.status is not None:
            self.status.set_device_version(device_id, self.start_version)
        if waiting is not None:
            handler(waiting)

    def unregister(self, device_id: str, handler: Apply | None = None) -> None:
        super().unregister(device_id, handler)
        if self.status is not None and self.handler(device_id) is None:
            self.status.forget_device(device_id)

    # -- messages (paho's network thread) --------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._cond:
            self.counts[name] += 1
        if self.status is not None:
            self.status.count(f"config_{name}", 1)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        self._count("received")
        prefix = config_topic(self.flow_id, "")
        if not topic.startswith(prefix) or "/" in topic[len(prefix) :] or topic == prefix:
            self._count("ignored")
            log.debug("config listener: ignoring %r", topic)
            return
        device_id = topic[len(prefix) :]
        if not payload:  # a cleared retained notification
            self._count("ignored")
            return
        try:
            change = self.accept(device_id, payload)
        except ChangeRefused as exc:
            self._count("refused")
            log.error("config listener: flow %r: %s", self.flow_id, exc)
            return
        if change is None:
            self._count("ignored")
            return
        self._count("accepted")
        with self._cond:
            handler = self._handlers.get(device_id)
            if handler is None:
                self._waiting[device_id] = change
        if handler is not None:
            handler(change)

    def accept(self, device_id: str, payload: bytes) -> DeviceChange | None:
        """The change a notification asks for; ``None`` when it is not newer than what runs;
        :class:`ChangeRefused` when it cannot be applied (the running config is left alone)."""
        version, section = _parse(device_id, payload)
        with self._spec_lock:
            newest = max(self.start_version, self._accepted.get(device_id, self.start_version))
            if version <= newest:
                log.info(
                    "config listener: device %r version %d ignored (running %d)", device_id, version, newest
                )
                return None
            new_spec, doc = self._replaced(device_id, version, section)
            device = next(d for d in new_spec.devices if d.id == device_id)
            plan: Any
            polled: PolledDevice | None = None
            if isinstance(device, MqttDeviceSpec):
                mqtt = mqtt_source_config(new_spec, self.mqtt_url)
                assert mqtt is not None  # the spec has this MQTT device
                plan = [s for s in mqtt.subscriptions if s.device_id == device_id]
            else:
                plan = device_plan_for(new_spec, device_id)
                assert plan is not None
                polled = PolledDevice(
                    device_id, plan.poll_interval_s, protocol_of(plan), adaptive_for(device)
                )
            item = device_config_for(new_spec, device_id, version)
            self.spec, self._doc = new_spec, doc
            self._accepted[device_id] = version
        if self.router is not None and device_id in self.router.devices:
            tags = writable_tags(new_spec)
            self.router.set_device_tags(
                device_id, {name: t for (dev, name), t in tags.items() if dev == device_id}
            )
        log.info("config listener: device %r version %d accepted", device_id, version)
        return DeviceChange(
            device_id, version, plan, item, device=polled, on_applied=self._applied_callback(device_id)
        )

    def _applied_callback(self, device_id: str) -> Callable[[int], None]:
        def applied(version: int) -> None:
            if self.status is not None:
                self.status.set_device_version(device_id, version)

        return applied

    def _replaced(
        self, device_id: str, version: int, section: dict[str, Any]
    ) -> tuple[FlowSpec, dict[str, Any]]:
        where = f"device {device_id!r} version {version} refused"
        doc = {**self._doc, "devices": list(self._doc["devices"])}
        index = next((i for i, d in enumerate(self.spec.devices) if d.id == device_id), None)
        if index is None:
            raise ChangeRefused(f"{where}: the running flow has no such device (adding one redeploys)")
        old = self.spec.devices[index]
        doc["devices"][index] = section
        try:
            new_spec = parse_spec(doc)
        except SpecError as exc:
            problems = "; ".join(
                f"{path}: {_redacted(path, msg)}" if path else msg for path, msg in exc.problems
            )
            raise ChangeRefused(f"{where}: {problems}") from None
        new = new_spec.devices[index]
        if type(new) is not type(old):
            raise ChangeRefused(
                f"{where}: devices[{index}].protocol: a device cannot change protocol live (redeploy)"
            )
        if (
            isinstance(new, MqttDeviceSpec)
            and isinstance(old, MqttDeviceSpec)
            and new.connection != old.connection
        ):
            raise ChangeRefused(
                f"{where}: devices[{index}].connection: the MQTT devices' broker session changes by redeploy"
            )
        return new_spec, doc


_SECRET_PATH = re.compile(r"(password|secret|token|private_key)", re.IGNORECASE)


def _redacted(path: str, message: str) -> str:
    """A validation message without the offending value when the field holds a secret.

    >>> _redacted("devices[1].connection.password", "Input should be a valid string (got 12345)")
    'Input should be a valid string'
    """
    if _SECRET_PATH.search(path):
        return re.sub(r" \(got .*\)$", "", message, flags=re.DOTALL)
    return message


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        secret = value.get_secret_value()
        return secret.decode() if isinstance(secret, bytes) else secret
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _document(spec: FlowSpec) -> dict[str, Any]:
    """The spec as the document it was read from: set fields only, secrets in clear (a JSON dump
    would mask them, and a device section rebuilt from it would carry the mask)."""
    doc = _plain(spec.model_dump(exclude_unset=True))
    assert isinstance(doc, dict)
    return doc


def _parse(device_id: str, payload: bytes) -> tuple[int, dict[str, Any]]:
    where = f"device {device_id!r}"
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ChangeRefused(f"{where}: notification is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ChangeRefused(f'{where}: a notification is an object {{"version": N, "device": {{...}}}}')
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ChangeRefused(f"{where}: version: a whole number >= 0 is required, got {version!r}")
    section = doc.get("device")
    if not isinstance(section, dict):
        raise ChangeRefused(f"{where} version {version}: device: an object is required")
    if section.get("id") != device_id:
        raise ChangeRefused(
            f"{where} version {version}: device.id: {section.get('id')!r} does not match the topic's device"
        )
    return version, section
