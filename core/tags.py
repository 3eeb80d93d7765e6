"""What the sinks need to know about a tag, resolved once from the spec."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TagInfo:
    """One configured tag: its stable id, owner, name, unit and UNS topic."""

    tag_id: int
    device_id: str
    name: str
    unit: str
    topic: str
