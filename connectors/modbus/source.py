"""Bytewax source polling Modbus devices (TCP, RTU over TCP, RTU): one partition per device, ``modbus:{device_id}``.

The scheduling, the event-loop thread and draining are the shared :mod:`connectors.polling`; this
module only builds a :class:`~connectors.modbus.client.ModbusDeviceClient` per device.

>>> from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
>>> plan = ModbusDevicePlan("press-01", ModbusConnection(host="127.0.0.1"), 1.0,
...                         ((1, ModbusTagAddress(table="holding", address=0)),))
>>> ModbusSource([plan]).list_parts()
['modbus:press-01']
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import ModbusDevicePlan
from connectors.polling import PolledDevice, PollingSource


class ModbusSource(PollingSource):
    """Polls each Modbus device of ``devices`` on its own schedule; one partition per device."""

    protocol = "modbus"

    def __init__(
        self,
        devices: Sequence[ModbusDevicePlan],
        *,
        stop_event: threading.Event | None = None,
        wake_slack_s: float = 0.002,
        close_timeout_s: float = 2.0,
    ) -> None:
        self._plans = {plan.device_id: plan for plan in devices}
        super().__init__(
            [PolledDevice(p.device_id, p.poll_interval_s) for p in devices],
            stop_event=stop_event,
            wake_slack_s=wake_slack_s,
            close_timeout_s=close_timeout_s,
        )

    def make_client(self, device_id: str) -> ModbusDeviceClient:
        return ModbusDeviceClient(self._plans[device_id])
