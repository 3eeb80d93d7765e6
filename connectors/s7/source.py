"""Bytewax source polling Siemens S7 devices: one partition per device, ``s7:{device_id}``.

The scheduling, the event-loop thread, draining and write submission are the shared
:mod:`connectors.polling`; this module only builds an :class:`~connectors.s7.client.S7DeviceClient`
per device.

>>> from connectors.s7.config import S7Connection, S7DevicePlan, S7TagAddress
>>> plan = S7DevicePlan("cpu-01", S7Connection(host="127.0.0.1"), 1.0,
...                     ((1, S7TagAddress(address="DB1.DBD0", data_type="REAL")),))
>>> S7Source([plan]).list_parts()
['s7:cpu-01']
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from connectors.polling import PolledDevice, PollingSource
from connectors.s7.client import S7DeviceClient
from connectors.s7.config import S7DevicePlan


class S7Source(PollingSource):
    """Polls each S7 device of ``devices`` on its own schedule; one partition per device."""

    protocol = "s7"

    def __init__(
        self,
        devices: Sequence[S7DevicePlan],
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

    def make_client(self, device_id: str) -> S7DeviceClient:
        return S7DeviceClient(self._plans[device_id])
