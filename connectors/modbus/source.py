"""Bytewax source polling Modbus devices (TCP, RTU over TCP, RTU): one partition per device, ``modbus:{device_id}``.

The scheduling, the event-loop thread, draining and write submission are the shared
:mod:`connectors.polling`; :class:`~connectors.devices.DeviceSource` builds the client of each plan.

>>> from connectors.modbus.config import ModbusConnection, ModbusDevicePlan, ModbusTagAddress
>>> plan = ModbusDevicePlan("press-01", ModbusConnection(host="127.0.0.1"), 1.0,
...                         ((1, ModbusTagAddress(table="holding", address=0)),))
>>> ModbusSource([plan]).list_parts()
['modbus:press-01']
"""

from __future__ import annotations

from connectors.devices import DeviceSource


class ModbusSource(DeviceSource):
    """Polls each device of ``plans`` (:class:`~connectors.modbus.config.ModbusDevicePlan`) on its own schedule."""
