"""CPU and peak RSS of the processes under test, sampled with psutil.

A watched entry is a root process and, optionally, its children (PostgreSQL's backends). CPU is the
process time used between :meth:`Monitor.mark` calls, in cores (1.0 = one core busy all the time).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class _Watched:
    root: psutil.Process
    children: bool
    peak_rss: int = 0
    cpu_at_mark: float = 0.0
    procs: dict[int, psutil.Process] = field(default_factory=dict)

    def members(self) -> list[psutil.Process]:
        found = [self.root]
        if self.children:
            with contextlib.suppress(psutil.Error):
                found += self.root.children(recursive=True)
        for p in found:
            self.procs.setdefault(p.pid, p)
        return list(self.procs.values())

    def sample(self) -> tuple[int, float]:
        rss, cpu = 0, 0.0
        for p in self.members():
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                self.procs.pop(p.pid, None)
        self.peak_rss = max(self.peak_rss, rss)
        return rss, cpu


class Monitor:
    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._mark_time = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int, *, children: bool = False) -> None:
        try:
            w = _Watched(psutil.Process(pid), children)
        except psutil.Error:
            return
        with self._lock:
            self._watched[name] = w
            w.cpu_at_mark = w.sample()[1]

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._watched.pop(name, None)

    def mark(self) -> None:
        """Start a measuring window: CPU is counted from here; peaks restart."""
        with self._lock:
            self._mark_time = time.monotonic()
            for w in self._watched.values():
                w.peak_rss = 0
                w.cpu_at_mark = w.sample()[1]

    def report(self) -> dict[str, dict[str, float]]:
        """Per process: cores used since :meth:`mark` and peak RSS (MB) seen since then."""
        with self._lock:
            elapsed = max(1e-9, time.monotonic() - self._mark_time)
            out = {}
            for name, w in self._watched.items():
                _rss, cpu = w.sample()
                out[name] = {
                    "cpu_cores": round((cpu - w.cpu_at_mark) / elapsed, 3),
                    "peak_rss_mb": round(w.peak_rss / 2**20, 1),
                }
            return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                for w in self._watched.values():
                    w.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
