"""Wake-ups and CPU per thread of a process, from ``/proc/<pid>/task/*`` (Linux).

The ``cost`` stage's per-thread breakdown: which thread of the flow process wakes how often and what
it costs. A wake-up is a voluntary context switch (the thread blocked — in ``epoll``, a condition, a
park — and was woken); CPU is the scheduler's run time from ``schedstat`` (nanoseconds: ``stat``'s
clock ticks are 10 ms, +-0.00025 cores over a 40 s window, the size of the effects measured at 10
devices), its kernel share from ``stat``'s ticks.

    python -m bench.cost_threads PID --seconds 10

>>> os.getpid() in sample(os.getpid())  # the main thread's id is the process id
True
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ThreadSample:
    name: str
    cpu_s: float
    """Time on a CPU (``schedstat``; ``stat``'s user + system ticks where it is missing)."""
    sys_s: float
    """The kernel's share of ``cpu_s`` (system calls, context switches, page faults)."""
    wakeups: int
    """Voluntary context switches so far."""


def _read(task: Path) -> ThreadSample | None:
    try:
        name = (task / "comm").read_text().strip()
        stat = (task / "stat").read_text()
        status = (task / "status").read_text()
    except OSError:  # the thread ended between listing and reading
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    cpu_s = (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14 and 15 of stat)
    sys_s = int(fields[12]) * TICK_S
    with contextlib.suppress(OSError, IndexError, ValueError):  # without schedstats: the ticks
        cpu_s = int((task / "schedstat").read_text().split()[0]) / 1e9
    wakeups = 0
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            wakeups = int(line.split()[1])
    return ThreadSample(name, cpu_s, sys_s, wakeups)


def sample(pid: int) -> dict[int, ThreadSample]:
    """Every thread of ``pid`` now, by thread id."""
    out: dict[int, ThreadSample] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        s = _read(task)
        if s is not None:
            out[int(task.name)] = s
    return out


def rates(
    before: dict[int, ThreadSample], after: dict[int, ThreadSample], seconds: float
) -> list[dict[str, Any]]:
    """Per thread alive in both samples: wake-ups per second, cores and the kernel's cores over ``seconds``, busiest first.

    The first thread of the process (its main thread) is named ``main`` whatever its ``comm``.
    """
    main = min(after) if after else 0
    out: list[dict[str, Any]] = []
    for tid, a in after.items():
        b = before.get(tid)
        if b is None:
            continue
        out.append(
            {
                "thread": "main" if tid == main else a.name,
                "tid": tid,
                "wakeups_per_s": round((a.wakeups - b.wakeups) / seconds, 1),
                "cores": round((a.cpu_s - b.cpu_s) / seconds, 4),
                "sys_cores": round((a.sys_s - b.sys_s) / seconds, 4),
            }
        )
    out.sort(key=lambda r: (-float(r["cores"]), -float(r["wakeups_per_s"])))
    return out


def measure(pid: int, seconds: float) -> list[dict[str, Any]]:
    """:func:`rates` of ``pid`` over the next ``seconds``."""
    before, t0 = sample(pid), time.monotonic()
    time.sleep(seconds)
    return rates(before, sample(pid), time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps({"load_avg": os.getloadavg(), "threads": measure(args.pid, args.seconds)}, indent=1))


if __name__ == "__main__":
    main()
