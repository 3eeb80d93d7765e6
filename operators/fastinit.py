"""Constructors for the objects the operators' fast paths build on every batch: frozen, slotted
dataclasses (:func:`slot_constructor`) and empty batches (:class:`EmptyBatches`).

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__``: about
0.2 µs per field, so ~2 µs for an 11-column window accumulator or an alert. At 20,000 device
polls per second every fast path builds several of them per poll. :func:`slot_constructor` makes
a function that creates the same object by setting its slots directly (about 3x cheaper), the way
unpickling does; the result is indistinguishable (type, fields, equality, pickling, still frozen).
Only for classes without ``__post_init__`` (a check to run would be skipped); every field is a
positional argument, defaults included.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True, slots=True)
... class P:
...     x: int
...     y: float = 0.0
>>> make = slot_constructor(P)
>>> make(1, 2.5) == P(1, 2.5), type(make(1, 2.5)) is P
(True, True)
"""

from __future__ import annotations

import dataclasses
import keyword
from collections.abc import Callable
from typing import Any, TypeVar

from core.batch import PointBatch

__all__ = ["EmptyBatches", "slot_constructor"]

T = TypeVar("T")


def slot_constructor(cls: type[T], *, checked: bool = False) -> Callable[..., T]:
    """A function ``(field1, field2, ...) -> cls`` that sets the slots of a new instance directly.

    ``TypeError`` unless ``cls`` is a slotted dataclass without ``__post_init__``; with
    ``checked=True`` a ``__post_init__`` is allowed (and skipped): for a caller whose arguments
    always pass its checks (e.g. a compiled kernel's columns of one length for a ``PointBatch``).
    """
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"slot_constructor: {cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__") and not checked:
        raise TypeError(f"slot_constructor: {cls.__name__} has a __post_init__ that would be skipped")
    names = [f.name for f in dataclasses.fields(cls)]
    if any(keyword.iskeyword(n) or not n.isidentifier() for n in names):  # pragma: no cover - dataclass names
        raise TypeError(f"slot_constructor: {cls.__name__} has a field name that is not an identifier")
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def make({', '.join(names)}):", "    o = _new(_cls)"]
    for i, name in enumerate(names):
        scope[f"_s{i}"] = getattr(cls, name).__set__  # the slot's member descriptor
        lines.append(f"    _s{i}(o, {name})")
    lines.append("    return o")
    exec("\n".join(lines), scope)  # generated from the class's own field names, as dataclasses does
    make: Callable[..., T] = scope["make"]
    make.__qualname__ = make.__name__ = f"new_{cls.__name__}"
    make.__doc__ = f"A {cls.__name__} from all its fields, positionally (see operators.fastinit)."
    return make


class EmptyBatches:
    """One shared empty :class:`~core.batch.PointBatch` per device, for the fast paths that publish
    nothing (batches are never mutated, so one object serves every poll).

    Bounded: past ``max_devices`` devices the cache starts over. Derived data: it pickles empty.

    >>> empty = EmptyBatches()
    >>> empty("d1") is empty("d1"), len(empty("d1")), len(empty)
    (True, 0, 1)
    """

    __slots__ = ("_by_device", "max_devices")

    def __init__(self, max_devices: int = 4096) -> None:
        self.max_devices = max_devices
        self._by_device: dict[str, PointBatch] = {}

    def __call__(self, device: str) -> PointBatch:
        empty = self._by_device.get(device)
        if empty is None:
            if len(self._by_device) >= self.max_devices:
                self._by_device.clear()
            empty = self._by_device[device] = PointBatch.empty(device)
        return empty

    def __len__(self) -> int:
        return len(self._by_device)

    def __reduce__(self) -> tuple[type[EmptyBatches], tuple[int]]:
        return EmptyBatches, (self.max_devices,)
