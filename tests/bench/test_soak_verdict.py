"""The soak's pass/fail criteria (issue 11, item 6), as ``just soak`` prints them."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos import soak_verdict

PASSING: dict[str, Any] = {
    "rss_growth_pct": 1.02,
    "rss_after_warmup_mb": 293.8,
    "rss_at_end_mb": 296.8,
    "drained": True,
    "spool_records_after_drain": 0,
    "spool_bytes_after_drain": 0,
    "read": 11_965_900,
    "stored": 11_965_900,
    "received": 11_965_900,
    "dup_historian": 0,
    "flow_crashes": 0,
}


def test_a_clean_soak_passes_every_criterion() -> None:
    verdict = soak_verdict(PASSING)
    assert len(verdict) == 5
    assert all(ok for _criterion, _measured, ok in verdict), verdict


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"rss_growth_pct": 5.0}, "RSS growth after warm-up < 5 %"),
        ({"rss_growth_pct": None}, "RSS growth after warm-up < 5 %"),
        ({"drained": False}, "spool empty at the end"),
        ({"spool_records_after_drain": 3}, "spool empty at the end"),
        ({"spool_bytes_after_drain": 4096}, "spool empty at the end"),
        ({"received": 11_965_899}, "read = stored = received"),
        ({"stored": 11_965_901}, "read = stored = received"),
        ({"dup_historian": 1}, "no historian duplicates"),
        ({"flow_crashes": 1}, "the flow never exits by itself"),
    ],
)
def test_each_criterion_fails_on_its_own(change: dict[str, Any], failing: str) -> None:
    verdict = soak_verdict({**PASSING, **change})
    assert [c for c, _m, ok in verdict if not ok] == [failing]
