"""The benchmark flow's stats reporter: concurrent writers never leave an unreadable report."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bench.flow import _Reporter


def test_concurrent_writes_and_the_final_report_always_leave_valid_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_BENCH_STATS", str(tmp_path))
    sizes = iter(range(10**9))
    lock = threading.Lock()

    def collect() -> dict[str, object]:
        with lock:
            n = next(sizes)
        return {"n": n, "pad": "x" * (n % 97) * 50}  # reports of different lengths

    reporter = _Reporter(collect, interval_s=0.001)
    errors: list[BaseException] = []
    bad: list[str] = []

    def writer() -> None:
        try:
            for _ in range(200):
                reporter.write()
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        for _ in range(400):
            try:
                json.loads(reporter.path.read_text())
            except FileNotFoundError:
                continue
            except ValueError as exc:
                bad.append(str(exc))

    threads = [threading.Thread(target=writer) for _ in range(4)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reporter.close()
    reporter.write()  # after the final report: ignored
    assert errors == [] and bad == []
    final = json.loads(reporter.path.read_text())
    assert final["final"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == [reporter.path.name]  # no temp files left
