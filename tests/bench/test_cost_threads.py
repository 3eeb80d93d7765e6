"""The per-thread CPU of ``bench.cost_threads`` is the scheduler's nanosecond count, not 10 ms ticks."""

from __future__ import annotations

import os
import threading
import time

from bench import cost_threads


def test_a_threads_cpu_matches_its_own_cpu_clock_to_the_millisecond() -> None:
    ready, done = threading.Event(), threading.Event()
    spent: list[float] = []
    tid: list[int] = []

    def spin() -> None:
        tid.append(threading.get_native_id())
        ready.wait()
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.025:  # 25 ms of CPU: ticks would read 20 or 30
            pass
        spent.append(time.thread_time() - t0)
        done.wait()

    worker = threading.Thread(target=spin, name="spinner")
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not tid and time.monotonic() < deadline:
            time.sleep(0.001)
        before = cost_threads.sample(os.getpid())[tid[0]]
        ready.set()
        while not spent and time.monotonic() < deadline:
            time.sleep(0.001)
        after = cost_threads.sample(os.getpid())[tid[0]]
    finally:
        ready.set()
        done.set()
        worker.join()
    assert spent, "the spinning thread did not finish"
    assert abs((after.cpu_s - before.cpu_s) - spent[0]) < 0.002


def test_a_process_cpu_clock_reads_another_process_to_the_millisecond() -> None:
    import subprocess
    import sys

    import psutil

    from bench.cost import _cpu

    code = "import time\nt0 = time.process_time()\nwhile time.process_time() - t0 < 0.3: pass\nprint(time.process_time())\ninput()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        own = float(proc.stdout.readline())  # the child's own clock, after its spin; it waits now
        seen = _cpu(psutil.Process(proc.pid))
        proc.stdin.write("\n")
        proc.stdin.flush()
    finally:
        proc.wait(timeout=30)
    assert own <= seen < own + 0.002
