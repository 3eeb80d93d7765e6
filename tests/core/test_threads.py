"""core.threads: the OS names of a process's threads follow their Python names."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from core.threads import name_os_threads, os_thread_name

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc only")


def _started(name: str) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    ready = threading.Event()

    def run() -> None:
        ready.set()
        done.wait(30)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    assert ready.wait(10)
    return t, done


def test_names_each_thread_once_and_cuts_at_the_kernel_limit() -> None:
    a, stop_a = _started("historian-writer-of-flow-x")
    b, stop_b = _started("spool-x")
    try:
        assert os_thread_name(a.native_id) != "historian-write"  # the OS name starts as the program's
        assert name_os_threads() >= 2
        assert os_thread_name(a.native_id) == "historian-write"
        assert os_thread_name(b.native_id) == "spool-x"
        assert name_os_threads() == 0  # nothing new to name
        b.name = "spool-renamed"
        assert name_os_threads() == 1
        assert os_thread_name(b.native_id) == "spool-renamed"
    finally:
        stop_a.set(), stop_b.set()
        a.join(10), b.join(10)


def test_leaves_the_main_thread_as_the_process_name() -> None:
    before = os_thread_name(threading.main_thread().native_id)
    name_os_threads()
    assert os_thread_name(threading.main_thread().native_id) == before


def test_a_thread_that_ended_is_forgotten() -> None:
    t, stop = _started("short-lived")
    name_os_threads()
    stop.set()
    t.join(10)
    name_os_threads()  # must not raise for the ended thread
    # its /proc entry goes with it: ``join`` returns when Python is done with the thread, the OS
    # thread exits a moment later (seen once in CI: the entry was still there right after ``join``)
    deadline = time.monotonic() + 10
    while os_thread_name(t.native_id) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os_thread_name(t.native_id) is None
    name_os_threads()  # nor after the entry is gone
