"""First load of the web UI with a big configuration: gzip size of the JS the overview loads, and the time
until the overview (and the devices page) is interactive with ``--devices`` x ``--tags`` configured,
as a ratio to the same measurement with one device of one tag (a baseline in the same run).

``python -m bench.ui_load [--devices 500 --tags 100 --runs 3]``: starts ``nexus up`` (embedded
PostgreSQL and broker, free ports, a temporary folder), stores both flows (not deployed: this measures
the UI and the API, not the dataflow), drives Debian's chromium headless.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.ui import DIST
from nexus.embedded import free_port, port_accepts


def spec(flow: str, devices: int, tags: int) -> dict[str, Any]:
    return {
        "version": 1,
        "id": flow,
        "devices": [
            {
                "id": f"{flow}-d{d}",
                "connection": {"host": "127.0.0.1", "port": 1502, "unit_id": 1 + d % 247},
                "location": {"enterprise": "bench", "site": "s", "area": "a", "line": "l"},
                # the fewest keys: 500 x 100 tags must stay under the API's 4 MB body limit
                "tags": [{"name": f"t{t}", "table": "holding", "address": t} for t in range(tags)],
            }
            for d in range(devices)
        ],
        "sinks": [{"id": "uns", "type": "mqtt_uns"}],
    }


def entry_js_gzip() -> tuple[int, int]:
    """(gzip bytes of the JS index.html loads, of every JS chunk)."""
    html = (DIST / "index.html").read_text()
    entry = [DIST / p.lstrip("/") for p in re.findall(r'(?:src|href)="(/assets/[^"]+\.js)"', html)]
    every = list((DIST / "assets").glob("*.js"))
    size = lambda files: sum(len(gzip.compress(f.read_bytes(), 9)) for f in files)  # noqa: E731
    return size(entry), size(every)


def interactive_ms(page: Any, url: str, ready: str) -> float:
    """Navigation start to ``ready`` visible, in ms (the browser's clock)."""
    page.goto(url, wait_until="commit")
    page.locator(ready).first.wait_for(timeout=120_000)
    return float(page.evaluate("() => performance.now()"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--tags", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="nexus-ui-bench-"))
    port, password = free_port(), secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "NEXUS_DATA_DIR": str(folder),
        "NEXUS_PG_PORT": str(free_port()),
        "NEXUS_MQTT_PORT": str(free_port()),
        "NEXUS_API_PORT": str(port),
        "NEXUS_ADMIN_PASSWORD": password,
    }
    with (folder / "up.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nexus.cli", "up"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not port_accepts("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("nexus up did not start: " + (folder / "up.log").read_text()[-2000:])
            time.sleep(0.2)
        api = httpx.Client(base_url=base, timeout=300)
        token = api.post("/api/v1/auth/login", json={"username": "admin", "password": password}).json()
        api.headers["Authorization"] = f"Bearer {token['access_token']}"
        entry, every = entry_js_gzip()
        results: dict[str, list[float]] = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--no-first-run"])  # fmt: skip
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(base + "/login")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", password)
            page.get_by_role("button", name="Log in").click()
            page.get_by_test_id("user-menu").wait_for()
            # baseline: only the 1-device flow configured; then the big one added
            for flow, devices, tags in (("small", 1, 1), ("big", args.devices, args.tags)):
                r = api.post("/api/v1/flows", json={"spec": spec(flow, devices, tags)})
                assert r.status_code == 201, r.text[:500]
                for _ in range(args.runs):
                    ready = f'tr[data-flow="{flow}"]'
                    results.setdefault(f"overview:{flow}", []).append(interactive_ms(page, base + "/", ready))
                    results.setdefault(f"devices:{flow}", []).append(
                        interactive_ms(page, f"{base}/devices?flow={flow}", f'[data-tag="{flow}-d0/t0"]')
                    )
            browser.close()
        print(f"JS gzip: {entry / 1024:.1f} KiB loaded by the overview, {every / 1024:.1f} KiB in all chunks")
        for what, label in (("overview", "overview"), ("devices", "devices page of the flow")):
            small = statistics.median(results[f"{what}:small"])
            big = statistics.median(results[f"{what}:big"])
            print(
                f"{label} interactive (median of {args.runs}): 1 device x 1 tag {small:.0f} ms, "
                f"{args.devices} x {args.tags} {big:.0f} ms, ratio {big / small:.2f}"
            )
        return 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
