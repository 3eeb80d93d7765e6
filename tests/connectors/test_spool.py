"""The disk spool: order, restarts, torn tails, bounds, full volumes, group commit."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.spool import Spool, SpoolDrop, decode_batch, encode_batch
from core.batch import PointBatch


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def payloads(spool: Spool, after: int | None = None) -> list[bytes]:
    return [bytes(p) for _, p in spool.read(after, max_records=1_000_000)]


def test_append_read_ack_in_order(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        assert s.append_many([b"a", b"b", b"c"]) == 3
        assert payloads(s) == [b"a", b"b", b"c"]
        assert payloads(s, after=1) == [b"b", b"c"]
        s.ack(2)
        assert payloads(s) == [b"c"] and s.pending_records == 1
        s.ack(99)  # beyond the end: clamped
        assert payloads(s) == [] and s.pending_records == 0


def test_restart_keeps_records_sequence_and_cursor(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=4096) as s:
        for i in range(500):
            s.append(f"record {i}".encode())
        s.ack(200)
    with Spool(tmp_path) as s:
        got = s.read(max_records=1_000_000)
        assert [seq for seq, _ in got] == list(range(201, 501))
        assert bytes(got[0][1]) == b"record 200"
        assert s.append(b"after") == 501  # sequence numbers are never reused


def test_acked_segments_are_deleted_the_open_one_when_full(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=4096) as s:
        for _ in range(300):
            s.append(b"x" * 100)
        segments = len(list(tmp_path.glob("*.seg")))
        assert segments > 3
        s.ack(s.last_seq)
        # the closed segments are gone; the open one is all delivered: kept, not counted as held
        (open_seg,) = tmp_path.glob("*.seg")
        assert open_seg.stat().st_size > 0 and s.size_bytes == 0 and s.stats()["spool_bytes"] == 0
        for _ in range(100):  # ~40 more records fill it; the one after starts the next segment
            assert s.append(b"x" * 100) is not None
            if not open_seg.exists():
                break
            s.ack(s.last_seq)
            assert s.size_bytes == 0
        assert not open_seg.exists() and len(list(tmp_path.glob("*.seg"))) == 1
        assert s.pending_records == 1 and s.size_bytes == 128 and payloads(s) == [b"x" * 100]


def test_the_open_segment_takes_appends_across_acknowledgements(tmp_path: Path) -> None:
    """A sink that keeps up acknowledges everything every commit: no new file and no deletion each
    time. Held bytes count only what is not delivered; reads start after the delivered part; a
    restart drops the delivered segment and goes on after the cursor."""
    with Spool(tmp_path, sync_interval_s=3600) as s:
        for seq in range(1, 13):
            assert s.append(b"r" * 10) == seq
            assert s.size_bytes == 38  # one record: 28 bytes of header and its payload
            s.ack(seq)  # all delivered: no sync is needed any more
            assert [p.name for p in tmp_path.glob("*.seg")] == [f"{1:020d}.seg"] and s.size_bytes == 0
            assert s.durable_seq == seq
        s.append_many([b"a", b"b"])
        s.ack(13)  # part of what came after: the delivered part stays a lower bound
        assert s.size_bytes == 2 * 29 and payloads(s) == [b"b"] and payloads(s, after=0) == [b"b"]
        assert s.durable_seq == 12 and s.sync() == 14  # b is not delivered: synced as ever
    with Spool(tmp_path) as s:
        assert s.acked == 13 and payloads(s) == [b"b"]
        s.ack(14)
    with Spool(tmp_path) as s:
        assert list(tmp_path.glob("*.seg")) == []  # all delivered: gone at the open
        assert s.acked == 14 and s.read() == [] and s.append(b"next") == 15


def test_a_delivered_segment_is_not_synced_when_it_rolls_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    with Spool(tmp_path, segment_bytes=4096, sync_interval_s=3600) as s:
        s.append(b"x" * 2000)
        s.sync()
        synced.clear()
        s.append(b"x" * 1000)
        s.ack(s.last_seq)
        s.append(b"x" * 2000)  # does not fit: the delivered segment goes without a sync
        assert synced == [] and len(list(tmp_path.glob("*.seg"))) == 1
        s.append(b"x" * 3000)  # does not fit either, and is not delivered: synced when it closes
        assert len(synced) == 1 and len(list(tmp_path.glob("*.seg"))) == 2
        assert payloads(s) == [b"x" * 2000, b"x" * 3000]


def test_a_cursor_written_by_an_older_version_is_read_and_overwritten(tmp_path: Path) -> None:
    (tmp_path / "cursor.json").write_text('{"acked": 7}')  # exact JSON, no padding
    with Spool(tmp_path) as s:
        assert s.acked == 7 and s.append(b"a") == 8
        s.ack(8)
    with Spool(tmp_path) as s:
        assert s.acked == 8 and s.append(b"b") == 9


@pytest.mark.parametrize("cut", ["half_header", "half_payload", "garbage"])
def test_torn_tail_is_cut_and_never_replayed(tmp_path: Path, cut: str) -> None:
    with Spool(tmp_path) as s:
        for i in range(10):
            s.append(f"good {i}".encode() * 10)
    (seg,) = tmp_path.glob("*.seg")
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        if cut == "garbage":
            f.seek(size)
            f.write(os.urandom(100))
        else:
            record = 28 + 60  # header + payload
            f.truncate(size - (5 if cut == "half_payload" else record - 10))
    with Spool(tmp_path) as s:
        got = payloads(s)
        assert got == [f"good {i}".encode() * 10 for i in range(len(got))]
        assert len(got) == (10 if cut == "garbage" else 9)
        assert s.stats()["spool_torn_bytes"] > 0
        s.append(b"new")  # a new segment: the cut one is never appended to
        assert payloads(s)[-1] == b"new"


def test_flipped_bit_is_detected_by_the_checksum(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        for i in range(10):
            s.append(f"record {i}".encode())
    (seg,) = tmp_path.glob("*.seg")
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x01  # inside the last record's payload
    seg.write_bytes(bytes(data))
    with Spool(tmp_path) as s:
        assert payloads(s) == [f"record {i}".encode() for i in range(9)]


def test_bound_by_bytes_drops_the_oldest_counted_and_alerted(tmp_path: Path) -> None:
    drops: list[SpoolDrop] = []
    with Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024, on_drop=drops.append, name="t") as s:
        for i in range(2000):
            s.append(i.to_bytes(4, "big") * 25)
        st = s.stats()
        assert st["spool_bytes"] <= 64 * 1024 + 8 * 1024
        assert st["spool_dropped_records"] == sum(d.records for d in drops) > 0
        assert {d.reason for d in drops} == {"max_bytes"}
        kept = payloads(s)
        assert len(kept) + st["spool_dropped_records"] == 2000  # nothing vanished silently
        first = int.from_bytes(kept[0][:4], "big")
        assert [int.from_bytes(p[:4], "big") for p in kept] == list(range(first, 2000))  # the newest kept


def test_bound_by_age(tmp_path: Path) -> None:
    clock = FakeClock()
    drops: list[SpoolDrop] = []
    with Spool(tmp_path, max_age_s=60, segment_bytes=4096, clock=clock, on_drop=drops.append) as s:
        for _ in range(100):
            s.append(b"old" * 30)
        clock.t += 3600
        s.append(b"new")
        assert payloads(s) == [b"new"]
        assert drops and drops[0].reason == "max_age" and sum(d.records for d in drops) == 100


def test_the_group_commit_waits_for_the_oldest_record_neither_synced_nor_delivered(tmp_path: Path) -> None:
    """A sink that delivers within the interval spares the fsync: each record's sync is due one
    interval after its own append, and its acknowledgement takes it off; what came before the oldest
    such record counts as durable."""
    with Spool(tmp_path, sync_interval_s=3600) as s:
        assert s.sync_due is None
        before = time.monotonic()
        first = s.append(b"a")
        due = s.sync_due
        assert due is not None and before + 3600 <= due <= time.monotonic() + 3600
        later = time.monotonic()
        pair = s.append_many([b"b", b"c"])  # one append: its records go together
        assert s.sync_due == due and s.durable_seq == 0
        s.ack(first)  # delivered: the next sync is the pair's, and the first record needs none
        due_pair = s.sync_due
        assert due_pair is not None and due_pair >= later + 3600 and s.durable_seq == first
        s.ack(pair - 1)  # part of the pair: it still waits for its sync
        assert s.sync_due == due_pair and s.durable_seq == first
        s.append(b"d")
        s.ack(pair)
        assert s.sync_due is not None and s.sync_due > due_pair and s.durable_seq == pair
        assert s.sync() == pair + 1 and s.sync_due is None and s.fsyncs == 1
        s.append(b"e")
        s.ack(s.last_seq)  # all delivered: nothing to sync, all durable
        assert s.sync_due is None and s.durable_seq == s.last_seq and s.fsyncs == 1


def test_group_commit_reports_durability(tmp_path: Path, wait_for: Callable[..., Any]) -> None:
    durable: list[int] = []
    with Spool(tmp_path, sync_interval_s=0.05, on_durable=durable.append) as s:
        seq = s.append(b"x")
        assert seq is not None
        assert s.wait_durable(seq, timeout=10)
        wait_for(lambda: durable and durable[-1] >= seq, what="the durability callback")


def test_close_ends_the_wait_for_the_group_commit_and_syncs(tmp_path: Path) -> None:
    s = Spool(tmp_path, sync_interval_s=3600)
    try:
        seq = s.append(b"a")
        assert seq is not None and s.durable_seq == 0  # the group commit is an hour away
    finally:
        s.close()
    assert s.durable_seq == seq and not s._flusher.is_alive()


def test_concurrent_appends_keep_every_record(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=16 * 1024) as s:

        def work(k: int) -> None:
            for i in range(500):
                s.append(f"{k}:{i}".encode())

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = [p.decode() for p in payloads(s)]
        assert sorted(got) == sorted(f"{k}:{i}" for k in range(4) for i in range(500))
        for k in range(4):  # each writer's own order is kept
            mine = [int(x.split(":")[1]) for x in got if x.startswith(f"{k}:")]
            assert mine == sorted(mine)


def _items(record: memoryview) -> int:
    return record[0]  # the test's records say how many items (points, messages) they hold


def test_dropped_records_are_counted_in_items_too(tmp_path: Path) -> None:
    """A sink matches its loss exactly: the spool reads back what a dropped segment held."""
    drops: list[SpoolDrop] = []
    total = 0
    with Spool(
        tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024, on_drop=drops.append, count=_items
    ) as s:
        for i in range(2000):
            n = i % 7 + 1
            total += n
            s.append(bytes([n]) * 100)
        kept = sum(p[0] for p in payloads(s))
        st = s.stats()
    assert st["spool_dropped_records"] > 0  # the case under test happened
    assert st["spool_dropped_items"] == sum(d.items or 0 for d in drops) == total - kept
    assert all(d.items is not None for d in drops)


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "vol"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_volume_drops_counted_never_raises(tiny_volume: Path) -> None:
    drops: list[SpoolDrop] = []
    with Spool(tiny_volume, segment_bytes=32 * 1024, on_drop=drops.append, count=_items) as s:
        kept = [s.append(bytes([3]) + os.urandom(999)) for _ in range(1000)]  # 1 MB into 256 kB
        st = s.stats()
        assert st["spool_dropped_records"] > 0 and drops and {d.reason for d in drops} == {"disk_full"}
        assert st["spool_dropped_items"] == 3 * st["spool_dropped_records"]  # each dropped record's items
        assert st["spool_write_errors"] > 0
        readable = s.read(max_records=10_000)
        assert len(readable) == s.pending_records  # what is counted as kept can be read back
        assert readable[-1][0] == max(k for k in kept if k is not None)
        s.ack(s.last_seq)
        assert s.append(b"after") is not None  # room again once delivered


def test_point_batches_round_trip(tmp_path: Path) -> None:
    b = PointBatch(
        device_id="press-01",
        ts_ns=np.array([1, 2, 3], dtype=np.int64),
        tag_ids=np.array([7, 8, 2**63 - 1], dtype=np.int64),
        values=np.array([1.5, np.nan, -np.inf]),
        quality=np.array([0, 3, 200], dtype=np.uint8),
        text={1: 'running "auto"'},
    )
    with Spool(tmp_path) as s:
        s.append(encode_batch(b))
        ((_, rec),) = s.read()
        d = decode_batch(rec)
    assert d.device_id == b.device_id and d.text == {1: 'running "auto"'}
    for col in ("ts_ns", "tag_ids", "values", "quality"):
        np.testing.assert_array_equal(getattr(d, col), getattr(b, col))
    with pytest.raises(ValueError, match="does not match"):
        decode_batch(encode_batch(b)[:-1])


def test_reads_from_behind_the_last_read_never_skip_records(tmp_path: Path) -> None:
    """The historian re-reads from where its last transaction ended, deep inside a large segment."""
    rng = np.random.default_rng(5)
    with Spool(tmp_path, segment_bytes=64 << 20) as s:
        for _ in range(8000):
            s.append(b"x" * 2500)  # 20 MB: more than one read window
        after = 0
        while True:
            got = [seq for seq, _ in s.read(after, max_records=256, max_bytes=1 << 20)]
            if not got:
                break
            assert got == list(range(after + 1, after + 1 + len(got)))
            after = got[int(rng.integers(len(got)))]
        assert after == 8000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    activations=st.lists(st.lists(st.binary(max_size=700), max_size=40), min_size=1, max_size=12),
    segment_kb=st.integers(4, 24),
)
def test_grouped_appends_store_what_single_appends_store(
    tmp_path_factory: pytest.TempPathFactory, activations: list[list[bytes]], segment_kb: int
) -> None:
    """``append_each`` writes an activation's records with one ``writev`` when they fit the open
    segment: the same sequence numbers, bytes after a restart and segment roll-overs as one by one."""
    one, grouped = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("grouped")
    clock = FakeClock()
    with (
        Spool(one, segment_bytes=segment_kb * 1024, clock=clock) as a,
        Spool(grouped, segment_bytes=segment_kb * 1024, clock=clock) as b,
    ):
        for i, records in enumerate(activations):
            assert [a.append(r) for r in records] == b.append_each(records)
            if i % 3 == 2:  # now and then everything is delivered (the open segment closes)
                a.ack(a.last_seq), b.ack(b.last_seq)
        assert payloads(a) == payloads(b)
        assert sorted(p.name for p in one.glob("*.seg")) == sorted(p.name for p in grouped.glob("*.seg"))
    with Spool(one) as a, Spool(grouped) as b:  # every record's header and checksum hold
        assert payloads(a) == payloads(b) and a.last_seq == b.last_seq


def test_grouped_appends_on_a_full_volume_drop_counted_and_keep_order(tiny_volume: Path) -> None:
    drops: list[SpoolDrop] = []
    with Spool(tiny_volume, segment_bytes=32 * 1024, on_drop=drops.append, count=_items) as s:
        seqs = [seq for _ in range(100) for seq in s.append_each([bytes([2]) + os.urandom(999)] * 10)]
        kept = [seq for seq in seqs if seq is not None]
        assert kept == sorted(set(kept))  # in order, never reused
        stats = s.stats()
        assert stats["spool_dropped_records"] > 0 and {d.reason for d in drops} == {"disk_full"}
        assert stats["spool_dropped_items"] == 2 * stats["spool_dropped_records"]
        readable = s.read(max_records=10_000)
        assert len(readable) == s.pending_records  # what is counted as kept can be read back
        assert readable[-1][0] == kept[-1]
