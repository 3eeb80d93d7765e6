"""Operators announce their timers to whatever paces the worker thread they run on.

A stateful step's ``notify_at`` says when Bytewax must run it again; a worker that sleeps while its
sources are idle (:mod:`connectors.nap`) must wake by then. Operators never import connectors, so
they call :func:`announce_due` here and the nap registers itself as the listener
(:func:`listen`). Without a listener (napping off, no connector loaded) an announcement does nothing.

>>> seen = []
>>> listen(lambda owner, at: seen.append((owner, at)))
>>> announce_due("w", None); seen
[('w', None)]
>>> listen(None); announce_due("w", None); seen
[('w', None)]
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

Listener = Callable[[object, datetime | None], None]

_listener: list[Listener] = []
"""The listener, if any (a list: set without a ``global`` statement)."""


def listen(listener: Listener | None) -> None:
    """Route every announcement to ``listener`` (``None``: drop them)."""
    _listener[:] = [] if listener is None else [listener]


def announce_due(owner: object, at: datetime | None) -> None:
    """``owner`` (a step's logic, on the calling worker thread) must run at ``at`` (``None``: no timer)."""
    for listener in _listener:
        listener(owner, at)
