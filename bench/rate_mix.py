#!/usr/bin/env python3
"""bench/rate_mix.py: the fixed-rate mix of bench/run.sh (standard library only).

    rate_mix.py urls BASE ID_PREFIX N WORKDIR
        Writes WORKDIR/rate-get.urls and WORKDIR/rate-patch.urls: the N URLs
        BASE/progress/ID_PREFIX0 … ID_PREFIX{N-1}, each file in its own
        random order, for `oha --urls-from-file`.

    rate_mix.py summary GET.csv PATCH.csv SECONDS [WARMUP]
        Merges oha's per-request CSVs (`--output-format csv`: request-start,
        DNS, DNS+dialup, Response-delay, request-duration, bytes, status) and
        prints one `BENCH_RESULT key=value …` line like bench/report.lua's:
        requests, rps (completed requests ÷ SECONDS), p50_us, p99_us,
        p999_us and max_us over every request of both kinds, bytes, status
        (answers >= 400), timeout (rows without a status: errors, requests cut
        off at the deadline), and per kind get_n, get_p50_us, … patch_p999_us.
        With --latency-correction each request-duration counts from the time
        the schedule had the request due, not from when it went out.
        Requests due in the first WARMUP seconds (default 0) are left out of
        all of that (oha opens its connections then, and the read cache
        fills), as wrk2 leaves out its calibration period; warmup_n and
        warmup_p99_us say how many they were and how slow.
"""

import csv
import math
import random
import sys


def cmd_urls(base, prefix, n, work):
    for name in ("get", "patch"):
        ids = list(range(int(n)))
        random.shuffle(ids)
        with open(f"{work}/rate-{name}.urls", "w") as f:
            f.writelines(f"{base}/progress/{prefix}{i}\n" for i in ids)


def pct(sorted_vals, p):
    """The nearest-rank percentile."""
    if not sorted_vals:
        return 0.0
    return sorted_vals[max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)]


def cmd_summary(get_csv, patch_csv, seconds, warmup="0"):
    every, failed, by_kind, size, bad, early = [], 0, {}, 0, 0, []
    for kind, path in (("get", get_csv), ("patch", patch_csv)):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                status = (row.get("status") or "").strip()
                if float(row.get("request-start") or 0) < float(warmup):
                    if status.isdigit():
                        early.append(float(row["request-duration"]))
                    continue
                if not status.isdigit():
                    failed += 1
                    continue
                took = float(row["request-duration"])
                every.append(took)
                by_kind.setdefault(kind, []).append(took)
                size += int(row.get("bytes") or 0)
                bad += int(status) >= 400
    every.sort()
    us = lambda v: int(round(v * 1e6))
    out = {
        "requests": len(every),
        "rps": "%.1f" % (len(every) / float(seconds)),
        "p50_us": us(pct(every, 50)),
        "p99_us": us(pct(every, 99)),
        "p999_us": us(pct(every, 99.9)),
        "max_us": us(every[-1]) if every else 0,
        "bytes": size,
        "connect": 0, "read": 0, "write": 0, "timeout": failed,
        "status": bad,
        "warmup_n": len(early),
        "warmup_p99_us": us(pct(sorted(early), 99)),
    }
    for kind in ("get", "patch"):
        vals = sorted(by_kind.get(kind, []))
        out[f"{kind}_n"] = len(vals)
        for name, p in (("p50", 50), ("p99", 99), ("p999", 99.9)):
            out[f"{kind}_{name}_us"] = us(pct(vals, p))
    print("BENCH_RESULT " + " ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    commands = {"urls": cmd_urls, "summary": cmd_summary}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
