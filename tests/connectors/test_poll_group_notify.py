"""A poll group wakes its worker once per pass of the event loop, not once per finished poll.

Polls whose responses arrive in one ``epoll`` wake-up finish in one pass of the loop; the worker's
nap is notified once after them all. The last poll in flight notifies at once.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from connectors.nap import worker_nap
from connectors.polling import PollGroup


def test_polls_finishing_in_one_loop_pass_notify_the_worker_once(monkeypatch: pytest.MonkeyPatch) -> None:
    nap = worker_nap(0.02)  # this thread is the group's worker
    assert nap is not None
    notified: list[int] = []
    monkeypatch.setattr(nap, "notify", lambda: notified.append(1))
    group = PollGroup(threading.Event(), wake_slack_s=0.002, max_wait_s=0.02)
    assert group.next_batch() == []  # attaches the worker's nap
    parts = [SimpleNamespace(_completed=0, _pending=True) for _ in range(4)]

    async def loop_side() -> None:
        for _ in parts:
            assert group.begin()
        for part in parts[:3]:  # three finish in one pass, one is still in flight
            group.finish(part, f"batch {len(notified)}")  # type: ignore[arg-type]
        assert notified == []  # not yet: at the end of the pass
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert notified == [1]
        group.finish(parts[3], "last")  # type: ignore[arg-type]
        assert notified == [1, 1]  # nothing else in flight: at once

    try:
        asyncio.run(loop_side())
        assert group.next_batch() == ["batch 0", "batch 0", "batch 0", "last"]
        assert [p._completed for p in parts] == [1, 1, 1, 1]
    finally:
        group.release()
