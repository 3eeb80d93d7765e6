"""Bytewax source reading OPC UA servers: one partition per device, ``opcua:{device_id}``.

The scheduling, the event-loop thread, draining and write submission are the shared
:mod:`connectors.polling`; this module only builds an
:class:`~connectors.opcua.client.OpcUaDeviceClient` per device. In subscribe mode the poll
interval is how often the buffered data changes are handed to the dataflow.

>>> from connectors.opcua.config import OpcUaConnection, OpcUaDevicePlan, OpcUaTagAddress
>>> plan = OpcUaDevicePlan("oven-01", OpcUaConnection(endpoint="opc.tcp://127.0.0.1:4840"), 1.0,
...                        ((1, OpcUaTagAddress(node_id="ns=2;s=Oven.Temp")),))
>>> OpcUaSource([plan]).list_parts()
['opcua:oven-01']
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from connectors.opcua.client import OpcUaDeviceClient
from connectors.opcua.config import OpcUaDevicePlan
from connectors.polling import PolledDevice, PollingSource


class OpcUaSource(PollingSource):
    """Reads each OPC UA device of ``devices`` on its own schedule; one partition per device."""

    protocol = "opcua"

    def __init__(
        self,
        devices: Sequence[OpcUaDevicePlan],
        *,
        stop_event: threading.Event | None = None,
        wake_slack_s: float = 0.002,
        close_timeout_s: float = 3.0,
    ) -> None:
        self._plans = {plan.device_id: plan for plan in devices}
        super().__init__(
            [PolledDevice(p.device_id, p.poll_interval_s) for p in devices],
            stop_event=stop_event,
            wake_slack_s=wake_slack_s,
            close_timeout_s=close_timeout_s,
        )

    def make_client(self, device_id: str) -> OpcUaDeviceClient:
        return OpcUaDeviceClient(self._plans[device_id])
