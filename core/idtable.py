"""Open-addressing tables of int64 ids in numpy arrays, probed inside compiled kernels.

A table is two arrays of ``2**bits`` slots, ``used`` (bool) and ``keys`` (int64), kept at most half
full by its owner, plus whatever value columns the owner indexes by slot (the historian's newest
row per tag, the UNS packer's byte offsets per tag). :func:`slot_of` finds a key's slot: Fibonacci
hashing for the first slot, then linear probing; :func:`claim` also takes it for a new key.

>>> from core.jit import compiled
>>> def put(used, keys, key, bits):
...     return claim(used, keys, key, bits)
>>> used, keys = np.zeros(8, np.bool_), np.zeros(8, np.int64)
>>> (a, new_a), (b, new_b) = compiled(put)(used, keys, 42, 3), compiled(put)(used, keys, 42, 3)
>>> bool(a == b), new_a, new_b, int(used.sum())
(True, True, False, 1)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.jit import inlined

__all__ = ["claim", "slot_of"]

_HASH = np.uint64(0x9E3779B97F4A7C15)
"""Fibonacci hashing: an id times this, top ``bits`` bits, is its first slot."""


def _slot_of(used: npt.NDArray[np.bool_], keys: npt.NDArray[np.int64], key: int, bits: int) -> np.uint64:
    """The slot holding ``key``, or the free slot where it goes (``used`` is False there)."""
    mask = np.uint64(len(keys) - 1)
    slot = (np.uint64(key) * _HASH) >> np.uint64(64 - bits)
    while used[slot] and keys[slot] != key:
        slot = (slot + np.uint64(1)) & mask
    return slot


slot_of = inlined(_slot_of)


def _claim(
    used: npt.NDArray[np.bool_], keys: npt.NDArray[np.int64], key: int, bits: int
) -> tuple[np.uint64, bool]:
    """``key``'s slot, taken for it when it was free: ``(slot, whether the key is new)``."""
    slot = slot_of(used, keys, key, bits)
    if used[slot]:
        return slot, False
    used[slot] = True
    keys[slot] = key
    return slot, True


claim = inlined(_claim)
