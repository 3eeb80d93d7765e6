"""OEE (overall equipment effectiveness) per machine, per tumbling window and per shift.

A machine (:class:`OeeMachine`) is described by tags of one device: a machine-state tag whose
values map to ``running``, ``planned_stop`` or ``unplanned_stop`` (optionally with a reason), a
total parts counter, and optionally a good-parts and/or a reject counter.

**Time.** The machine state has step semantics: a sample holds from its timestamp until the next
sample. Time before the machine's first state sample is unknown and counted nowhere. Per period:

- ``availability = run / planned production time`` with ``planned production = run + unplanned
  stop`` (= known time minus planned stop time);
- ``performance = ideal_cycle_s * total_count / run``;
- ``quality = good / total_count`` (only a reject counter: ``good = total - reject``; only a good
  counter: ``reject = total - good``; neither: every part is good);
- ``oee = ideal_cycle_s * good / planned production time``, which *is* ``A * P * Q`` whenever all
  three are defined, and stays defined (0.0) when the machine never ran or made no part.

A zero denominator gives NaN, never an exception and never a made-up 0: availability and OEE are
NaN without planned production time, performance without run time, quality without parts.

**Counters.** A counter's increment is taken between consecutive good samples and attributed to
the period holding the later sample (the first sample only sets the baseline). See
:func:`counter_increments` for the decrease rule (reset vs. wrap).

**Periods** are tumbling windows of ``window_s`` (aligned to the Unix epoch) and the shifts of a
:class:`ShiftCalendar` (time zone aware, shifts may cross midnight). A period closes, and its
:class:`~core.records.OeeResult` is emitted, when the machine's event time (the newest timestamp
of its points) reaches the period end, or — for a quiet machine — when the injected clock passes
the end by ``lateness_s`` (:meth:`OeeCalculator.close_idle`). Points older than the time already
accounted are *late*: they are treated as happening at that time and counted in
``MachineState.late_points``; points stamped more than ``max_future_s`` ahead of the clock are
dropped and counted in ``future_points``. Bad-quality and NaN points are ignored (the previous
machine state holds). Machine-state values missing from ``state_map`` count as unplanned stops
with reason ``"unknown state <value>"``.

>>> m = OeeMachine("press", "plc1", state_tag=1, state_map={1: "running", 2: ("planned_stop", "break")},
...                counter_tag=2, ideal_cycle_s=30.0)
>>> calc = OeeCalculator([m], window_s=3600)
>>> from core.batch import PointBatch
>>> H = 3_600_000_000_000
>>> state = calc.initial_state()
>>> for t, tags, values in [(0, [1, 2], [1, 0]), (H // 2, [1, 2], [2, 50]), (H, [1, 2], [1, 50])]:
...     state, results = calc.process(state, PointBatch.from_values("plc1", tags, values, ts_ns=t), now_ns=t)
>>> r = results[0]
>>> r.period, r.run_s, r.planned_stop_s, r.total_count, r.availability, r.performance, r.oee
('window:1h', 1800.0, 1800.0, 50.0, 1.0, 0.8333333333333334, 0.8333333333333334)
>>> r.downtime_s
{'break': 1800.0}
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from core.batch import PointBatch
from core.records import OeeResult

__all__ = [
    "Category",
    "MachineState",
    "OeeCalculator",
    "OeeMachine",
    "OeeState",
    "Shift",
    "ShiftCalendar",
    "counter_increments",
]

Category = Literal["running", "planned_stop", "unplanned_stop"]
_CATEGORIES: tuple[str, ...] = get_args(Category)
SECOND = 1_000_000_000
WRAP_ZONE = 0.1
"""A decrease is a wrap when the old value is in the top and the new one in the bottom 10 % of the range."""


def counter_increments(
    previous: float | None, values: npt.ArrayLike, counter_max: float
) -> npt.NDArray[np.float64]:
    """Increments of a total counter: one per sample of ``values``, after ``previous``.

    - the first sample ever (``previous`` is ``None``) only sets the baseline: increment 0;
    - ``new >= old``: ``new - old``;
    - ``new < old`` is a **wrap** when ``old >= (1 - WRAP_ZONE) * counter_max`` and
      ``new < WRAP_ZONE * counter_max``: ``counter_max - old + new``;
    - any other decrease is a **reset** (restart from 0): the new value itself is the increment.

    >>> counter_increments(None, [5, 7, 2, 4], 2**32).tolist()
    [0.0, 2.0, 2.0, 2.0]
    >>> counter_increments(995, [7], 1000).tolist()
    [12.0]
    >>> counter_increments(400, [7], 1000).tolist()
    [7.0]
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return v.copy()
    prev = np.empty_like(v)
    prev[0] = v[0] if previous is None else previous
    prev[1:] = v[:-1]
    wrap = (prev >= (1 - WRAP_ZONE) * counter_max) & (v < WRAP_ZONE * counter_max)
    return np.where(v >= prev, v - prev, np.where(wrap, counter_max - prev + v, v))


# -- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OeeMachine:
    """One machine's tags (all on ``device_id``) and its ideal cycle time.

    ``state_map`` maps machine-state values to a category or ``(category, reason)``; without a
    reason the reason is ``"state <value>"``. It is stored normalised to ``(category, reason)``.

    >>> OeeMachine("m", "d", 1, {1: "runing"}, 2, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: machine 'm': `state_map[1]` must be one of running, planned_stop, unplanned_stop, got 'runing'
    """

    machine: str
    device_id: str
    state_tag: int
    state_map: Mapping[int, Category | tuple[Category, str]]
    counter_tag: int
    ideal_cycle_s: float
    good_tag: int | None = None
    reject_tag: int | None = None
    counter_max: int = 2**32

    def __post_init__(self) -> None:
        where = f"machine {self.machine!r}"
        if not (math.isfinite(self.ideal_cycle_s) and self.ideal_cycle_s > 0):
            raise ValueError(f"{where}: `ideal_cycle_s` must be > 0, got {self.ideal_cycle_s!r}")
        if not self.counter_max > 0:
            raise ValueError(f"{where}: `counter_max` must be > 0, got {self.counter_max!r}")
        if not self.state_map:
            raise ValueError(f"{where}: `state_map` must not be empty")
        normal: dict[int, tuple[Category, str]] = {}
        for value, spec in self.state_map.items():
            cat, reason = (spec, f"state {value}") if isinstance(spec, str) else spec
            if cat not in _CATEGORIES:
                raise ValueError(
                    f"{where}: `state_map[{value}]` must be one of {', '.join(_CATEGORIES)}, got {cat!r}"
                )
            normal[int(value)] = (cat, str(reason))
        tags = [
            t for t in (self.state_tag, self.counter_tag, self.good_tag, self.reject_tag) if t is not None
        ]
        if len(set(tags)) != len(tags):
            raise ValueError(f"{where}: state, counter, good and reject tags must differ, got {tags}")
        object.__setattr__(self, "state_map", MappingProxyType(normal))

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            OeeMachine,
            (
                self.machine,
                self.device_id,
                self.state_tag,
                dict(self.state_map),
                self.counter_tag,
                self.ideal_cycle_s,
                self.good_tag,
                self.reject_tag,
                self.counter_max,
            ),
        )

    def classify(self, value: float) -> tuple[Category, str]:
        """``(category, reason)`` of a machine-state value (unknown values: unplanned stop).

        >>> OeeMachine("m", "d", 1, {3: ("unplanned_stop", "jam")}, 2, 1.0).classify(3.0)
        ('unplanned_stop', 'jam')
        """
        if float(value).is_integer():
            hit = self.state_map.get(int(value))
            if hit is not None:
                return hit  # type: ignore[return-value]
        return "unplanned_stop", f"unknown state {value:g}"


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Shift:
    """A shift from ``start`` to ``end`` (local ``"HH:MM"``); ``end <= start`` crosses midnight.

    ``days``: the weekdays the shift *starts* on (``0``/``"mon"`` .. ``6``/``"sun"``), all when
    ``None``; stored as a sorted tuple of ints. ``start == end`` is a 24-hour shift.

    >>> Shift("night", "22:00", "06:00", days=["mon", 4]).days
    (0, 4)
    """

    name: str
    start: str
    end: str
    days: Sequence[int | str] | None = None

    def __post_init__(self) -> None:
        for attr in ("start", "end"):
            try:
                time.fromisoformat(getattr(self, attr))
            except (TypeError, ValueError):
                raise ValueError(
                    f"shift {self.name!r}: `{attr}` must be 'HH:MM', got {getattr(self, attr)!r}"
                ) from None
        if self.days is not None:
            days: set[int] = set()
            for d in self.days:
                if isinstance(d, str) and d.lower()[:3] in _DAYS:
                    days.add(_DAYS.index(d.lower()[:3]))
                elif isinstance(d, int) and 0 <= d <= 6:
                    days.add(d)
                else:
                    raise ValueError(f"shift {self.name!r}: `days` must hold 0..6 or mon..sun, got {d!r}")
            object.__setattr__(self, "days", tuple(sorted(days)))


@dataclass(frozen=True, slots=True)
class ShiftCalendar:
    """Shifts in a time zone (``zoneinfo`` name). Shift instances may overlap; each is a period.

    >>> cal = ShiftCalendar([Shift("night", "22:00", "06:00")], tz="Europe/Berlin")
    >>> [(n, str(datetime.fromtimestamp(s / 1e9, ZoneInfo("Europe/Berlin"))))
    ...  for n, s, e in cal.instances(1_710_030_000 * SECOND, 1_710_030_001 * SECOND)]
    [('night', '2024-03-09 22:00:00+01:00')]
    """

    shifts: Sequence[Shift]
    tz: str = "UTC"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shifts", tuple(self.shifts))
        if not self.shifts:
            raise ValueError("`shifts` must not be empty")
        names = [s.name for s in self.shifts]
        if len(set(names)) != len(names):
            raise ValueError(f"`shifts` names must be unique, got {names}")
        try:
            ZoneInfo(self.tz)
        except Exception:
            raise ValueError(f"`tz` must be a zoneinfo time zone, got {self.tz!r}") from None

    def instances(self, start_ns: int, end_ns: int) -> list[tuple[str, int, int]]:
        """``(name, start_ns, end_ns)`` of the shift instances intersecting ``[start_ns, end_ns)``."""
        if end_ns <= start_ns:
            return []
        zone = ZoneInfo(self.tz)
        first = datetime.fromtimestamp(start_ns // SECOND, zone).date() - timedelta(days=2)
        last = datetime.fromtimestamp(end_ns // SECOND, zone).date()
        out: list[tuple[str, int, int]] = []
        day = first
        while day <= last:
            out.extend(i for i in _day_instances(self, day) if i[1] < end_ns and i[2] > start_ns)
            day += timedelta(days=1)
        out.sort(key=lambda i: (i[1], i[0]))
        return out


@lru_cache(maxsize=4096)
def _day_instances(calendar: ShiftCalendar, day: date) -> tuple[tuple[str, int, int], ...]:
    zone = ZoneInfo(calendar.tz)
    out = []
    for s in calendar.shifts:
        if s.days is not None and day.weekday() not in s.days:
            continue
        t0, t1 = time.fromisoformat(s.start), time.fromisoformat(s.end)
        start = datetime.combine(day, t0, tzinfo=zone)
        end = datetime.combine(day + timedelta(days=1) if t1 <= t0 else day, t1, tzinfo=zone)
        out.append((s.name, _to_ns(start), _to_ns(end)))
    return tuple(out)


_EPOCH = datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))


def _to_ns(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def _window_label(window_s: float) -> str:
    if window_s % 3600 == 0:
        return f"{int(window_s // 3600)}h"
    if window_s % 60 == 0:
        return f"{int(window_s // 60)}m"
    return f"{window_s:g}s"


# -- state ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Period:
    """An open period's accumulators (durations in ns, counts in parts)."""

    period: str
    start_ns: int
    end_ns: int
    run_ns: int = 0
    planned_ns: int = 0
    unplanned_ns: int = 0
    total: float = 0.0
    good: float = 0.0
    reject: float = 0.0
    down_ns: dict[str, int] = field(default_factory=dict)

    def copy(self) -> _Period:
        return _Period(
            self.period,
            self.start_ns,
            self.end_ns,
            self.run_ns,
            self.planned_ns,
            self.unplanned_ns,
            self.total,
            self.good,
            self.reject,
            dict(self.down_ns),
        )


@dataclass(slots=True)
class MachineState:
    """One machine's memory. ``until_ns``: event time accounted so far (``None``: no point yet)."""

    until_ns: int | None = None
    state_value: float | None = None
    counters: dict[int, float] = field(default_factory=dict)
    open: dict[tuple[str, int], _Period] = field(default_factory=dict)
    late_points: int = 0
    future_points: int = 0
    resets: int = 0
    """Gaps longer than ``max_hold_s`` after which the machine started over (see :meth:`OeeCalculator.process`)."""

    def copy(self) -> MachineState:
        return MachineState(
            self.until_ns,
            self.state_value,
            dict(self.counters),
            {k: p.copy() for k, p in self.open.items()},
            self.late_points,
            self.future_points,
            self.resets,
        )


@dataclass(frozen=True, slots=True)
class OeeState:
    """The machines' memories by machine name. The core never modifies a state it is given."""

    machines: Mapping[str, MachineState] = field(default_factory=dict)


# -- the calculator ---------------------------------------------------------------------------------


class OeeCalculator:
    """OEE of ``machines`` per window (``window_s``) and/or per shift (``calendar``).

    ``lateness_s``: how long after a period's end the clock waits before closing it for a quiet
    machine; ``max_future_s``: how far ahead of the clock a point may be stamped; ``max_hold_s``:
    the longest a machine state is held without a point. A longer gap (between the event time and
    the next point, inside a batch, or of a quiet machine before the clock) is not accounted: the
    state holds for ``max_hold_s``, the periods that ended by then close, the others are emitted as
    they stand (partial), and the machine starts over (unknown state, counter baselines reset,
    ``MachineState.resets`` counted). Without this bound one point stamped years back made the
    calculator emit one period per window across the whole gap (525,600 one-minute periods a year).
    """

    def __init__(
        self,
        machines: Sequence[OeeMachine],
        window_s: float | None = None,
        calendar: ShiftCalendar | None = None,
        *,
        lateness_s: float = 5.0,
        max_future_s: float = 60.0,
        max_hold_s: float = 8 * 3600.0,
    ) -> None:
        self.machines: tuple[OeeMachine, ...] = tuple(machines)
        self.window_s = window_s
        self.calendar = calendar
        self.lateness_s = lateness_s
        self.max_future_s = max_future_s
        self.max_hold_s = max_hold_s
        if not (isinstance(max_hold_s, int | float) and math.isfinite(max_hold_s) and max_hold_s > 0):
            raise ValueError(f"`max_hold_s` must be > 0, got {max_hold_s!r}")
        if window_s is None and calendar is None:
            raise ValueError("give `window_s`, `calendar` or both")
        if window_s is not None and not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"`window_s` must be > 0, got {window_s!r}")
        if not (lateness_s >= 0 and max_future_s >= 0):
            raise ValueError(
                f"`lateness_s` and `max_future_s` must be >= 0, got {lateness_s!r}, {max_future_s!r}"
            )
        names = [m.machine for m in self.machines]
        if len(set(names)) != len(names):
            raise ValueError(f"machine names must be unique, got {names}")
        self._compile()

    def _compile(self) -> None:
        self._w_ns = None if self.window_s is None else round(self.window_s * SECOND)
        self._w_label = None if self.window_s is None else f"window:{_window_label(self.window_s)}"
        self._late_ns = round(self.lateness_s * SECOND)
        self._future_ns = round(self.max_future_s * SECOND)
        self._hold_ns = round(self.max_hold_s * SECOND)
        by_device: dict[str, list[tuple[OeeMachine, npt.NDArray[np.int64]]]] = {}
        for m in self.machines:
            tags = [t for t in (m.state_tag, m.counter_tag, m.good_tag, m.reject_tag) if t is not None]
            by_device.setdefault(m.device_id, []).append((m, np.array(sorted(tags), dtype=np.int64)))
        self._by_device = by_device
        self._by_name = {m.machine: m for m in self.machines}

    def __getstate__(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("machines", "window_s", "calendar", "lateness_s", "max_future_s", "max_hold_s")
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("max_hold_s", 8 * 3600.0)  # snapshots taken before the setting existed
        self.__dict__.update(state)
        self._compile()

    def __repr__(self) -> str:
        return f"OeeCalculator(<{len(self.machines)} machines>, window_s={self.window_s!r}, calendar={self.calendar!r})"

    @staticmethod
    def initial_state() -> OeeState:
        return OeeState()

    # -- periods ------------------------------------------------------------------------------

    def _instances(self, a: int, b: int) -> list[tuple[str, int, int]]:
        """The periods intersecting ``[a, b)``: ``(label, start_ns, end_ns)``."""
        out: list[tuple[str, int, int]] = []
        if b <= a:
            return out
        if self._w_ns is not None and self._w_label is not None:
            w = self._w_ns
            out.extend((self._w_label, k * w, (k + 1) * w) for k in range(a // w, (b - 1) // w + 1))
        if self.calendar is not None:
            out.extend((f"shift:{n}", s, e) for n, s, e in self.calendar.instances(a, b))
        return out

    def _next_end(self, t: int) -> int | None:
        ends = [e for _, _, e in self._instances(t, t + 1)]
        if self.calendar is not None:
            ends += [e for _, _, e in self.calendar.instances(t, t + 8 * 86_400 * SECOND) if e > t]
        return min(ends) if ends else None

    # -- processing -----------------------------------------------------------------------------

    def process(self, state: OeeState, batch: PointBatch, now_ns: int) -> tuple[OeeState, list[OeeResult]]:
        """Feed one device batch; the new state and the results of the periods that closed.

        Periods close by the machines' event time; then, for every machine in the state, by the
        clock ``now_ns`` (as :meth:`close_idle`). ``state`` and ``batch`` are not modified.
        """
        results: list[OeeResult] = []
        machines = dict(state.machines)
        for m, tags in self._by_device.get(batch.device_id, ()):
            k = np.minimum(np.searchsorted(tags, batch.tag_ids), len(tags) - 1)
            sel = (tags[k] == batch.tag_ids) & (batch.quality < 128) & np.isfinite(batch.values)
            if not sel.any():
                continue
            ms = machines.get(m.machine)
            ms = MachineState() if ms is None else ms.copy()
            self._feed(
                m,
                ms,
                ts=batch.ts_ns[sel],
                tags=batch.tag_ids[sel],
                values=batch.values[sel],
                now_ns=now_ns,
                out=results,
            )
            machines[m.machine] = ms
        new_state, idle = self.close_idle(OeeState(machines), now_ns)
        results.extend(idle)
        results.sort(key=lambda r: (r.end_ns, r.start_ns, r.period, r.machine))
        return new_state, results

    def _feed(
        self,
        m: OeeMachine,
        ms: MachineState,
        *,
        ts: npt.NDArray[np.int64],
        tags: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        now_ns: int,
        out: list[OeeResult],
    ) -> None:
        future = ts > now_ns + self._future_ns
        if future.any():
            ms.future_points += int(future.sum())
            ts, tags, values = ts[~future], tags[~future], values[~future]
            if len(ts) == 0:
                return
        if ms.until_ns is not None:
            late = ts < ms.until_ns
            if late.any():
                ms.late_points += int(late.sum())
                ts = np.maximum(ts, ms.until_ns)
        order = np.argsort(ts, kind="stable")
        ts, tags, values = ts[order], tags[order], values[order]
        # gaps longer than max_hold_s split the points; the machine starts over after each
        bounds = [0, *(np.flatnonzero(np.diff(ts) > self._hold_ns) + 1).tolist(), len(ts)]
        for a, b in itertools.pairwise(bounds):
            if ms.until_ns is not None and int(ts[a]) - ms.until_ns > self._hold_ns:
                self._reset(m, ms, out)
            self._feed_sorted(m, ms, ts[a:b], tags[a:b], values[a:b], out=out)

    def _reset(self, m: OeeMachine, ms: MachineState, out: list[OeeResult]) -> None:
        """After a gap longer than ``max_hold_s``: hold the state that long, close what ended by
        then, emit the rest as it stands, and forget the machine's state and counter baselines."""
        assert ms.until_ns is not None
        self._advance(m, ms, ms.until_ns + self._hold_ns)
        self._close(m, ms, out)
        out.extend(self._result(m, p) for p in ms.open.values())
        ms.open.clear()
        ms.until_ns = None
        ms.state_value = None
        ms.counters.clear()
        ms.resets += 1

    def _feed_sorted(
        self,
        m: OeeMachine,
        ms: MachineState,
        ts: npt.NDArray[np.int64],
        tags: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        *,
        out: list[OeeResult],
    ) -> None:
        """Account time-ordered points with no gap longer than ``max_hold_s``."""
        if ms.until_ns is None:
            ms.until_ns = int(ts[0])

        # counters first: their periods are still open (nothing closes before the advance below)
        for kind, tag in (("total", m.counter_tag), ("good", m.good_tag), ("reject", m.reject_tag)):
            if tag is None:
                continue
            sel = tags == tag
            if not sel.any():
                continue
            v, t = values[sel], ts[sel]
            inc = counter_increments(ms.counters.get(tag), v, m.counter_max)
            ms.counters[tag] = float(v[-1])
            nz = inc != 0
            if nz.any():
                self._count(ms, kind, t[nz], inc[nz])

        # machine-state changes, then the event time up to the newest point
        sel = tags == m.state_tag
        if sel.any():
            v, t = values[sel], ts[sel]
            prev = np.empty_like(v)
            prev[0] = np.nan if ms.state_value is None else ms.state_value
            prev[1:] = v[:-1]
            for i in np.flatnonzero(v != prev):  # one iteration per state *change*
                self._advance(m, ms, int(t[i]))
                ms.state_value = float(v[i])
        self._advance(m, ms, int(ts[-1]))
        self._close(m, ms, out)

    def _count(
        self, ms: MachineState, kind: str, t: npt.NDArray[np.int64], inc: npt.NDArray[np.float64]
    ) -> None:
        lo, hi = int(t[0]), int(t[-1]) + 1
        for label, s, e in self._instances(lo, hi):
            inside = (t >= s) & (t < e)
            if inside.any():
                p = self._open(ms, label, s, e)
                setattr(p, kind, getattr(p, kind) + float(inc[inside].sum()))

    @staticmethod
    def _open(ms: MachineState, label: str, s: int, e: int) -> _Period:
        p = ms.open.get((label, s))
        if p is None:
            p = ms.open[(label, s)] = _Period(label, s, e)
        return p

    def _advance(self, m: OeeMachine, ms: MachineState, to_ns: int) -> None:
        """Account the time from ``ms.until_ns`` to ``to_ns`` to the machine's current state."""
        a = ms.until_ns
        if a is None or to_ns <= a:
            if a is None:
                ms.until_ns = to_ns
            return
        if ms.state_value is not None:
            cat, reason = m.classify(ms.state_value)
            for label, s, e in self._instances(a, to_ns):
                p = self._open(ms, label, s, e)
                d = min(e, to_ns) - max(s, a)
                if cat == "running":
                    p.run_ns += d
                else:
                    if cat == "planned_stop":
                        p.planned_ns += d
                    else:
                        p.unplanned_ns += d
                    p.down_ns[reason] = p.down_ns.get(reason, 0) + d
        ms.until_ns = to_ns

    def _close(self, m: OeeMachine, ms: MachineState, out: list[OeeResult]) -> None:
        until = ms.until_ns
        if until is None:
            return
        for key in [k for k, p in ms.open.items() if p.end_ns <= until]:
            out.append(self._result(m, ms.open.pop(key)))

    def _result(self, m: OeeMachine, p: _Period) -> OeeResult:
        run, planned, unplanned = p.run_ns / SECOND, p.planned_ns / SECOND, p.unplanned_ns / SECOND
        total = p.total
        if m.good_tag is not None and m.reject_tag is not None:
            good, reject = p.good, p.reject
        elif m.good_tag is not None:
            good, reject = p.good, total - p.good
        elif m.reject_tag is not None:
            good, reject = total - p.reject, p.reject
        else:
            good, reject = total, 0.0
        production = p.run_ns + p.unplanned_ns  # ns: exact zero test
        nan = math.nan
        return OeeResult(
            machine=m.machine,
            period=p.period,
            start_ns=p.start_ns,
            end_ns=p.end_ns,
            availability=run / (run + unplanned) if production else nan,
            performance=m.ideal_cycle_s * total / run if p.run_ns else nan,
            quality=good / total if total else nan,
            oee=m.ideal_cycle_s * good / (run + unplanned) if production else nan,
            run_s=run,
            planned_stop_s=planned,
            unplanned_stop_s=unplanned,
            total_count=total,
            good_count=good,
            reject_count=reject,
            downtime_s={r: d / SECOND for r, d in sorted(p.down_ns.items())},
        )

    # -- the clock ------------------------------------------------------------------------------

    def close_idle(self, state: OeeState, now_ns: int) -> tuple[OeeState, list[OeeResult]]:
        """Close the periods that ended ``lateness_s`` or more before ``now_ns``.

        A quiet machine's last state is extended to the end of those periods (step semantics);
        its event time moves to that end, so later points stamped before it count as late.
        """
        cutoff = now_ns - self._late_ns
        results: list[OeeResult] = []
        machines: dict[str, MachineState] | None = None
        for name, old in state.machines.items():
            m = self._by_name.get(name)
            if m is None or old.until_ns is None or cutoff <= old.until_ns:
                continue
            if cutoff - old.until_ns > self._hold_ns:  # quiet for too long: start over
                if machines is None:
                    machines = dict(state.machines)
                ms = machines[name] = old.copy()
                self._reset(m, ms, results)
                continue
            ends = [e for _, _, e in self._instances(old.until_ns, cutoff) if e <= cutoff]
            if not ends:
                continue
            if machines is None:
                machines = dict(state.machines)
            ms = machines[name] = old.copy()
            self._advance(m, ms, max(ends))
            self._close(m, ms, results)
        results.sort(key=lambda r: (r.end_ns, r.start_ns, r.period, r.machine))
        return (state if machines is None else OeeState(machines)), results

    def next_deadline(self, state: OeeState) -> int | None:
        """When (clock ns) :meth:`close_idle` will next have a period to close; ``None``: never."""
        due: list[int] = []
        for ms in state.machines.values():
            if ms.until_ns is None:
                continue
            e = self._next_end(ms.until_ns)
            if e is not None:
                due.append(e + self._late_ns)
        return min(due) if due else None

    def flush(self, state: OeeState) -> list[OeeResult]:
        """Results of every open period as it stands (partial; end of stream). ``state`` is kept."""
        results = [
            self._result(self._by_name[name], p)
            for name, ms in state.machines.items()
            if name in self._by_name
            for p in ms.open.values()
        ]
        results.sort(key=lambda r: (r.end_ns, r.start_ns, r.period, r.machine))
        return results
