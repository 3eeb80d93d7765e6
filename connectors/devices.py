"""One Bytewax source for every polled device of a flow, whatever its protocol.

Partitions are ``{protocol}:{device_id}`` (``modbus:press-01``, ``opcua:oven-01``, ``s7:cell-3``);
each builds the client its plan calls for. Writes reach a device through :meth:`submit_write`.

>>> from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
>>> plan = ModbusDevicePlan("press-01", ModbusConnection(host="127.0.0.1"), 1.0,
...                         ((1, ModbusTagAddress(table="holding", address=0)),))
>>> DeviceSource([plan]).list_parts()
['modbus:press-01']
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from connectors.modbus.client import ModbusDeviceClient
from connectors.modbus.config import ModbusDevicePlan
from connectors.opcua.client import OpcUaDeviceClient
from connectors.opcua.config import OpcUaDevicePlan
from connectors.polling import ConfigRegistry, DeviceClient, PolledDevice, PollingSource, WriteRegistry
from connectors.s7.client import S7DeviceClient
from connectors.s7.config import S7DevicePlan

DevicePlan = ModbusDevicePlan | OpcUaDevicePlan | S7DevicePlan


def protocol_of(plan: DevicePlan) -> str:
    if isinstance(plan, ModbusDevicePlan):
        return "modbus"
    if isinstance(plan, OpcUaDevicePlan):
        return "opcua"
    return "s7"


class DeviceSource(PollingSource):
    """Polls Modbus, OPC UA and S7 devices, each on its own schedule, one partition per device."""

    def __init__(
        self,
        plans: Sequence[DevicePlan],
        *,
        stop_event: threading.Event | None = None,
        wake_slack_s: float = 0.002,
        close_timeout_s: float = 3.0,
        write_registry: WriteRegistry | None = None,
        config_registry: ConfigRegistry | None = None,
        max_wait_s: float | None = None,
    ) -> None:
        self._plans = {plan.device_id: plan for plan in plans}
        super().__init__(
            [PolledDevice(p.device_id, p.poll_interval_s, protocol_of(p)) for p in plans],
            stop_event=stop_event,
            wake_slack_s=wake_slack_s,
            close_timeout_s=close_timeout_s,
            write_registry=write_registry,
            config_registry=config_registry,
            max_wait_s=max_wait_s,
        )

    def make_client(self, device_id: str) -> DeviceClient:
        plan = self._plans[device_id]
        if isinstance(plan, ModbusDevicePlan):
            return ModbusDeviceClient(plan)
        if isinstance(plan, OpcUaDevicePlan):
            return OpcUaDeviceClient(plan)
        return S7DeviceClient(plan)
