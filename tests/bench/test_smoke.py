"""The benchmark harness end to end with a tiny load: it runs, writes its JSON, and counts something.

No timing assertions: only that every stage produced its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_harness_with_a_tiny_load(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "bench",
        "--devices", "2", "--tags", "5", "--interval", "0.5",
        "--duration", "5", "--warmup", "3",
        "--baseline-rows", "2000", "--baseline-messages", "500",
        "--micro-points", "2000", "--cluster-points", "2000",
        "--query-rows", "20000", "--query-tags", "100", "--query-samples", "8",
        "--cost-devices", "2", "--cost-warmup", "1", "--cost-seconds", "2",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "figure" in proc.stdout and "e2e read" in proc.stdout and "query (a)" in proc.stdout
    files = list(out.glob("*.json"))
    assert len(files) == 1
    r = json.loads(files[0].read_text())

    assert {"date", "machine", "load", "micro", "sinks", "modbus", "e2e", "cluster"} <= r.keys()
    assert r["micro"]["cores"]["points_in"] > 0 and r["micro"]["bytewax"]["points_in"] > 0
    one = r["micro"]["cores_one_by_one"]  # the same-run baseline: the same points, the same results
    assert one["points_in"] == r["micro"]["cores"]["points_in"]
    assert (one["points_out"], one["aggregates"], one["alerts"]) == tuple(
        r["micro"]["cores"][k] for k in ("points_out", "aggregates", "alerts")
    )
    sinks = r["sinks"]
    for key in ("copy_baseline", "paho_baseline_qos0", "paho_baseline_qos1", "uns_publisher_qos0"):
        assert sinks[key]["count"] > 0, key
    assert sinks["historian_writer"]["write"]["count"] > 0
    assert r["modbus"]["count"] > 0
    e2e = r["e2e"]
    for key in (
        "points_read_per_s",
        "rows_stored_per_s",
        "messages_published_per_s",
        "messages_received_per_s",
    ):
        assert e2e[key] > 0, key
    assert e2e["latency_historian"]["rows"] > 0
    assert {"bytewax-0", "postgres", "simulators"} <= e2e["resources"].keys()
    cluster = r["cluster"]
    for variant in ("processes_1", "processes_2", "processes_2_bytewax", "workers_2"):
        assert cluster[variant]["points_out"] > 0, variant
        assert cluster[variant]["exit_codes"] == [0] * cluster[variant]["processes"], variant
    assert set(cluster["speedup"]) == {"processes_1", "processes_2", "processes_2_bytewax", "workers_2"}
    q = r["query"]
    assert q["rows"] == 20000 and q["agg_rows"] == 100 * 1440 and q["latest_rows"] == 100
    assert q["a_raw_1h"]["rows"] and max(q["a_raw_1h"]["rows"]) > 0  # API and SQL agreed on each count
    assert all(100 * (1440 - 60) <= n <= 100 * 1440 for n in q["b_agg_1m_100_tags_1d"]["rows"])
    assert q["c_latest_all_tags"]["rows"] == [100]


def test_ramp_and_memory_stages_with_a_tiny_load(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "bench",
        "--tags", "5", "--stages", "ramp,memory",
        "--ramp-devices", "2,3", "--ramp-warmup", "2", "--ramp-seconds", "3", "--ramp-flow", "source",
        "--ramp-processes", "1,2",
        "--memory-devices", "3", "--memory-interval", "0.5", "--memory-seconds", "3",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "largest device count holding" in proc.stdout and "peak RSS" in proc.stdout
    (file,) = out.glob("*.json")
    r = json.loads(file.read_text())
    assert {"ramp", "memory"} <= r.keys() and not {"micro", "e2e", "cluster"} & r.keys()
    steps = r["ramp"]["steps"]
    assert [s["devices"] for s in steps][:1] == [2] and all(s["polls"] > 0 for s in steps)
    assert r["ramp"]["flow"] == "source" and "largest_holding_devices" in r["ramp"]
    # collector pauses of each step's own window (by the wall clock and in CPU time)
    assert all(
        {"max_pause_ms", "max_pause_cpu_ms", "full_max_cpu_ms"} <= s["gc_window"].keys() for s in steps
    )
    two = r["ramp"]["by_processes"]["2"]  # the same ramp as a 2-process cluster
    assert two["processes"] == 2 and two["steps"] and all(s["polls"] > 0 for s in two["steps"])
    mem = r["memory"]
    assert mem["tags_configured"] == 15 and mem["startup_complete"]
    assert mem["peak_rss_mb"] >= mem["peak_rss_after_startup_mb"] > 0
    assert mem["running"]["polls"] > 0
