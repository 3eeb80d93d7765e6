"""Let the idle main thread of a Bytewax cluster process wake less often.

In a cluster (``-w N`` with N > 1, or ``-a``/``-i``), Bytewax 0.21's main thread only waits for its
worker threads: it sleeps 1 ms, takes the GIL to run Python's signal handlers, and sleeps again
(``src/run.rs``, ``cluster_main``). Measured in the e2e flow at 2 processes x 250 devices x 100 tags
at 1 s: ~945 wake-ups a second, 0.018 cores per process — more than a whole 10-device flow — and
a thousand GIL hand-overs a second that the poll loop and the worker wait on.

Linux lets a thread's timed sleeps end late by up to its *timer slack* (``prctl(PR_SET_TIMERSLACK)``,
50 us by default), and a thread inherits its creator's slack. :func:`relax_main_thread` gives the
main thread a slack of :data:`MAIN_SLACK_NS` just before Bytewax takes it over, so its 1 ms sleeps
last up to ~51 ms (measured: ~25 wake-ups a second); a signal is then handled within ~50 ms (a
drain's start, not its flush). The worker threads Bytewax creates from it inherit that slack, so
every worker gives itself the usual slack back when it builds its steps (:func:`restore_thread`,
called by the sources' and sinks' ``build``) — before it starts threads of its own, which inherit
from it.

Only Linux has the call; elsewhere both functions do nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = ["MAIN_SLACK_NS", "in_cluster", "relax_main_thread", "restore_thread", "thread_slack_ns"]

MAIN_SLACK_NS = 50_000_000
"""The main thread's slack in a cluster: 50 ms (its wake-ups drop from ~945 to ~25 a second)."""
_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30

_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a libc without the symbol table
        _libc = None

_usual: dict[str, int] = {}
"""``ns``: the slack the main thread had before :func:`relax_main_thread` (what workers restore)."""


def thread_slack_ns() -> int | None:
    """The calling thread's timer slack, ns (``None``: not on Linux)."""
    if _libc is None:
        return None
    return int(_libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0))


def _set(ns: int) -> bool:
    if _libc is None:
        return False
    if _libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_TIMERSLACK) failed: errno %d", ctypes.get_errno())
        return False
    return True


def run_option(short: str, long: str, envvar: str, argv: list[str], env: Mapping[str, str]) -> str:
    """The value ``python -m bytewax.run`` takes for an option: ``short VALUE``, ``shortVALUE``,
    ``long VALUE`` or ``long=VALUE`` in ``argv`` (the last one wins), else ``env[envvar]``, else "".

    >>> run_option("-w", "--workers-per-process", "W", ["x", "-w", "2"], {}), run_option("-w", "--w", "W", ["x", "-w3"], {})
    ('2', '3')
    >>> run_option("-s", "--snapshot-interval", "S", ["x", "--snapshot-interval=5"], {"S": "9"}), run_option("-s", "--s", "S", [], {"S": "9"})
    ('5', '9')
    """
    value = env.get(envvar, "") if envvar else ""
    for i, a in enumerate(argv):
        if a in (short, long) and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(long + "="):
            value = a.split("=", 1)[1]
        elif a.startswith(short) and not a.startswith("--") and len(a) > len(short):
            value = a[len(short) :]
    return value


def in_cluster(argv: list[str] | None = None, env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether ``python -m bytewax.run`` runs this process's workers under a waiting main thread:
    several workers (``-w``) or several processes (``-a``/``-i``, or their environment variables).

    >>> in_cluster(["bytewax.run", "flow:flow"], {}), in_cluster(["x", "f:f", "-w", "2"], {})
    (False, True)
    >>> in_cluster(["x", "f:f", "-i", "0", "-a", "h:1;h:2"], {}), in_cluster(["x"], {"BYTEWAX_ADDRESSES": "h:1"})
    (True, True)
    """
    argv = sys.argv if argv is None else argv
    env = os.environ if env is None else env
    workers = run_option("-w", "--workers-per-process", "BYTEWAX_WORKERS_PER_PROCESS", argv, env)
    if workers.strip().isdigit() and int(workers) > 1:
        return True
    if run_option("-a", "--addresses", "BYTEWAX_ADDRESSES", argv, env):
        return True
    if run_option("-i", "--process-id", "BYTEWAX_PROCESS_ID", argv, env):
        return True
    return bool(env.get("BYTEWAX_POD_NAME") and env.get("BYTEWAX_STATEFULSET_NAME"))  # a process id


def relax_main_thread(slack_ns: int = MAIN_SLACK_NS) -> bool:
    """Give the main thread ``slack_ns`` of timer slack when it will only wait for the workers of a
    cluster (:func:`in_cluster`); whether it did. Call last in the main thread before Bytewax runs
    the flow: threads the main thread starts afterwards inherit the slack."""
    if threading.current_thread() is not threading.main_thread() or not in_cluster():
        return False
    usual = thread_slack_ns()
    if usual is None or usual >= slack_ns:
        return False
    if not _set(slack_ns):
        return False
    _usual["ns"] = usual
    return True


def restore_thread() -> bool:
    """Give the calling thread the usual slack back if it inherited the main thread's relaxed one;
    whether it did. Called by every worker thread as it builds its steps (sources, sinks); on the
    main thread itself (a process :func:`in_cluster` misjudged, whose only worker it is) it undoes
    the relaxing."""
    usual = _usual.get("ns")
    if usual is None:
        return False
    if thread_slack_ns() == usual:
        return False
    return _set(usual)
