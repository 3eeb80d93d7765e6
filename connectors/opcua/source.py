"""Bytewax source reading OPC UA servers: one partition per device, ``opcua:{device_id}``.

The scheduling, the event-loop thread, draining and write submission are the shared
:mod:`connectors.polling`; :class:`~connectors.devices.DeviceSource` builds the client of each plan.

>>> from connectors.opcua.config import OpcUaConnection, OpcUaDevicePlan, OpcUaTagAddress
>>> plan = OpcUaDevicePlan("oven-01", OpcUaConnection(endpoint="opc.tcp://127.0.0.1:4840"), 1.0,
...                        ((1, OpcUaTagAddress(node_id="ns=2;s=Oven.Temp")),))
>>> OpcUaSource([plan]).list_parts()
['opcua:oven-01']
"""

from __future__ import annotations

from connectors.devices import DeviceSource


class OpcUaSource(DeviceSource):
    """Polls each device of ``plans`` (:class:`~connectors.opcua.config.OpcUaDevicePlan`) on its own schedule."""
