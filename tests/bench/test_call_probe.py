"""The call probe times calls on its own thread only and reports them as rates."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from bench import call_probe


class Work:
    def spin(self, ns: int) -> int:
        end = time.thread_time_ns() + ns
        n = 0
        while time.thread_time_ns() < end:
            n += 1
        return n


def test_calls_on_the_probed_thread_add_their_cpu_and_others_are_left_out() -> None:
    totals: dict[str, list[int]] = {}
    original = Work.spin
    call_probe.wrap(Work, "spin", totals, threading.get_ident())
    try:
        for _ in range(3):
            assert Work().spin(2_000_000) > 0
        other = threading.Thread(target=Work().spin, args=(20_000_000,))
        other.start()
        other.join()
    finally:
        Work.spin = original  # type: ignore[method-assign]
    ns, calls = totals["Work.spin"]
    assert calls == 3
    assert 6_000_000 <= ns < 20_000_000  # three 2 ms spins; the other thread's 20 ms is not counted


def test_the_summary_is_the_difference_between_the_third_and_the_last_report(tmp_path: Path) -> None:
    def line(t: float, worker_s: float, ns: int, n: int) -> str:
        return json.dumps({"t": t, "worker_ns": int(worker_s * 1e9), "calls": {"A.f": [ns, n]}})

    path = tmp_path / "p.1.jsonl"
    rows = [
        line(0, 0, 0, 0),
        line(5, 1, 10**9, 100),
        line(10, 2, 2 * 10**9, 200),
        line(30, 4, 3 * 10**9, 1200),
    ]
    path.write_text("\n".join(rows[:3]) + "\n")
    assert call_probe.summarize(path) is None  # start-up only
    path.write_text("\n".join(rows) + "\n")
    figures = call_probe.summarize(path)
    assert figures == {
        "seconds": 20.0,
        "worker_cores": 0.1,
        "A.f": {"cores": 0.05, "per_s": 50.0, "us_per_call": 1000.0},
    }
