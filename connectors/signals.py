"""Synthetic signals for the simulated devices of every protocol (Modbus, OPC UA, S7).

A :class:`Signal` is plain data (it appears as ``simulate:`` on a tag of a flow spec); the
simulators sample it with :meth:`Signal.sampler`, which binds the noise generator to a stable seed
so a restarted simulator produces the same series.

>>> sig = Signal(kind="step", step_values=[1, 2, 3], period_s=10)
>>> [sig.value_at(t, None) for t in (0, 10, 25, 31)]
[1.0, 2.0, 3.0, 1.0]
>>> Signal(kind="constant", offset=4.5).sampler("oven", "zone1")(123.0)
4.5
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SignalKind = Literal["sine", "ramp", "noise", "step", "constant", "counter"]


class Signal(BaseModel):
    """A synthetic raw value over time ``t`` (seconds since the simulator started).

    - ``sine``: ``offset + amplitude * sin(2 pi t / period_s)``
    - ``ramp``: ``offset + amplitude * (t mod period_s) / period_s`` (sawtooth)
    - ``noise``: ``offset`` (plus the noise below)
    - ``step``: ``step_values[k mod len]`` for the ``k``-th period
    - ``constant``: ``offset``
    - ``counter``: ``offset + amplitude * floor(t / period_s)``; integer types wrap around
      instead of clamping, like a real counter.

    Every kind adds Gaussian noise with standard deviation ``noise``, drawn from a generator
    seeded with ``seed`` (or a stable seed derived from the device and address).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SignalKind = "constant"
    amplitude: float = 1.0
    offset: float = 0.0
    period_s: float = Field(default=10.0, gt=0)
    noise: float = Field(default=0.0, ge=0)
    step_values: list[float] = Field(default_factory=list)
    seed: int | None = None

    @model_validator(mode="after")
    def _steps(self) -> Signal:
        if self.kind == "step" and not self.step_values:
            raise ValueError("step_values must not be empty for kind 'step'")
        return self

    def value_at(self, t: float, rng: np.random.Generator | None) -> float:
        """The signal's value at ``t`` seconds; ``rng`` supplies the noise (``None``: no noise)."""
        phase = t / self.period_s
        if self.kind == "sine":
            v = self.offset + self.amplitude * math.sin(2.0 * math.pi * phase)
        elif self.kind == "ramp":
            v = self.offset + self.amplitude * (phase - math.floor(phase))
        elif self.kind == "step":
            v = float(self.step_values[math.floor(phase) % len(self.step_values)])
        elif self.kind == "counter":
            v = self.offset + self.amplitude * math.floor(phase)
        else:  # noise, constant
            v = self.offset
        if self.noise and rng is not None:
            v += float(rng.normal(0.0, self.noise))
        return v

    def rng(self, *seed_parts: object) -> np.random.Generator:
        """The noise generator: seeded with ``seed``, else with a stable hash of ``seed_parts``."""
        return np.random.default_rng(self.seed if self.seed is not None else stable_seed(*seed_parts))

    def sampler(self, *seed_parts: object) -> Callable[[float], float]:
        """``t -> value`` with its own noise generator (see :meth:`rng`)."""
        rng = self.rng(*seed_parts)
        return lambda t: self.value_at(t, rng)


def stable_seed(*parts: object) -> int:
    """A seed that depends only on ``parts`` (not on the process, unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
