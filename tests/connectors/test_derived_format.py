"""The aggregate messages' template gives the same text as ``json.dumps`` of the payload dict."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.derived import _iso, agg_messages
from core.records import AggBatch
from core.tags import TagInfo

TAGS = {
    1: TagInfo(1, "press-01", "temp", "degC", "acme/p1/press/l1/press-01/temp"),
    2: TagInfo(2, "press-01", "état", 'r"é', "acme/p1/press/l1/press-01/état"),
}
FLOATS = st.floats(allow_nan=True, allow_infinity=True)


def _reference(batch: AggBatch) -> list[tuple[str, str]]:
    """The dict + json.dumps formatting the template replaced."""

    def num(x: float) -> float | None:
        return None if not math.isfinite(x) else float(x)

    out = []
    for i, tag_id in enumerate(batch.tag_ids.tolist()):
        tag = TAGS.get(tag_id)
        if tag is None:
            continue
        payload = {
            "bucket": _iso(int(batch.bucket_ns[i])),
            "window": batch.window,
            "min": num(batch.min[i]),
            "max": num(batch.max[i]),
            "avg": num(batch.avg[i]),
            "count": int(batch.count[i]),
            "sum": num(batch.sum[i]),
            "first": num(batch.first[i]),
            "last": num(batch.last[i]),
            "twa": num(batch.twa[i]),
            "unit": tag.unit,
        }
        out.append((f"{tag.topic}/_agg/{batch.window}", json.dumps(payload)))
    return out


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_template_equals_json_dumps(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 12))

    def col(strategy: st.SearchStrategy[float]) -> np.ndarray:
        return np.array(data.draw(st.lists(strategy, min_size=n, max_size=n)), dtype=np.float64)

    batch = AggBatch(
        device_id="press-01",
        window=data.draw(st.sampled_from(["10s", "1m", "1h"])),
        window_ns=60 * 10**9,
        bucket_ns=np.array(
            data.draw(st.lists(st.integers(0, 2 * 10**18), min_size=n, max_size=n)), dtype=np.int64
        ),
        tag_ids=np.array(
            data.draw(st.lists(st.sampled_from([1, 2, 3]), min_size=n, max_size=n)), dtype=np.int64
        ),
        min=col(FLOATS),
        max=col(FLOATS),
        count=np.array(data.draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n)), dtype=np.int64),
        sum=col(FLOATS),
        first=col(FLOATS),
        last=col(FLOATS),
        twa=col(FLOATS),
    )
    assert agg_messages(batch, TAGS) == _reference(batch)
