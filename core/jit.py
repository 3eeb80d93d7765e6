"""Compiled numeric kernels (numba): one decorator for the operators' kernels and the historian's.

>>> @compiled
... def add(a: int, b: int) -> int:
...     return a + b
>>> add(2, 3)
5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit

__all__ = ["compiled", "inlined"]


def compiled(fn: Callable[..., Any]) -> Any:
    """``fn`` compiled on first use without the interpreter lock, cached on disk when some cache
    folder is writable (else compiled once per process: numba refuses ``cache=True`` otherwise)."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(nogil=True)(fn)


def inlined(fn: Callable[..., Any]) -> Any:
    """``fn`` for use inside compiled kernels only, inlined into each caller (numba's IR inlining): a
    small helper called per element then costs no call, and its loops are optimised with the caller's."""
    return njit(inline="always")(fn)
