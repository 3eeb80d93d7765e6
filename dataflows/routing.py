"""Poll each device on the worker that holds its state, so its batches never cross a process.

Bytewax 0.21 routes an item of a keyed stateful step (``stateful_batch``, which every stateful
operator is built on) to worker ``hash(key) % worker_count``, where ``hash`` is Rust's
``DefaultHasher`` (SipHash-1-3 with both keys 0) over the key's UTF-8 bytes followed by ``0xff``
(``impl Hash for str``; bytewax ``src/operators.rs`` ``stateful_batch`` → ``src/timely.rs``
``partition``). A :class:`~bytewax.inputs.FixedPartitionedSource` however places its partitions with
a separate, load-balancing assignment, so a device's polls and its state landed on different
processes about half the time (measured: 2 processes ran the chain at 0.73x one, the batches being
pickled between them before every stateful step).

:class:`WorkerLocalSource` is a :class:`~bytewax.inputs.DynamicSource` over such a partitioned source:
each worker builds exactly the partitions whose state key routes to itself, with the same function
Bytewax uses, and drives them as one partition. Keys stay the device ids, so recovery and rescaling
through recovery behave as before: with a new worker count both the devices and their state move by
the same rule. Only sources whose partitions keep no resume state may be wrapped (a dynamic source
is not snapshotted): the polling sources (``snapshot()`` is ``None``, live polls cannot replay).

Add it with :func:`worker_local_input`, not ``op.input`` alone: with recovery on, a Bytewax 0.21 worker
runs until the stream of *snapshots* is complete (``src/worker.rs``: the probe sits on the
concatenated snapshots of the fixed-partitioned inputs and sinks and the stateful steps, not on the
outputs). A dynamic source writes no snapshots, so a flow whose other steps keep no state (devices
straight to the UNS and the historian) had an empty snapshot stream and ended at once with exit
code 0, having read nothing. :func:`worker_local_input` hangs an empty stateful step on the source,
whose snapshot stream stays open exactly as long as the source runs, as a fixed-partitioned source's
own did.

>>> worker_of("dev0000", 1)
0
>>> sorted({worker_of(f"dev{i:04d}", 2) for i in range(16)})
[0, 1]
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from bytewax.operators import StatefulBatchLogic

from connectors.nap import forget_worker_count, set_worker_count
from core.timerslack import restore_thread

X = TypeVar("X")

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 of ``data`` (unsigned 64 bits): what Rust's ``DefaultHasher`` computes.

    >>> hex(siphash13(b""))
    '0xd1fba762150c532c'
    """
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rounds(1)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    rounds(1)
    v0 ^= b
    v2 ^= 0xFF
    rounds(3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, worker_count: int) -> int:
    """The worker index Bytewax 0.21 routes state key ``key`` to among ``worker_count`` workers."""
    if worker_count < 1:
        raise ValueError(f"`worker_count` must be >= 1, got {worker_count}")
    return siphash13(key.encode() + b"\xff") % worker_count


class WorkerLocalSource(DynamicSource[X], Generic[X]):
    """Builds, on each worker, the partitions of ``inner`` whose state key routes to that worker.

    ``key_of`` maps a partition key of ``inner`` (``modbus:press-01``) to the state key its items are
    keyed by downstream (``press-01``). ``inner``'s partitions must need no resume state: they are
    built with ``None`` and never snapshotted. ``sole_input``: the flow has no other input and keys
    every keyed step by ``key_of``'s keys, so no item ever comes to a worker from another: a worker
    with nothing to do then naps as long as the only worker of a flow does
    (:func:`connectors.nap.set_worker_count`; measured at 2 processes x 250 devices x 100 tags at
    1 s, the 20 ms cap woke each worker ~70 more times a second).
    """

    def __init__(
        self, inner: FixedPartitionedSource[X, Any], key_of: Callable[[str], str], *, sole_input: bool = False
    ) -> None:
        self.inner = inner
        self.key_of = key_of
        self.sole_input = sole_input

    def parts_for(self, worker_index: int, worker_count: int) -> list[str]:
        """The partition keys worker ``worker_index`` of ``worker_count`` polls."""
        return [p for p in self.inner.list_parts() if worker_of(self.key_of(p), worker_count) == worker_index]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LocalParts[X]:
        restore_thread()  # (a worker thread of a cluster: see core.timerslack)
        # Bytewax builds it on the worker's thread: its nap's cap
        set_worker_count(worker_count, items_from_peers=not self.sole_input)
        keys = self.parts_for(worker_index, worker_count)
        build_parts = getattr(self.inner, "build_parts", None)
        if build_parts is not None:  # a polling source: one ready queue for the worker's devices
            parts: dict[str, StatefulSourcePartition[X, Any]] = build_parts(step_id, keys)
        else:
            parts = {p: self.inner.build_part(step_id, p, None) for p in keys}
        return _LocalParts(parts)


def worker_local_input(step_id: str, flow: Dataflow, source: WorkerLocalSource[X]) -> Stream[X]:
    """``op.input(step_id, flow, source)``, kept running under recovery (see the module doc).

    The anchor, ``{step_id}_recovery_anchor``, is a stateful step fed an empty stream (one Python
    call per batch of source items drops them all): it holds no key and snapshots nothing, but its
    snapshot stream is complete only once the source's partitions on every worker have ended.
    """
    stream = op.input(step_id, flow, source)
    nothing = op.flat_map_batch(f"{step_id}_recovery_anchor_in", stream, _drop)
    op.stateful_batch(f"{step_id}_recovery_anchor", nothing, _Stateless)
    return stream


def _drop(_items: list[Any]) -> Iterable[tuple[str, Any]]:
    return ()


class _Stateless(StatefulBatchLogic[Any, Any, None]):
    """The anchor's logic: it gets no items (its input is empty) and never keeps a key."""

    def __init__(self, _resume_state: None) -> None:
        pass

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        return (), StatefulBatchLogic.DISCARD

    def snapshot(self) -> None:
        return None


class _LocalParts(StatelessSourcePartition[X], Generic[X]):
    """Drives a worker's partitions as one.

    Partitions that share a poll group (``poll_group``: :class:`connectors.polling.PollGroup`, what
    :meth:`~connectors.polling.PollingSource.build_parts` builds) are drained through it: one call
    per activation takes every finished poll of the group, however many devices it has, and the
    group says when to look again. Any other partition is asked for items only once its own
    ``next_awake`` has come (a heap of wake times), the way Bytewax drives separate partitions.
    """

    def __init__(self, parts: dict[str, StatefulSourcePartition[X, Any]]) -> None:
        self._parts = parts
        self._groups: dict[int, tuple[Any, list[StatefulSourcePartition[X, Any]]]] = {}
        self._live: dict[str, StatefulSourcePartition[X, Any]] = {}
        for key, part in parts.items():
            group = getattr(part, "poll_group", None)
            if group is None:
                self._live[key] = part
            else:
                self._groups.setdefault(id(group), (group, []))[1].append(part)
        self._heap: list[tuple[float, str]] = [(0.0, key) for key in self._live]  # all due at once
        heapq.heapify(self._heap)

    def next_batch(self) -> list[X]:
        if not self._live and not self._groups:
            raise StopIteration
        out: list[X] = []
        for gid, (group, members) in list(self._groups.items()):
            try:
                out += group.next_batch()
            except StopIteration:
                del self._groups[gid]
                for part in members:
                    part.close()
        heap = self._heap
        if heap:
            now = datetime.now(UTC).timestamp()
            while heap and heap[0][0] <= now:
                _, key = heapq.heappop(heap)
                part = self._live[key]
                try:
                    out += part.next_batch()
                except StopIteration:
                    del self._live[key]
                    part.close()
                    continue
                awake = part.next_awake()
                heapq.heappush(heap, (now if awake is None else awake.timestamp(), key))
        if not self._live and not self._groups and not out:
            raise StopIteration
        return out

    def next_awake(self) -> datetime | None:
        wake = self._heap[0][0] if self._heap else None
        for group, _ in self._groups.values():
            at = group.next_wake()
            if at is None:
                return None
            wake = at if wake is None else min(wake, at)
        return None if wake is None else datetime.fromtimestamp(wake, tz=UTC)

    def close(self) -> None:
        for _, members in self._groups.values():
            for part in members:
                part.close()
        self._groups.clear()
        for part in self._live.values():
            part.close()
        self._live.clear()
        self._heap.clear()
        forget_worker_count()  # (set by the source's build on this thread)
