"""``slot_constructor`` builds the same frozen objects as the dataclasses' own ``__init__``."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest

from core.batch import PointBatch
from operators.deadband import DeadbandState
from operators.fastinit import slot_constructor
from operators.window import Accumulators, WindowBuckets, WindowState


def _args(cls: type) -> tuple[Any, ...]:
    """A distinct value for every field of ``cls``."""
    out: list[Any] = []
    for i, f in enumerate(dataclasses.fields(cls)):
        kind = str(f.type)
        if "NDArray" in kind or kind in ("I64", "F64", "_I64", "_F64", "_U8"):
            out.append(np.arange(3) + i)
        elif "tuple" in kind:
            out.append(())
        elif "str" in kind:
            out.append(f"s{i}")
        else:
            out.append(i)
    return tuple(out)


@pytest.mark.parametrize("cls", [DeadbandState, Accumulators, WindowBuckets, WindowState])
def test_same_object_as_the_dataclass_init(cls: type) -> None:
    args = _args(cls)
    made, ref = slot_constructor(cls)(*args), cls(*args)
    assert type(made) is cls
    for f in dataclasses.fields(cls):
        assert getattr(made, f.name) is getattr(ref, f.name)
    again = pickle.loads(pickle.dumps(made))
    assert [str(getattr(again, f.name)) for f in dataclasses.fields(cls)] == [
        str(getattr(ref, f.name)) for f in dataclasses.fields(cls)
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, dataclasses.fields(cls)[0].name, None)


def test_refuses_classes_whose_checks_it_would_skip() -> None:
    with pytest.raises(TypeError, match="PointBatch has a __post_init__"):
        slot_constructor(PointBatch)

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    with pytest.raises(TypeError, match="NoSlots is not a slotted dataclass"):
        slot_constructor(NoSlots)


def test_checked_callers_may_skip_post_init() -> None:
    """``checked=True`` is for callers whose arguments always pass ``__post_init__`` (the fused chain's
    kernel-made columns of one length): the same batch, built without the check."""
    make = slot_constructor(PointBatch, checked=True)
    cols = (np.array([5], np.int64), np.array([1], np.int64), np.array([2.0]), np.array([0], np.uint8))
    made, ref = make("d", *cols, None), PointBatch("d", *cols)
    assert type(made) is PointBatch
    assert all(getattr(made, f.name) is getattr(ref, f.name) for f in dataclasses.fields(PointBatch))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.device_id = "e"  # type: ignore[misc]
