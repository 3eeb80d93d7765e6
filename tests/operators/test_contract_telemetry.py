"""The shared operator contract for the telemetry cores: Normalizer and Deadband.

Every core: pickles to the same behaviour, keeps immutable defaults, never mutates its input,
copes with tags that appear and disappear, and repeats itself on the same input.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from core.batch import PointBatch
from core.quality import Quality
from operators.deadband import Deadband, DeadbandParams, DeadbandState
from operators.normalize import NormalizeParams, Normalizer
from tests.operators.operators_reference import copy_of, frozen, same_batch

S = 1_000_000_000


def scenario(seed: int) -> list[PointBatch]:
    """Two devices; tag sets grow, shrink, reorder and repeat; some bad and NaN points."""
    rng = np.random.default_rng(seed)
    tag_sets = [[1, 2, 3], [1, 2, 3], [3, 1], [1, 2, 3, 4, 5], [5], [2, 2, 1, 9], [1, 2, 3, 4, 5], []]
    out: list[PointBatch] = []
    for step, tags in enumerate(tag_sets * 3):
        for device in ("press-01", "press-02"):
            n = len(tags)
            values = np.round(rng.normal(50.0, 30.0, n), 1)
            quality = rng.choice(np.array([0, 0, 0, 0, int(Quality.COMM_ERROR)], dtype=np.uint8), n)
            values[quality >= 128] = np.nan
            ts = np.full(n, step * S, dtype=np.int64) + np.arange(n)
            out.append(PointBatch.from_values(device, tags, values, ts_ns=ts, quality=quality))
    return out


NORMALIZE_PARAMS = {
    1: NormalizeParams(scale=0.5, clamp_low=0.0, clamp_high=40.0),
    2: NormalizeParams.for_units("degC", "degF"),
    3: NormalizeParams(offset=-50.0, clamp_low=-10.0),
    5: NormalizeParams(scale=1e308),
}
DEADBAND_PARAMS = {
    1: DeadbandParams(absolute=2.0, heartbeat_s=3.0),
    2: DeadbandParams(percent=5.0, span=100.0),
    4: DeadbandParams(absolute=0.0),
    5: DeadbandParams(absolute=30.0, percent=10.0, span=100.0, heartbeat_s=1.0),
}


class Runner:
    """Drives a core over a batch sequence the way its Bytewax adapter would (state per device)."""

    def __init__(self, core: Normalizer | Deadband) -> None:
        self.core = core
        self.states: dict[str, DeadbandState] = {}

    def step(self, batch: PointBatch) -> PointBatch:
        if isinstance(self.core, Normalizer):
            return self.core.apply(batch)
        state = self.states.get(batch.device_id, DeadbandState.empty())
        self.states[batch.device_id], out = self.core.process(state, batch)
        return out

    def run(self, batches: Sequence[PointBatch]) -> list[PointBatch]:
        return [self.step(b) for b in batches]


CORES: dict[str, Callable[[], Normalizer | Deadband]] = {
    "normalizer": lambda: Normalizer(NORMALIZE_PARAMS),
    "deadband": lambda: Deadband(DEADBAND_PARAMS),
}


def same_outputs(a: Sequence[PointBatch], b: Sequence[PointBatch]) -> bool:
    return len(a) == len(b) and all(same_batch(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(params=sorted(CORES))
def make_core(request: pytest.FixtureRequest) -> Callable[[], Normalizer | Deadband]:
    return CORES[request.param]


def test_pickles_to_the_same_behaviour(make_core: Callable[[], Normalizer | Deadband]) -> None:
    batches = scenario(1)
    fresh = Runner(make_core()).run(batches)
    warm = make_core()
    Runner(warm).run(scenario(2))  # fill caches first: they must not leak into the pickle's behaviour
    clone = pickle.loads(pickle.dumps(warm))
    assert type(clone) is type(warm) and dict(clone.params) == dict(warm.params)
    assert same_outputs(Runner(clone).run(batches), fresh)


def test_state_pickles_mid_stream(make_core: Callable[[], Normalizer | Deadband]) -> None:
    """Resuming from pickled core and states (a Bytewax snapshot) continues exactly."""
    batches = scenario(3)
    half = len(batches) // 2
    straight = Runner(make_core())
    expected = straight.run(batches)
    first = Runner(make_core())
    got = first.run(batches[:half])
    resumed = Runner(pickle.loads(pickle.dumps(first.core)))
    resumed.states = pickle.loads(pickle.dumps(first.states))
    got += resumed.run(batches[half:])
    assert same_outputs(got, expected)


def test_defaults_are_immutable(make_core: Callable[[], Normalizer | Deadband]) -> None:
    core = make_core()
    with pytest.raises(TypeError):
        core.params[99] = next(iter(core.params.values()))  # type: ignore[index]
    for p in core.params.values():
        field = dataclasses.fields(p)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(p, field, 1.0)
    assert NormalizeParams().convert == (1.0, 0.0) and isinstance(NormalizeParams().convert, tuple)
    assert DeadbandParams() == DeadbandParams(absolute=None, percent=None, span=None, heartbeat_s=None)


def test_does_not_mutate_its_input(make_core: Callable[[], Normalizer | Deadband]) -> None:
    batches = [frozen(b) for b in scenario(4)]
    copies = [copy_of(b) for b in batches]
    Runner(make_core()).run(batches)  # read-only arrays: any in-place write would raise
    assert same_outputs(batches, copies)


def test_tags_appear_and_disappear(make_core: Callable[[], Normalizer | Deadband]) -> None:
    """Each device's output equals a run that saw that device's batches one by one (no cross-talk)."""
    batches = scenario(5)
    together = Runner(make_core()).run(batches)
    for device in ("press-01", "press-02"):
        mine = [b for b in batches if b.device_id == device]
        alone = Runner(make_core()).run(mine)
        assert same_outputs(
            [o for o, b in zip(together, batches, strict=True) if b.device_id == device], alone
        )
    # and the outputs only ever hold the batch's own tags
    for o, b in zip(together, batches, strict=True):
        assert set(o.tag_ids.tolist()) <= set(b.tag_ids.tolist())


def test_seeded_runs_repeat(make_core: Callable[[], Normalizer | Deadband]) -> None:
    assert same_outputs(Runner(make_core()).run(scenario(6)), Runner(make_core()).run(scenario(6)))
