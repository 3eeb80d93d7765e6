"""Compiled loops (numba) for the operators' quiet common case: one call per batch.

On a 100-tag device batch the numpy fast paths cost ~150 small numpy calls per batch across the
chain, ~1 µs each, whatever the batch size; a compiled loop does the same arithmetic in one call
(a few µs, mostly argument unboxing). Each kernel first checks that its case applies and leaves
every array untouched when it does not, so the caller falls back to its numpy path, which stays the
reference: the kernels are an optimisation with the same results, never a second behaviour.

Compiled on first use (about a second per kernel) and cached on disk: the package's
``__pycache__``, or numba's user-wide cache when that is not writable (``NUMBA_CACHE_DIR`` moves it);
with no writable folder at all, once per process. ``nogil``: a kernel does not hold the interpreter
lock while it runs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from core.jit import compiled
from core.quality import Quality

_BAD_QUALITY = 128


@njit(inline="always")
def _in_open_bucket(  # noqa: PLR0917 - the window's state, flat for the compiled callers
    t_lo: int,
    t_hi: int,
    window_ns: int,
    bucket_ns: int,
    watermark: int,
    closed: int,
    lateness_ns: int,
    future_limit: int,
) -> bool:
    """Whether points from ``t_lo`` to ``t_hi`` all fall into the open bucket ``bucket_ns``, none
    before the watermark or after ``future_limit``, and the bucket neither closes with them nor
    ends at or before ``closed``: the window's common case (:func:`window_append`, the chain)."""
    end = t_lo // window_ns * window_ns + window_ns
    threshold = max(watermark, t_hi) - lateness_ns
    return not (
        t_lo < watermark
        or t_hi > future_limit
        or end - window_ns != bucket_ns
        or t_hi >= end
        or end <= closed
        or threshold >= end
    )


_GOOD_LIMIT = 64
"""Codes below this are good (``core.quality``): the only points normalization scales in one call."""
_CLAMPED = int(Quality.CLAMPED)
_NO_TS = np.iinfo(np.int64).min

FLIP_HIGH, FLIP_LOW, FLIP_STUCK, FLIP_RATE = 0, 1, 2, 3
"""Kinds in a flip row, in the order alerts of one point are emitted (``anomaly._KINDS``)."""


@compiled
def anomaly_fast(  # noqa: PLR0917 - one flat call: numba unboxes each argument
    sids: np.ndarray,
    tags: np.ndarray,
    v: np.ndarray,
    t: np.ndarray,
    q: np.ndarray,
    pf: np.ndarray,
    pi: np.ndarray,
    high_on: np.ndarray,
    low_on: np.ndarray,
    stuck_on: np.ndarray,
    rate_on: np.ndarray,
    ml_on: np.ndarray,
    stuck_ref: np.ndarray,
    stuck_start: np.ndarray,
    stuck_count: np.ndarray,
    rate_value: np.ndarray,
    rate_ns: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Range, stuck and rate checks of a device batch, updating the state in place.

    ``pf`` rows (aligned to ``sids``): high, high_clear, low, low_clear, stuck_eps, rate_max (NaN:
    off); ``pi`` rows: has_stuck, stuck_n, stuck_ns; the rest is the state's arrays
    (``AnomalyState``). Same expressions and conditions as ``AnomalyDetector._process_fast``.

    Returns ``(-1, ...)`` with nothing touched when the case does not apply (a bad or non-finite
    point, an unknown or repeated tag, time not advancing); else the number of
    flag flips ``k`` and their ``k`` rows in batch order, then kind order: ``ints`` = point index,
    kind (``FLIP_*``), raised, stuck run length, stuck run ns (0 unless stuck), tag id, point ts;
    ``floats`` = value, limit, point value (all an alert needs: no per-alert numpy indexing).
    """
    m = sids.shape[0]
    n = tags.shape[0]
    ints = np.empty((4 * n, 7), np.int64)  # each flip row is written whole (zeroing 4n rows cost ~1 µs)
    floats = np.empty((4 * n, 3), np.float64)
    if m < n or n == 0:
        return -1, ints, floats
    s = np.empty(n, np.int64)
    seen = np.zeros(m, np.bool_)
    same = m == n
    if same:
        for i in range(n):
            if sids[i] != tags[i]:
                same = False
                break
    for i in range(n):
        if q[i] >= _BAD_QUALITY or not np.isfinite(v[i]):
            return -1, ints, floats
        if same:
            k = i
        else:
            k = np.searchsorted(sids, tags[i])
            if k >= m or sids[k] != tags[i]:
                return -1, ints, floats
        if seen[k]:
            return -1, ints, floats
        seen[k] = True
        last = rate_ns[k]
        if last == _NO_TS:
            if rate_on[k] and np.isnan(pf[5, k]):
                return -1, ints, floats  # a flag that a removed check must clear: rare, general path
        elif not t[i] > last:
            return -1, ints, floats
        s[i] = k
    f = 0
    for i in range(n):
        k = s[i]
        x = v[i]
        # range
        high = pf[0, k]
        old = high_on[k]
        new = (not (x < pf[1, k])) if old else x > high
        if np.isnan(high):
            new = False
        if new != old:
            ints[f, 0], ints[f, 1], ints[f, 2], ints[f, 3], ints[f, 4] = i, FLIP_HIGH, new, 0, 0
            floats[f, 0], floats[f, 1] = x, high
            high_on[k] = new
            f += 1
        low = pf[2, k]
        old = low_on[k]
        new = (not (x > pf[3, k])) if old else x < low
        if np.isnan(low):
            new = False
        if new != old:
            ints[f, 0], ints[f, 1], ints[f, 2], ints[f, 3], ints[f, 4] = i, FLIP_LOW, new, 0, 0
            floats[f, 0], floats[f, 1] = x, low
            low_on[k] = new
            f += 1
        # stuck
        count = stuck_count[k]
        eps = pf[4, k]
        changed = count == 0 or not (abs(x - stuck_ref[k]) <= eps)
        run_len = count + 1
        run_ns = t[i] - stuck_start[k]
        stuck_now = run_len >= pi[1, k] or run_ns >= pi[2, k]
        old = stuck_on[k]
        new = (not changed) and (old or stuck_now) and pi[0, k] != 0
        if new != old:
            ints[f, 0], ints[f, 1], ints[f, 2], ints[f, 3], ints[f, 4] = i, FLIP_STUCK, new, run_len, run_ns
            floats[f, 0], floats[f, 1] = x, eps
            stuck_on[k] = new
            f += 1
        if changed:
            stuck_ref[k] = x
            stuck_start[k] = t[i]
            stuck_count[k] = 1
        else:
            stuck_count[k] = run_len
        # rate: every point advances its clock (checked above); a tag's first sample only sets it
        if rate_ns[k] != _NO_TS:
            limit = pf[5, k]
            rate = abs(x - rate_value[k]) / ((t[i] - rate_ns[k]) / 1e9)
            old = rate_on[k]
            new = rate > limit and not np.isnan(limit)
            if new != old:
                ints[f, 0], ints[f, 1], ints[f, 2], ints[f, 3], ints[f, 4] = i, FLIP_RATE, new, 0, 0
                floats[f, 0], floats[f, 1] = rate, limit
                rate_on[k] = new
                f += 1
        rate_value[k] = x
        rate_ns[k] = t[i]
        ml_on[k] = False
    for r in range(f):
        i = ints[r, 0]
        ints[r, 5] = tags[i]
        ints[r, 6] = t[i]
        floats[r, 2] = v[i]
    return f, ints[:f], floats[:f]


@compiled
def window_append(  # noqa: PLR0917 - one flat call: numba unboxes each argument
    a_ids: np.ndarray,
    bucket_ns: int,
    window_ns: int,
    tags: np.ndarray,
    ts: np.ndarray,
    values: np.ndarray,
    quality: np.ndarray,
    watermark: int,
    closed: int,
    lateness_ns: int,
    future_limit: int,
    count: np.ndarray,
    total: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    first_ts: np.ndarray,
    first: np.ndarray,
    last_ts: np.ndarray,
    last: np.ndarray,
    area: np.ndarray,
) -> tuple[bool, int, np.ndarray, np.ndarray, np.ndarray]:
    """Append a batch to the one open bucket (``bucket_ns``) of a window length, when the batch is
    the common case; the accumulators (aligned to ``a_ids``) come back as new arrays: the inputs
    are never written (window state is immutable).

    The case: every point usable (quality < 128, not NaN), none before the ``watermark`` or after
    ``future_limit``, all inside the bucket, which neither closes (``watermark - lateness_ns``)
    nor ends at or before ``closed``; each tag once. A tag new to the bucket gets a row of its
    own (inserted in tag order), as merging the batch's one-sample accumulators would give it.
    Returns ``(False, ...)`` otherwise; else ``(True, latest ts, tag_ids, ints, floats)``:
    ``tag_ids`` is ``a_ids`` itself when no tag was new, ``ints`` rows count, first_ts, last_ts and
    ``floats`` rows sum, min, max, first, last, area. The conditions and arithmetic of
    ``WindowAggregator._process_fast``.
    """
    n = tags.shape[0]
    t_lo = ts[0]
    t_hi = ts[0]
    fail_i = np.empty((3, 0), np.int64)
    fail_f = np.empty((6, 0), np.float64)
    for i in range(n):
        if quality[i] >= _BAD_QUALITY or np.isnan(values[i]):
            return False, t_hi, a_ids, fail_i, fail_f
        t_lo = min(t_lo, ts[i])
        t_hi = max(t_hi, ts[i])
    if not _in_open_bucket(t_lo, t_hi, window_ns, bucket_ns, watermark, closed, lateness_ns, future_limit):
        return False, t_hi, a_ids, fail_i, fail_f
    m = a_ids.shape[0]
    # each point's row in the bucket, or -1 for a tag new to it
    k_of = np.empty(n, np.int64)
    seen = np.zeros(m, np.bool_)
    n_new = 0
    same = m == n
    if same:
        for i in range(n):
            if a_ids[i] != tags[i]:
                same = False
                break
    for i in range(n):
        if same:
            k = i
        else:
            k = np.searchsorted(a_ids, tags[i])
            if k >= m or a_ids[k] != tags[i]:
                k_of[i] = -1
                n_new += 1
                continue
        if seen[k]:
            return False, t_hi, a_ids, fail_i, fail_f
        seen[k] = True
        k_of[i] = k
    size = m + n_new
    ids = a_ids
    out_row = np.arange(m)  # bucket row -> output row
    new_row = np.empty(n, np.int64)  # point -> output row, for tags new to the bucket
    if n_new:
        fresh = np.empty(n_new, np.int64)
        j = 0
        for i in range(n):
            if k_of[i] < 0:
                fresh[j] = i
                j += 1
        order = np.argsort(tags[fresh])
        fresh = fresh[order]
        for j in range(1, n_new):
            if tags[fresh[j]] == tags[fresh[j - 1]]:
                return False, t_hi, a_ids, fail_i, fail_f  # a new tag twice in the batch
        ids = np.empty(size, np.int64)
        a = 0
        for r in range(size):
            j = r - a  # new tags placed so far
            if j >= n_new or (a < m and a_ids[a] < tags[fresh[j]]):
                ids[r] = a_ids[a]
                out_row[a] = r
                a += 1
            else:
                ids[r] = tags[fresh[j]]
                new_row[fresh[j]] = r
    ints = np.empty((3, size), np.int64)
    floats = np.empty((6, size), np.float64)
    for j in range(m):
        r = out_row[j]
        ints[0, r] = count[j]
        ints[1, r] = first_ts[j]
        ints[2, r] = last_ts[j]
        floats[0, r] = total[j]
        floats[1, r] = lo[j]
        floats[2, r] = hi[j]
        floats[3, r] = first[j]
        floats[4, r] = last[j]
        floats[5, r] = area[j]
    for i in range(n):
        x = values[i]
        k = k_of[i]
        if k < 0:
            r = new_row[i]
            ints[0, r] = 1
            ints[1, r] = ts[i]
            ints[2, r] = ts[i]
            floats[0, r] = x
            floats[1, r] = x
            floats[2, r] = x
            floats[3, r] = x
            floats[4, r] = x
            floats[5, r] = 0.0
            continue
        r = out_row[k]
        ints[0, r] += 1
        floats[0, r] += x
        floats[1, r] = min(lo[k], x) if not np.isnan(lo[k]) else lo[k]
        floats[2, r] = max(hi[k], x) if not np.isnan(hi[k]) else hi[k]
        ints[2, r] = ts[i]
        floats[4, r] = x
        floats[5, r] += last[k] * (ts[i] - last_ts[k])
    return True, t_hi, ids, ints, floats


@compiled
def deadband_fast(  # noqa: PLR0917 - one flat call: numba unboxes each argument
    pos: np.ndarray,
    tag_ids: np.ndarray,
    values: np.ndarray,
    quality: np.ndarray,
    ts_ns: np.ndarray,
    band: np.ndarray,
    heartbeat_ns: np.ndarray,
    s_value: np.ndarray,
    s_ts: np.ndarray,
    s_quality: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which points of a batch pass the deadband (``pos``: each point's row in the state), the state
    columns after them as new arrays (a state is never written), and the passing points' columns.

    ``(k, value, ts, quality, out_ts, out_tags, out_values, out_quality)``: ``k`` points pass; when
    ``k`` is 0 the state columns are empty (the state is unchanged); the ``out_*`` columns (the
    passing points in batch order, what ``PointBatch.select`` gives) are empty unless ``0 < k < n``
    (with ``k == n`` the batch passes whole). The comparisons of ``Deadband._process_fast``.
    """
    n = values.shape[0]
    publish = np.empty(n, np.bool_)
    k = 0
    for i in range(n):
        j = pos[i]
        v = values[i]
        last = s_value[j]
        p = (
            abs(v - last) > band[i]
            or ts_ns[i] - s_ts[j] >= heartbeat_ns[i]
            or quality[i] != s_quality[j]
            or np.isnan(v) != np.isnan(last)
        )
        publish[i] = p
        k += p
    m = k if k < n else 0
    out_ts = np.empty(m, np.int64)
    out_tags = np.empty(m, np.int64)
    out_values = np.empty(m, np.float64)
    out_quality = np.empty(m, np.uint8)
    if k == 0:
        return 0, s_value[:0], s_ts[:0], s_quality[:0], out_ts, out_tags, out_values, out_quality
    vo = s_value.copy()
    to = s_ts.copy()
    qo = s_quality.copy()
    o = 0
    for i in range(n):
        if publish[i]:
            j = pos[i]
            vo[j] = values[i]
            to[j] = ts_ns[i]
            qo[j] = quality[i]
            if m:
                out_ts[o] = ts_ns[i]
                out_tags[o] = tag_ids[i]
                out_values[o] = values[i]
                out_quality[o] = quality[i]
                o += 1
    return k, vo, to, qo, out_ts, out_tags, out_values, out_quality


@compiled
def normalize_fast(  # noqa: PLR0917 - one flat call: numba unboxes each argument
    values: np.ndarray,
    quality: np.ndarray,
    gain: np.ndarray,
    bias: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    good_limit: int,
    clamped: int,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Scale and clamp a batch of good points: ``(status, values, quality)``.

    Status -1: not applicable (a point not good, or a scaled value not finite), nothing returned;
    0: done, no point clamped (``quality`` is empty: keep the batch's); 1: done, ``quality`` is a new
    array with the clamped points marked ``clamped``. The arithmetic of ``Normalizer._apply_fast``.
    """
    n = values.shape[0]
    out = np.empty(n, np.float64)
    none = quality[:0]
    for i in range(n):
        if quality[i] >= good_limit:
            return -1, out, none
    any_clamped = False
    for i in range(n):
        x = values[i] * gain[i] + bias[i]
        if not np.isfinite(x):
            return -1, out, none
        y = x if x > low[i] else low[i]
        y = y if y < high[i] else high[i]
        out[i] = y
        any_clamped |= y != x
    if not any_clamped:
        return 0, out, none
    q = quality.copy()
    for i in range(n):
        if out[i] != values[i] * gain[i] + bias[i]:
            q[i] = clamped
    return 1, out, q


@njit(inline="always")
def _flip(  # noqa: PLR0917 - one flip row's fields
    oi: np.ndarray,
    of: np.ndarray,
    n: int,
    f: int,
    o: int,
    kind: int,
    raised: bool,
    run_len: int,
    run_ns: int,
    tag: int,
    t: int,
    val: float,
    limit: float,
    point: float,
) -> int:
    """Write flip row ``f`` (the layout of :func:`anomaly_fast`'s rows) and return ``f + 1``."""
    b = 2 * n + 7 * f
    oi[b], oi[b + 1], oi[b + 2], oi[b + 3] = o, kind, raised, run_len
    oi[b + 4], oi[b + 5], oi[b + 6] = run_ns, tag, t
    c = n + 3 * f
    of[c], of[c + 1], of[c + 2] = val, limit, point
    return f + 1


@compiled
def chain_step(  # noqa: PLR0917 - one flat call: numba unboxes each argument
    tags: np.ndarray,
    values: np.ndarray,
    ts: np.ndarray,
    quality: np.ndarray,
    pn: np.ndarray,
    pk: np.ndarray,
    db_value: np.ndarray,
    db_ts: np.ndarray,
    db_quality: np.ndarray,
    a_ids: np.ndarray,
    count: np.ndarray,
    total: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    first_ts: np.ndarray,
    first: np.ndarray,
    last_ts: np.ndarray,
    last: np.ndarray,
    area: np.ndarray,
    bucket_ns: int,
    window_ns: int,
    watermark: int,
    closed: int,
    lateness_ns: int,
    future_limit: int,
    pf: np.ndarray,
    pi: np.ndarray,
    high_on: np.ndarray,
    low_on: np.ndarray,
    stuck_on: np.ndarray,
    rate_on: np.ndarray,
    ml_on: np.ndarray,
    stuck_ref: np.ndarray,
    stuck_start: np.ndarray,
    stuck_count: np.ndarray,
    rate_value: np.ndarray,
    rate_ns: np.ndarray,
    sf: np.ndarray,
    si: np.ndarray,
    sq: np.ndarray,
    of: np.ndarray,
    oi: np.ndarray,
    oq: np.ndarray,
    inplace: bool,
) -> tuple[int, int, int, int, int, bool]:
    """normalize → deadband → one window length → range/stuck/rate checks of a device batch in one
    call, with the conditions and arithmetic of :func:`normalize_fast`, :func:`deadband_fast`,
    :func:`window_append` and :func:`anomaly_fast`, fused: every step's case is checked before
    anything is written, then each result is written once, straight into its buffer (no
    intermediate arrays: composing the four kernels cost ~20 µs per 100-point poll, most of it
    their allocations, copies and per-point searches).

    Row look-ups come precomputed per point (the caller caches them per device): ``pk`` rows are the
    deadband state row (-1: a tag without a deadband, always passed, no state), the heartbeat (ns),
    the anomaly state row (-1: a tag without checks, skipped) and the open bucket's row (-1: none);
    ``pn`` rows gain, bias, clamp low, clamp high, band. The batch's tag ids must be unique (the
    caller checks it once per tag array). ``pf``/``pi`` and the state arrays are as in
    :func:`anomaly_fast`. When tags are new to the bucket (``size > n_acc``), ``pk``'s bucket rows
    are rewritten to the grown bucket's (the one argument written besides the buffers and the
    anomaly state), so the caller's next poll needs no new search.

    Results go into buffers the caller allocates (numba boxes each returned array for ~0.5-0.8 µs, a
    slice costs ~0.1): with ``r = n_acc + n`` (``n_acc`` the bucket's rows, ``n`` the points), ``sf``
    holds ``n_db + 6r`` floats, ``si`` ``n_db + 4r`` ints, ``sq`` ``n_db`` codes, ``of`` ``13n``, ``oi``
    ``30n``, ``oq`` ``n``. The new state goes into ``sf``/``si``/``sq`` (deadband value, ts, quality:
    the first ``n_db`` entries; then the window's float rows sum, min, max, first, last, area and
    int rows count, first_ts, last_ts, tag_ids, each ``r`` long, the first ``size`` used; when no
    tag is new to the bucket (``size == n_acc``) the rows first, first_ts and tag_ids are not
    written: they equal the bucket's own), the passing points in ``of``/``oi``/``oq`` (values, ts,
    tags, quality; then from ``of[n]`` and ``oi[2n]`` the anomaly flips, ``flips`` rows of 3 and 7
    as in :func:`anomaly_fast`).

    With ``inplace`` (the caller holds the only reference to the deadband and bucket arrays) the
    new state is written into them instead (``sf``/``si``/``sq`` are not used): the deadband's
    value, ts and quality, and the bucket's count, sum, min, max, last_ts, last and area; a poll
    with tags new to the bucket returns -2 before anything is written (the bucket grows: the caller
    calls again without ``inplace``). Copying the state into new buffers on every poll, and the
    objects around them, was ~10 µs of a 100-point poll (issue 16).

    Returns ``(status, k, size, t_hi, flips, clamped)``. Status -1: some step's common case does
    not apply; no state was touched, the caller runs the cores one by one. -2: see ``inplace``. 0:
    no point passed the deadband (nothing else ran). 1: ``k`` points passed (when ``k == n`` the
    batch's own ts and tags, and its own quality unless ``clamped``), the window bucket has ``size``
    rows, the anomaly state was updated in place. 2: as 1, the deadband and bucket states updated
    in place too.
    """
    n = values.shape[0]
    n_db = db_value.shape[0]
    # normalize: values into of[:n], quality into oq[:n]
    clamped = False
    for i in range(n):
        if quality[i] >= _GOOD_LIMIT:
            return -1, 0, 0, 0, 0, False
        x = values[i] * pn[0, i] + pn[1, i]
        if not np.isfinite(x):
            return -1, 0, 0, 0, 0, False
        y = x if x > pn[2, i] else pn[2, i]
        y = y if y < pn[3, i] else pn[3, i]
        of[i] = y
        if y != x:
            clamped = True
            oq[i] = _CLAMPED
        else:
            oq[i] = quality[i]
    # deadband: the passing points, in batch order
    sel = np.empty(n, np.int64)
    k = 0
    for i in range(n):
        j = pk[0, i]
        if j < 0:
            sel[k] = i
            k += 1
            continue
        v = of[i]
        prev = db_value[j]
        if (
            abs(v - prev) > pn[4, i]
            or ts[i] - db_ts[j] >= pk[1, i]
            or oq[i] != db_quality[j]
            or np.isnan(v) != np.isnan(prev)
        ):
            sel[k] = i
            k += 1
    if k == 0:
        return 0, 0, 0, 0, 0, False
    # window: the case, each passing point's row (-1: a tag new to the bucket)
    t_lo = ts[sel[0]]
    t_hi = t_lo
    n_new = 0
    for o in range(k):
        i = sel[o]
        if oq[i] >= _BAD_QUALITY or not np.isfinite(of[i]):  # the window's case (NaN), the checks' (inf)
            return -1, 0, 0, 0, 0, False
        t_lo = min(t_lo, ts[i])
        t_hi = max(t_hi, ts[i])
        if pk[3, i] < 0:
            n_new += 1
    if not _in_open_bucket(t_lo, t_hi, window_ns, bucket_ns, watermark, closed, lateness_ns, future_limit):
        return -1, 0, 0, 0, 0, False
    # checks: the case (every passing tag has a state row whose rate clock the point advances)
    for o in range(k):
        i = sel[o]
        a = pk[2, i]
        if a < 0:
            continue
        prev_ns = rate_ns[a]
        if prev_ns == _NO_TS:
            if rate_on[a] and np.isnan(pf[5, a]):
                return -1, 0, 0, 0, 0, False  # a flag that a removed check must clear: rare, general path
        elif not ts[i] > prev_ns:
            return -1, 0, 0, 0, 0, False
    # -- every case holds: write --
    m = a_ids.shape[0]
    if inplace:
        if n_new:
            return -2, 0, 0, 0, 0, False
        for o in range(k):
            i = sel[o]
            j = pk[0, i]
            if j >= 0:
                db_value[j] = of[i]
                db_ts[j] = ts[i]
                db_quality[j] = oq[i]
            b = pk[3, i]
            x = of[i]
            count[b] += 1
            total[b] += x
            lo[b] = min(lo[b], x) if not np.isnan(lo[b]) else lo[b]
            hi[b] = max(hi[b], x) if not np.isnan(hi[b]) else hi[b]
            area[b] += last[b] * (ts[i] - last_ts[b])
            last_ts[b] = ts[i]
            last[b] = x
        return _checks_and_points(tags, ts, pk, pf, pi, high_on, low_on, stuck_on, rate_on, ml_on,
                                  stuck_ref, stuck_start, stuck_count, rate_value, rate_ns,
                                  of, oi, oq, sel, n, k, 2, m, t_hi, clamped)  # fmt: skip
    # deadband state
    sf[:n_db] = db_value
    si[:n_db] = db_ts
    sq[:n_db] = db_quality
    for o in range(k):
        i = sel[o]
        j = pk[0, i]
        if j < 0:
            continue
        sf[j] = of[i]
        si[j] = ts[i]
        sq[j] = oq[i]
    # window bucket
    size = m + n_new
    w = m + n
    f0 = n_db
    i0 = n_db
    out_row = np.arange(m)  # bucket row -> output row
    fresh = np.empty(n_new, np.int64)  # the new tags' points, by tag id
    fresh_row = np.empty(n_new, np.int64)  # ... and their output rows
    if n_new:
        j = 0
        for o in range(k):
            if pk[3, sel[o]] < 0:
                fresh[j] = sel[o]
                j += 1
        fresh = fresh[np.argsort(tags[fresh])]
        a = 0
        for r in range(size):
            j = r - a  # new tags placed so far
            if j >= n_new or (a < m and a_ids[a] < tags[fresh[j]]):
                si[i0 + 3 * w + r] = a_ids[a]
                out_row[a] = r
                a += 1
            else:
                i = fresh[j]
                fresh_row[j] = r
                x = of[i]
                si[i0 + 3 * w + r] = tags[i]
                si[i0 + r] = 1
                si[i0 + w + r] = ts[i]
                si[i0 + 2 * w + r] = ts[i]
                sf[f0 + r] = x
                sf[f0 + w + r] = x
                sf[f0 + 2 * w + r] = x
                sf[f0 + 3 * w + r] = x
                sf[f0 + 4 * w + r] = x
                sf[f0 + 5 * w + r] = 0.0
    for j in range(m):
        r = out_row[j]
        si[i0 + r] = count[j]
        si[i0 + 2 * w + r] = last_ts[j]
        sf[f0 + r] = total[j]
        sf[f0 + w + r] = lo[j]
        sf[f0 + 2 * w + r] = hi[j]
        sf[f0 + 4 * w + r] = last[j]
        sf[f0 + 5 * w + r] = area[j]
        if n_new:
            si[i0 + w + r] = first_ts[j]
            sf[f0 + 3 * w + r] = first[j]
    for o in range(k):
        i = sel[o]
        b = pk[3, i]
        if b < 0:
            continue
        r = out_row[b]
        x = of[i]
        si[i0 + r] += 1
        sf[f0 + r] += x
        sf[f0 + w + r] = min(lo[b], x) if not np.isnan(lo[b]) else lo[b]
        sf[f0 + 2 * w + r] = max(hi[b], x) if not np.isnan(hi[b]) else hi[b]
        si[i0 + 2 * w + r] = ts[i]
        sf[f0 + 4 * w + r] = x
        sf[f0 + 5 * w + r] += last[b] * (ts[i] - last_ts[b])
    if n_new:  # the points' rows in the grown bucket, for the caller's next poll (no new search)
        for i in range(n):
            b = pk[3, i]
            if b >= 0:
                pk[3, i] = out_row[b]
        for j in range(n_new):
            pk[3, fresh[j]] = fresh_row[j]
    return _checks_and_points(tags, ts, pk, pf, pi, high_on, low_on, stuck_on, rate_on, ml_on,
                              stuck_ref, stuck_start, stuck_count, rate_value, rate_ns,
                              of, oi, oq, sel, n, k, 1, size, t_hi, clamped)  # fmt: skip


@njit(inline="always")
def _checks_and_points(  # noqa: PLR0917 - :func:`chain_step`'s last part, inlined into it
    tags: np.ndarray,
    ts: np.ndarray,
    pk: np.ndarray,
    pf: np.ndarray,
    pi: np.ndarray,
    high_on: np.ndarray,
    low_on: np.ndarray,
    stuck_on: np.ndarray,
    rate_on: np.ndarray,
    ml_on: np.ndarray,
    stuck_ref: np.ndarray,
    stuck_start: np.ndarray,
    stuck_count: np.ndarray,
    rate_value: np.ndarray,
    rate_ns: np.ndarray,
    of: np.ndarray,
    oi: np.ndarray,
    oq: np.ndarray,
    sel: np.ndarray,
    n: int,
    k: int,
    status: int,
    size: int,
    t_hi: int,
    clamped: bool,
) -> tuple[int, int, int, int, int, bool]:
    """:func:`chain_step`'s checks (the anomaly state in place) and its passing points, compacted."""
    # checks, in place; each flip as a row of oi (7, from 2n) and of (3, from n)
    f = 0
    for o in range(k):
        i = sel[o]
        a = pk[2, i]
        if a < 0:
            continue
        x = of[i]
        t = ts[i]
        high = pf[0, a]
        old = high_on[a]
        new = (not (x < pf[1, a])) if old else x > high
        if np.isnan(high):
            new = False
        if new != old:
            f = _flip(oi, of, n, f, o, FLIP_HIGH, new, 0, 0, tags[i], t, x, high, x)
            high_on[a] = new
        low = pf[2, a]
        old = low_on[a]
        new = (not (x > pf[3, a])) if old else x < low
        if np.isnan(low):
            new = False
        if new != old:
            f = _flip(oi, of, n, f, o, FLIP_LOW, new, 0, 0, tags[i], t, x, low, x)
            low_on[a] = new
        run = stuck_count[a]
        eps = pf[4, a]
        changed = run == 0 or not (abs(x - stuck_ref[a]) <= eps)
        run_len = run + 1
        run_ns = t - stuck_start[a]
        stuck_now = run_len >= pi[1, a] or run_ns >= pi[2, a]
        old = stuck_on[a]
        new = (not changed) and (old or stuck_now) and pi[0, a] != 0
        if new != old:
            f = _flip(oi, of, n, f, o, FLIP_STUCK, new, run_len, run_ns, tags[i], t, x, eps, x)
            stuck_on[a] = new
        if changed:
            stuck_ref[a] = x
            stuck_start[a] = t
            stuck_count[a] = 1
        else:
            stuck_count[a] = run_len
        if rate_ns[a] != _NO_TS:
            limit = pf[5, a]
            rate = abs(x - rate_value[a]) / ((t - rate_ns[a]) / 1e9)
            old = rate_on[a]
            new = rate > limit and not np.isnan(limit)
            if new != old:
                f = _flip(oi, of, n, f, o, FLIP_RATE, new, 0, 0, tags[i], t, rate, limit, x)
                rate_on[a] = new
        rate_value[a] = x
        rate_ns[a] = t
        ml_on[a] = False
    # the passing points, compacted in place (o <= i: an entry is read before it is overwritten)
    if k != n:
        for o in range(k):
            i = sel[o]
            of[o] = of[i]
            oq[o] = oq[i]
            oi[o] = ts[i]
            oi[n + o] = tags[i]
    return status, k, size, t_hi, f, clamped
