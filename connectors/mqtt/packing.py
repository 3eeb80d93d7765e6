"""The UNS QoS 0 packets of a point batch in one compiled pass (:class:`PackTable`).

A poll's messages are one JSON object per point (``{"value":..,"timestamp":"..","quality":"..",
"unit":..}``) in an MQTT PUBLISH packet on the tag's topic. Built per point in Python (a dict lookup,
an f-string and a length per point: 32 us per 100-point batch on a warm cache) this was the largest
part of a UNS flow's worker thread. Here each tag's constant bytes (its PUBLISH topic field and
``{"value":``; ``"quality":"good",`` and its ``"unit":..}`` tail) live in one byte buffer found
through an open-addressing table of tag ids (:mod:`core.idtable`), and one compiled call writes a
batch's packets from its columns (~10 us per 100 points): the values as orjson formats the whole
array (the JSON numbers of Python's ``repr``, see :func:`json_numbers`), the timestamps formatted in
the kernel (ISO 8601, microseconds, UTC, as ``numpy.datetime_as_string``).

The packets are byte for byte those of the per-message path (``format_batch`` and
``pack_publish_qos0`` in :mod:`connectors.mqtt.publisher`; tested), which stays the reference and
takes what the kernel leaves out: text points and timestamps before 1970 (int64 nanoseconds end in
2262).

>>> from core.batch import PointBatch
>>> from core.tags import TagInfo
>>> table = PackTable().with_tags({7: TagInfo(7, "p", "temp", "degC", "a/p/temp")})
>>> b = PointBatch.from_values("p", [7, 8], [21.5, 1.0], ts_ns=1_700_000_000 * 10**9)
>>> blob, n, unknown = table.pack(b, retain=False)
>>> blob[2:]
b'\\x00\\x08a/p/temp{"value":21.5,"timestamp":"2023-11-14T22:13:20.000000Z","quality":"good","unit":"degC"}'
>>> n, unknown
(1, [8])
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import orjson

from core.batch import PointBatch
from core.idtable import claim, slot_of
from core.jit import compiled, inlined
from core.quality import QUALITY_NAMES
from core.tags import TagInfo

__all__ = ["PackTable", "json_numbers", "publishable"]

_QUALITY = [f'"quality":{json.dumps(name)},'.encode() for name in QUALITY_NAMES]
_QUALITY_BUF = np.array(list(b"".join(_QUALITY)), np.uint8)
_QUALITY_OFF = np.cumsum([0] + [len(q) for q in _QUALITY[:-1]]).astype(np.int64)
_QUALITY_LEN = np.array([len(q) for q in _QUALITY], np.int64)
_GOOD = len(_QUALITY[0])
"""Each tag's payload tail is stored after the quality 0 ("good"): one copy for most points."""
_VALUE = b'{"value":'
_STAMP_BLOCK = np.array(list(b',"timestamp":"2023-11-14T22:13:20.000000Z",'), np.uint8)
"""A point's bytes between its value and its quality; the timestamp from byte 14 on."""


def json_numbers(values: npt.NDArray[np.float64]) -> list[str]:
    """Each value as JSON text, exactly Python's ``repr`` of the float (``null`` for NaN and infinities).

    orjson formats the whole array in one call, ~6x faster than a ``repr`` per value (the largest
    part of formatting a poll's messages, see BENCHMARKS.md). Its shortest round-trip digits and its
    notation equal ``repr`` except below 1e-4, where it writes ``0.00001`` and ``1.5e-7`` for
    ``1e-05`` and ``1.5e-07``: those few go through ``repr``.

    >>> json_numbers(np.array([21.5, 3354.2000000000003, 1e16, 1.5e-07, float("nan"), -0.0]))
    ['21.5', '3354.2000000000003', '1e+16', '1.5e-07', 'null', '-0.0']
    """
    text = orjson.dumps(
        np.ascontiguousarray(values, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY
    ).decode()
    parts = text[1:-1].split(",") if len(values) else []
    if "e-" in text or "0.0000" in text:  # a value below 1e-4 (larger ones never print either)
        parts = [repr(float(p)) if "e-" in p or "0.0000" in p else p for p in parts]
    return parts


def publishable(topic: str) -> bool:
    """Whether a topic can be published to (no wildcards, not empty), as paho checks it."""
    return bool(topic) and "+" not in topic and "#" not in topic


def _insert(  # noqa: PLR0917 - the table's columns, flat for the compiled kernel
    used: npt.NDArray[np.bool_],
    keys: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    bits: int,
    tag_ids: npt.NDArray[np.int64],
    new_rows: npt.NDArray[np.int64],
) -> int:
    """Map each tag id to its row (a known id gets the new row; the table stays at most half full,
    the caller sees to it); returns how many ids were new."""
    added = 0
    for i in range(len(tag_ids)):
        slot, new = claim(used, keys, tag_ids[i], bits)
        added += new
        rows[slot] = new_rows[i]
    return added


def _two(out: npt.NDArray[np.uint8], at: int, n: int) -> None:
    out[at] = 48 + n // 10
    out[at + 1] = 48 + n % 10


def _stamp(out: npt.NDArray[np.uint8], at: int, ts_ns: int) -> None:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` of a time from 1970 on (civil date: H. Hinnant's algorithm)."""
    us = ts_ns // 1000
    secs = us // 1_000_000
    frac = us - secs * 1_000_000
    days = secs // 86_400
    sod = secs - days * 86_400
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    _two(out, at, year // 100)
    _two(out, at + 2, year % 100)
    _two(out, at + 5, month)
    _two(out, at + 8, day)
    _two(out, at + 11, sod // 3600)
    _two(out, at + 14, (sod // 60) % 60)
    _two(out, at + 17, sod % 60)
    for k in range(6):
        out[at + 25 - k] = 48 + frac % 10
        frac //= 10


def _starts_tiny(text: npt.NDArray[np.uint8], at: int) -> bool:
    """Whether ``text[at:]`` starts with ``0.0000`` (a number below 1e-4 written out)."""
    k = 0
    while k < 6 and text[at + k] == (46 if k == 1 else 48):
        k += 1
    return k == 6


def _copy(out: npt.NDArray[np.uint8], at: int, src: npt.NDArray[np.uint8], start: int, n: int) -> int:
    """``src[start:start + n]`` to ``out[at:]``; returns the end (a loop over views: numba's slice
    assignment is several times slower for these short runs)."""
    to = out[at : at + n]
    src = src[start : start + n]
    for k in range(n):
        to[k] = src[k]
    return at + n


def _pack(  # noqa: PLR0917 - one pass over a batch's flat columns
    header: int,
    used: npt.NDArray[np.bool_],
    keys: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    bits: int,
    buf: npt.NDArray[np.uint8],
    start: npt.NDArray[np.int64],
    prefix_len: npt.NDArray[np.int64],
    suffix_len: npt.NDArray[np.int64],
    tag_ids: npt.NDArray[np.int64],
    ts_ns: npt.NDArray[np.int64],
    quality: npt.NDArray[np.uint8],
    values: npt.NDArray[np.uint8],
    exact: bool,
) -> tuple[npt.NDArray[np.uint8], int, npt.NDArray[np.int64], int]:
    """The packets of the points of known tags: ``(bytes, messages, unknown tag ids, their count)``;
    messages is -1 (nothing packed) when a timestamp lies before 1970, -2 when a value printed by
    orjson is not Python's ``repr`` (below 1e-4: ``0.00001``, ``1.5e-7``; see :func:`json_numbers`)
    unless ``exact`` (the values were written by ``repr``).

    A tag's row in ``buf``: its PUBLISH topic field and ``{"value":`` (``prefix_len`` bytes), then
    ``"quality":"good",`` and its ``"unit":..}`` tail (``suffix_len``). ``values`` is the
    comma-separated JSON text of every point's value (orjson's array without brackets). Pass 1 finds
    each point's row and value and sizes the output; pass 2 writes it, in four copies a point.
    """
    n = len(tag_ids)
    row_of = np.empty(n, np.int64)
    v_at = np.empty(n + 1, np.int64)
    unknown = np.empty(n, np.int64)
    n_unknown = 0
    total = 0
    pos = 0
    block = _STAMP_BLOCK.copy()
    fixed = len(block) - _GOOD
    for i in range(n):
        if ts_ns[i] < 0:
            return np.empty(0, np.uint8), -1, unknown, 0
        v_at[i] = pos
        while pos < len(values) and values[pos] != 44:  # ','
            if values[pos] == 45 and pos > v_at[i] and values[pos - 1] == 101 and not exact:  # 'e-'
                return np.empty(0, np.uint8), -2, unknown, 0
            pos += 1
        vlen = pos - v_at[i]
        lead = v_at[i] + (1 if vlen and values[v_at[i]] == 45 else 0)  # after a '-'
        if pos - lead >= 6 and not exact and _starts_tiny(values, lead):
            return np.empty(0, np.uint8), -2, unknown, 0
        pos += 1
        key = tag_ids[i]
        slot = slot_of(used, keys, key, bits)
        if not used[slot]:
            row_of[i] = -1
            unknown[n_unknown] = key
            n_unknown += 1
            continue
        row = rows[slot]
        row_of[i] = row
        length = prefix_len[row] + vlen + fixed + _QUALITY_LEN[quality[i]] + suffix_len[row]
        total += 2 + length
        while length >= 128:
            total += 1
            length >>= 7
    v_at[n] = pos
    out = np.empty(total, np.uint8)
    at = 0
    last_ts = np.int64(-1)
    for i in range(n):
        row = row_of[i]
        if row < 0:
            continue
        vlen = v_at[i + 1] - 1 - v_at[i]
        q = quality[i]
        length = prefix_len[row] + vlen + fixed + _QUALITY_LEN[q] + suffix_len[row]
        out[at] = header
        at += 1
        while length >= 128:
            out[at] = (length & 127) | 128
            at += 1
            length >>= 7
        out[at] = length
        at += 1
        at = _copy(out, at, buf, start[row], prefix_len[row])
        at = _copy(out, at, values, v_at[i], vlen)
        if ts_ns[i] != last_ts:  # a poll's points share one timestamp: formatted once
            _stamp(block, 14, ts_ns[i])
            last_ts = ts_ns[i]
        at = _copy(out, at, block, 0, len(block))
        if q == 0:
            at = _copy(out, at, buf, start[row] + prefix_len[row], suffix_len[row])
        else:
            at = _copy(out, at, _QUALITY_BUF, _QUALITY_OFF[q], _QUALITY_LEN[q])
            at = _copy(out, at, buf, start[row] + prefix_len[row] + _GOOD, suffix_len[row] - _GOOD)
    return out, n - n_unknown, unknown, n_unknown


_insert_kernel = compiled(_insert)
_two = inlined(_two)
_starts_tiny = inlined(_starts_tiny)
_stamp = compiled(_stamp)
_copy = inlined(_copy)
_pack_kernel = compiled(_pack)


class PackTable:
    """Each publishable tag's PUBLISH topic field and payload tail, found by tag id in compiled code.

    Immutable once built: :meth:`with_tags` returns a new table (copied arrays), so a publish running
    on another thread sees the old table or the new one, never half of a change. A relearned tag's
    bytes are appended and the old ones left unused until a later :meth:`with_tags` compacts the buffer
    (once unused rows outnumber the tags).
    """

    _MIN_SLOTS = 1024

    def __init__(self) -> None:
        self._used = np.zeros(self._MIN_SLOTS, np.bool_)
        self._keys = np.zeros(self._MIN_SLOTS, np.int64)
        self._rows = np.zeros(self._MIN_SLOTS, np.int64)
        self._buf = np.zeros(0, np.uint8)
        self._start = np.zeros(0, np.int64)
        self._prefix_len = np.zeros(0, np.int64)
        self._suffix_len = np.zeros(0, np.int64)
        self._count = 0
        """Tags in the table (rows may be more: a relearned tag's old row stays unused)."""

    def __len__(self) -> int:
        return self._count

    def with_tags(self, tags: Mapping[int, TagInfo]) -> PackTable:
        """This table plus (or with new topics and units for) the publishable ones of ``tags``."""
        ids: list[int] = []
        parts: list[bytes] = []
        prefix_len: list[int] = []
        suffix_len: list[int] = []
        for tid, tag in tags.items():
            if not publishable(tag.topic):  # its points take the general path, which refuses the topic
                continue
            raw = tag.topic.encode()
            prefix = len(raw).to_bytes(2, "big") + raw + _VALUE
            suffix = _QUALITY[0] + f'"unit":{json.dumps(tag.unit)}}}'.encode()
            ids.append(tid)
            parts += (prefix, suffix)
            prefix_len.append(len(prefix))
            suffix_len.append(len(suffix))
        new = PackTable.__new__(PackTable)
        old_rows = len(self._start)
        added = b"".join(parts)
        new._buf = np.concatenate((self._buf, np.frombuffer(added, np.uint8)))
        lengths = np.array(prefix_len, np.int64) + np.array(suffix_len, np.int64)
        starts = len(self._buf) + np.cumsum(lengths) - lengths
        new._start = np.concatenate((self._start, starts))
        new._prefix_len = np.concatenate((self._prefix_len, np.array(prefix_len, np.int64)))
        new._suffix_len = np.concatenate((self._suffix_len, np.array(suffix_len, np.int64)))
        tag_ids = np.array(ids, np.int64)
        slots = len(self._keys)
        while 2 * (self._count + len(ids)) > slots:
            slots *= 2
        new._count = self._count
        if slots == len(self._keys):
            new._used, new._keys, new._rows = self._used.copy(), self._keys.copy(), self._rows.copy()
        else:  # grow: every tag again into a table twice the size needed
            new._used = np.zeros(slots, np.bool_)
            new._keys = np.zeros(slots, np.int64)
            new._rows = np.zeros(slots, np.int64)
            new._count = 0
            kept = np.flatnonzero(self._used)
            new._insert(self._keys[kept], self._rows[kept])
        new._insert(tag_ids, np.arange(old_rows, old_rows + len(ids), dtype=np.int64))
        if len(new._start) > 2 * max(new._count, 1024):  # relearned tags' old bytes: drop them
            new._compact()
        return new

    def _insert(self, tag_ids: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> None:
        bits = len(self._keys).bit_length() - 1
        self._count += int(_insert_kernel(self._used, self._keys, self._rows, bits, tag_ids, rows))

    def _compact(self) -> None:
        """Keep only the bytes of the rows in use (renumbered); only on a table no one reads yet."""
        slots = np.flatnonzero(self._used)
        rows = self._rows[slots]
        starts, lengths = self._start[rows], self._prefix_len[rows] + self._suffix_len[rows]
        buf = self._buf
        data = b"".join(
            buf[s : s + n].tobytes() for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)
        )
        self._buf = np.frombuffer(data, np.uint8).copy()
        self._start = np.cumsum(lengths) - lengths
        self._prefix_len, self._suffix_len = self._prefix_len[rows], self._suffix_len[rows]
        self._rows[slots] = np.arange(len(slots), dtype=np.int64)

    def pack(self, batch: PointBatch, retain: bool) -> tuple[bytes, int, list[int]] | None:
        """The batch's QoS 0 PUBLISH packets: ``(blob, messages, unknown tag ids)``; None when the
        batch holds what the kernel leaves to the per-point packer (text points, timestamps before
        1970)."""
        n = len(batch)
        if n == 0:
            return b"", 0, []
        if batch.text:
            return None
        values = orjson.dumps(
            np.ascontiguousarray(batch.values, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY
        )
        packed = self._pack(batch, values, retain, exact=False)
        if packed[1] == -2:  # a value below 1e-4: each value as repr writes it
            exact = f"[{','.join(json_numbers(batch.values))}]".encode()
            packed = self._pack(batch, exact, retain, exact=True)
        return None if packed[1] < 0 else packed

    def _pack(
        self, batch: PointBatch, values: bytes, retain: bool, *, exact: bool
    ) -> tuple[bytes, int, list[int]]:
        out, count, unknown, n_unknown = _pack_kernel(
            0x30 | (1 if retain else 0),
            self._used, self._keys, self._rows, len(self._keys).bit_length() - 1,
            self._buf, self._start, self._prefix_len, self._suffix_len,
            np.ascontiguousarray(batch.tag_ids, dtype=np.int64), np.ascontiguousarray(batch.ts_ns, dtype=np.int64),
            np.ascontiguousarray(batch.quality, dtype=np.uint8),
            np.frombuffer(values, np.uint8)[1:-1], exact,
        )  # fmt: skip
        return out.tobytes(), int(count), unknown[:n_unknown].tolist()
