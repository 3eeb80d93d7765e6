"""The in-process worker-step measurement runs both cost flows and checks what it measured."""

from __future__ import annotations

import pytest

from bench import worker_step


@pytest.mark.parametrize("flow_kind", ["uns", "full"])
def test_a_flow_is_measured_per_poll(flow_kind: str) -> None:
    us = worker_step.measure(flow_kind, devices=3, polls=600, per_activation=4)
    assert 0 < us < 1e6  # µs of this thread's CPU per poll, the batches' building taken out


def test_a_checkout_is_measured_in_its_own_process() -> None:
    assert worker_step._one(".", "uns", 2, 300, 1) > 0


def test_a_failing_measurement_names_the_checkout(tmp_path: object) -> None:
    with pytest.raises(RuntimeError, match=f"the measurement in {tmp_path} failed"):
        worker_step._one(str(tmp_path), "uns", 2, 300, 1)  # no project there: nothing to import
