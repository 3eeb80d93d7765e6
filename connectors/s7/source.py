"""Bytewax source polling Siemens S7 devices: one partition per device, ``s7:{device_id}``.

The scheduling, the event-loop thread, draining and write submission are the shared
:mod:`connectors.polling`; :class:`~connectors.devices.DeviceSource` builds the client of each plan.

>>> from connectors.s7.config import S7Connection, S7DevicePlan, S7TagAddress
>>> plan = S7DevicePlan("cpu-01", S7Connection(host="127.0.0.1"), 1.0,
...                     ((1, S7TagAddress(address="DB1.DBD0", data_type="REAL")),))
>>> S7Source([plan]).list_parts()
['s7:cpu-01']
"""

from __future__ import annotations

from connectors.devices import DeviceSource


class S7Source(DeviceSource):
    """Polls each device of ``plans`` (:class:`~connectors.s7.config.S7DevicePlan`) on its own schedule."""
