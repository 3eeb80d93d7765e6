"""Unified Namespace topics: ``{enterprise}/{site}/{area}/{line}/{device}/{tag}``.

>>> path = IsaPath(enterprise="acme", site="plant1", area="press", line="line 2")
>>> uns_topic(path, "press-01", "temperature")
'acme/plant1/press/line_2/press-01/temperature'
>>> uns_topic(path, "press-01", "temperature", "_agg", "1m")
'acme/plant1/press/line_2/press-01/temperature/_agg/1m'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONFIG_TOPIC = "$nexus/config/flows/{flow}/devices/{device}"
"""Retained, versioned device configuration for a running flow: ``{"version": N, "device": {...}}``."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")

CMD_PREFIX = "$nexus/cmd"
STATUS_PREFIX = "$nexus/status"


def topic_level(name: str) -> str:
    """One topic level: MQTT wildcards, separators and spaces become ``_``."""
    level = _UNSAFE.sub("_", name.strip())
    return level or "_"


@dataclass(frozen=True, slots=True)
class IsaPath:
    """ISA-95 location of a device."""

    enterprise: str
    site: str
    area: str
    line: str

    def levels(self) -> tuple[str, str, str, str]:
        return (self.enterprise, self.site, self.area, self.line)


def uns_topic(path: IsaPath, device: str, *rest: str) -> str:
    return "/".join(topic_level(p) for p in (*path.levels(), device, *rest))
