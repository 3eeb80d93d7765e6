"""Issue 12.1: payload timestamps outside the accepted window never crash the MQTT source.

Before: ``"0001-01-01T00:00:00Z"`` raised OverflowError in ``next_batch`` (the whole flow died) and
a 1950 stamp was stored as ``good``. Now: receive time, ``uncertain``, counted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from connectors.mqtt.source import MqttSource, decode_timestamp
from connectors.mqtt.source_config import MqttSourceConfig, MqttSubscription, MqttTagMapping
from core.quality import Quality
from core.timestamps import TimestampWindow
from tests.connectors.mqtt.test_mqtt_source import Publisher, collect

pytestmark = pytest.mark.integration

DEV = f"ts-{uuid.uuid4().hex[:8]}"


def replaced(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "nexus_timestamps_replaced_total", {"source": f"mqtt:{DEV}", "reason": reason}
    )
    return value or 0.0


def test_out_of_range_payload_timestamps_become_receive_time(
    mqtt_url: str, wait_for: Callable[..., Any]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    sub = MqttSubscription(
        topic_filter=f"{prefix}/m",
        device_id=DEV,
        tags=[MqttTagMapping(name="v", value_path="v", timestamp_path="ts")],
    )
    source = MqttSource(MqttSourceConfig(url=mqtt_url, subscriptions=[sub], max_past_s=86_400))
    (key,) = source.list_parts()
    part = source.build_part("in", key, None)
    wait_for(lambda: part.stats.subscribed, what="the subscription to be granted")
    pub = Publisher(mqtt_url)
    old_before, future_before = replaced("too_old"), replaced("future")
    recent = time.time() - 60  # a minute ago: kept
    payloads = [
        '{"v": 1, "ts": "0001-01-01T00:00:00Z"}',
        '{"v": 2, "ts": "1600-01-01T00:00:00Z"}',
        '{"v": 3, "ts": -1e30}',
        '{"v": 4, "ts": "1950-03-01T00:00:00Z"}',
        '{"v": 5, "ts": "9999-12-31T23:59:59Z"}',
        '{"v": 6, "ts": 1e30}',
        f'{{"v": 7, "ts": {recent}}}',
    ]
    try:
        before = time.time_ns()
        for p in payloads:
            pub.send(f"{prefix}/m", p)
        b = collect(part, len(payloads))
        assert b.values.tolist() == [1, 2, 3, 4, 5, 6, 7]
        assert (b.ts_ns[:6] >= before).all(), "receive time replaces every out-of-window stamp"
        assert b.ts_ns[6] == round(recent * 1e6) * 1000
        assert b.quality.tolist() == [Quality.UNCERTAIN] * 6 + [Quality.GOOD]
        assert part.stats.timestamp_errors == 6
        assert replaced("too_old") - old_before == 4
        assert replaced("future") - future_before == 2
    finally:
        pub.close()
        part.close()


json_scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat()),
    st.booleans(),
    st.none(),
)


@given(json_scalars)
def test_any_payload_timestamp_decodes_to_a_stamp_inside_the_window_or_a_named_problem(raw: object) -> None:
    """The decode + rule pair behind ``_MqttPartition._stamp``: never an exception, never a stamp
    outside the window (before: OverflowError for year 1 once it reached the int64 array)."""
    window = TimestampWindow(max_past_s=86_400, max_future_s=60)
    now = time.time_ns()
    try:
        stamp: int | None = decode_timestamp(raw)
    except (ValueError, OverflowError):
        stamp = None
    used, reason = window.check(stamp, now)
    assert now - 86_400 * 10**9 <= used <= now + 60 * 10**9
    assert reason in (None, "unreadable", "too_old", "future")
    assert np.array([used], dtype=np.int64)[0] == used
