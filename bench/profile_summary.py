"""Where a flow process's time goes, from the ``cost`` stage's py-spy profiles (``--cost-profile DIR``).

``python -m bench.profile_summary DIR/uns-100.txt [...]`` reads py-spy's collapsed stacks (``--format
raw --threads``, idle frames left out, so a sample is a moment a thread was running or runnable) and
prints the share of samples per category (see ``_RULES``: "pymodbus" is time inside pymodbus, its
socket writes included, whoever called it).

>>> categorize("thread (1): MainThread;<module> (run.py:355)")
'bytewax engine (Rust, no Python frame)'
>>> categorize("thread (2): device:poll-loop;_run_loop (connectors/polling.py:318);x (pymodbus/transaction/transaction.py:9)")
'client: pymodbus (incl. its socket I/O)'
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("client: pymodbus (incl. its socket I/O)", ("pymodbus/",)),
    ("MQTT client: paho (queueing, network thread)", ("paho/mqtt/",)),
    ("UNS formatting + packing", ("PackTable", "format_batch", "_stamps_and_values", "pack_publish")),
    ("decode + batch (Modbus client, codec)", ("ModbusDeviceClient", "ReadPlan", "codec.py", "PointBatch")),
    ("historian (writer, COPY)", ("connectors/historian/", "psycopg/")),
    ("spool", ("connectors/spool.py",)),
    ("operators", ("operators/",)),
    ("sinks: publisher bookkeeping", ("connectors/mqtt/", "connectors/derived.py")),
    ("source: scheduling (polling.py)", ("connectors/polling.py:4", "connectors/polling.py:5")),
    ("dataflow adapters (dataflows/, bytewax python)", ("dataflows/", "bytewax/")),
    ("harness (bench reporter, counters)", ("bench/",)),
    ("asyncio event loop (scheduling, epoll, cross-thread wake-ups)", ("asyncio/", "selectors.py")),
)
"""Checked in order against every frame of a sample's stack; the first rule with a matching frame wins."""


def categorize(stack: str) -> str:
    frames = stack.split(";")[1:]
    for name, needles in _RULES:
        if any(n in f for f in frames for n in needles):
            return name
    thread = stack.split(";", 1)[0]
    if thread.endswith("MainThread") and frames and frames[-1].startswith("<module> (run.py"):
        return "bytewax engine (Rust, no Python frame)"
    return "other Python"


_SLEEPING = ("Spool._flush_loop (connectors/spool.py:571)",)
"""Innermost frames that are a ``time.sleep`` py-spy reports as active (no CPU is used there)."""


def summarize(path: Path) -> tuple[int, Counter[str]]:
    """Samples in the profile and samples per category (sleeping samples left out)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit() or stack.endswith(_SLEEPING):
            continue
        total += int(n)
        counts[categorize(stack)] += int(n)
    return total, counts


def main(argv: list[str] | None = None) -> int:
    for arg in sys.argv[1:] if argv is None else argv:
        total, counts = summarize(Path(arg))
        print(f"{arg}: {total} samples")
        for name, n in counts.most_common():
            print(f"  {100 * n / max(1, total):5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
