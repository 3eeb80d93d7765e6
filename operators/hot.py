"""Hot parameter swaps for the keyed stateful steps (deadband, swinging door, calculated tags,
windows, anomaly checks): what a step does when a :class:`~core.device_config.DeviceConfig`
reaches it.

- :class:`HotCore` holds the core a step uses for its device key: the spec's (shared by every
  device) until a config item swaps in one built from the item's parameters for this device. The
  swapped parameters travel in the step's snapshot (:class:`Swapped`), so a resumed run continues
  with the parameters its state was built with; a snapshot whose version is not newer than the
  version the process started with yields to the spec (the spec is then at least as new).
- :func:`keep_tags` drops the state of tags the device no longer has. Tags that stay keep their
  state; new tags start fresh, because a columnar state simply has no row for them yet.

>>> import numpy as np
>>> from operators.deadband import DeadbandState
>>> s = DeadbandState(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]), np.zeros(3, np.int64), np.zeros(3, np.uint8))
>>> keep_tags(s, np.array([3, 1, 9])).tag_ids.tolist(), keep_tags(s, np.array([3, 1])).value.tolist()
([1, 3], [1.0, 3.0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from core.device_config import DeviceConfig

__all__ = ["HotCore", "Swapped", "keep_tags"]

C = TypeVar("C")
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Swapped(Generic[S]):
    """A step's snapshot after a hot swap: the device's parameters (and their version) with its state."""

    version: int
    params: Any
    state: S


def _rows(obj: Any, ids_field: str, keep: npt.NDArray[np.int64]) -> dict[str, Any]:
    """The fields of a columnar dataclass restricted to the rows whose id is in ``keep``."""
    ids = getattr(obj, ids_field)
    mask = np.isin(ids, keep)
    if mask.all():
        return {}
    n = len(ids)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray) and value.ndim == 1 and len(value) == n:
            out[f.name] = value[mask]
    return out


def keep_tags(state: S, keep: npt.NDArray[np.int64]) -> S:
    """``state`` without the rows of tags not in ``keep`` (the same object when nothing goes).

    Knows the columnar states of the operator cores: one ``tag_ids`` column with aligned arrays
    (deadband, swinging door, calculated tags, anomaly, whose river models sit in ``hst`` by tag
    id) and the window state (per window length, open buckets and carried samples).
    """
    if state is None or not dataclasses.is_dataclass(state):
        return state
    names = {f.name for f in dataclasses.fields(state)}
    if "windows" in names:  # operators.window.WindowState
        windows = tuple(_keep_window(w, keep) for w in getattr(state, "windows"))  # noqa: B009
        return dataclasses.replace(state, windows=windows)  # type: ignore[type-var]
    if "tag_ids" not in names:
        return state
    changes = _rows(state, "tag_ids", keep)
    hst = getattr(state, "hst", None)
    if isinstance(hst, dict) and any(t not in set(keep.tolist()) for t in hst):
        kept = set(keep.tolist())
        changes["hst"] = {t: m for t, m in hst.items() if t in kept}
    return dataclasses.replace(state, **changes) if changes else state  # type: ignore[type-var]


def _keep_window(buckets: Any, keep: npt.NDArray[np.int64]) -> Any:
    opened = tuple(
        dataclasses.replace(acc, **changes) if (changes := _rows(acc, "tag_ids", keep)) else acc
        for acc in buckets.open
    )
    changes = _rows(buckets, "carry_tag_ids", keep)
    return dataclasses.replace(buckets, open=opened, **changes)


class HotCore(Generic[C]):
    """The core a keyed step uses for its device: the spec's, or one swapped in by a config item.

    ``kind`` names the item's parameters (``DeviceConfig.params[kind]``; absent means none for
    this device); ``build`` makes a core from them. A tuple of kinds (a fused step standing for
    several operators) gives ``build`` a dict of each kind's parameters (``None`` when absent).
    """

    __slots__ = ("build", "core", "kind", "params", "swapped", "version")

    def __init__(self, core: C, kind: str | tuple[str, ...], build: Callable[[Any], C]) -> None:
        self.core = core
        self.kind = kind
        self.build = build
        self.swapped = False
        self.version = 0
        self.params: Any = None

    def resume(self, resume_state: Any, start_version: int) -> Any:
        """The state inside ``resume_state``; takes over its parameters when they are newer than
        the spec the process started with."""
        if not isinstance(resume_state, Swapped):
            return resume_state
        if resume_state.version > start_version:
            self._use(resume_state.version, resume_state.params)
        return resume_state.state

    def swap(self, item: DeviceConfig) -> None:
        kind = self.kind
        if isinstance(kind, str):
            self._use(item.version, item.params.get(kind))
        else:
            self._use(item.version, {k: item.params.get(k) for k in kind})

    def _use(self, version: int, params: Any) -> None:
        self.core = self.build(params)
        self.params = params
        self.version = version
        self.swapped = True

    def snapshot(self, state: S) -> S | Swapped[S]:
        """What the step snapshots: its state, with the parameters once they were swapped."""
        return Swapped(self.version, self.params, state) if self.swapped else state
