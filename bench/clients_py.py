#!/usr/bin/env python3
"""The Python worker client's update rate and the PATCH rate it makes reach
the server, with default settings: a tight loop, and one update per 10 ms.

Usage: clients_py.py BASE_URL TOKEN SECONDS; prints one JSON line per loop.
The PATCHes are counted by the server (/metrics, http_requests_total).
"""

import json
import re
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python" / "src"))
from progressd import Client  # noqa: E402


def patches_seen(base_url: str) -> int:
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("http_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
            if labels.get("method") == "PATCH" and labels.get("route") == "/progress/{id}":
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def measure(base_url: str, token: str, seconds: float, every: float) -> dict:
    client = Client(base_url, token=token)  # the defaults: min_interval 0.5 s
    job_id = f"bench-py-{uuid.uuid4().hex[:8]}"
    job = client.job(job_id).start()
    job.flush()
    before = patches_seen(base_url)
    updates = 0
    started = time.perf_counter()
    deadline = started + seconds
    if every == 0:
        while True:
            for _ in range(1000):
                job.update(current=updates)
                updates += 1
            if time.perf_counter() >= deadline:
                break
    else:
        while time.perf_counter() < deadline:
            job.update(current=updates)
            updates += 1
            time.sleep(every)
    loop = time.perf_counter() - started
    during = patches_seen(base_url) - before
    job.flush()
    after_flush = patches_seen(base_url) - before
    record = client.get(job_id)
    assert record is not None and record["current"] == updates - 1, (record, updates)
    job.complete()
    return {
        "client": "python",
        "loop": "tight" if every == 0 else f"sleep {every * 1000:g} ms",
        "seconds": round(loop, 3),
        "updates": updates,
        "updates_per_second": round(updates / loop),
        "patches_during_loop": during,
        "patches_per_second": round(during / loop, 2),
        "patches_with_final_flush": after_flush,
        "final_current_on_server": record["current"],
    }


if __name__ == "__main__":
    base_url, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    for every in (0.0, 0.01):
        print(json.dumps(measure(base_url, token, seconds, every)), flush=True)
