#!/usr/bin/env python3
"""bench/rate_mix.py: the fixed-rate mix of bench/run.sh (standard library only).

    rate_mix.py urls BASE ID_PREFIX N WORKDIR
        Writes WORKDIR/rate-get.urls and WORKDIR/rate-patch.urls: the N URLs
        BASE/progress/ID_PREFIX0 … ID_PREFIX{N-1}, each file in its own
        random order, for `oha --urls-from-file`.

    rate_mix.py summary GET.csv PATCH.csv SECONDS [WARMUP [STARTED STEAL]]
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
        With STARTED (the Unix time oha started, which its request-start
        counts from) and STEAL (a `steal` trace of the same minutes), also
        slow_n (requests slower than 2 ms), slow_stolen (those of them in
        flight while the hypervisor took CPU time from this VM) and
        stolen_max_ms (the most CPU time taken in any 100 ms).

    rate_mix.py steal OUT SECONDS
        Every 10 ms for SECONDS, appends `<unix time> <steal jiffies>` (the
        machine's total from /proc/stat) to OUT.
"""

import bisect
import csv
import math
import os
import random
import sys
import time


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


SLOW = 0.002  # the fixed-rate target: p99 under 2 ms


def cmd_steal(out, seconds):
    end = time.time() + float(seconds)
    with open(out, "w") as f:
        while time.time() < end:
            with open("/proc/stat") as stat:
                cpu = stat.readline().split()  # cpu user nice system idle iowait irq softirq steal
            f.write(f"{time.time():.4f} {cpu[8]}\n")
            time.sleep(0.01)


def steal_ticks(path, started):
    """(seconds since STARTED, ms of CPU stolen since the previous sample) per sample that saw steal."""
    hz = os.sysconf("SC_CLK_TCK")
    ticks, prev = [], None
    with open(path) as f:
        for line in f:
            t, jiffies = line.split()
            jiffies = int(jiffies)
            if prev is not None and jiffies > prev:
                ticks.append((float(t) - started, (jiffies - prev) * 1000 / hz))
            prev = jiffies
    return ticks


def steal_report(timed, started, steal_path, warmup):
    """slow_n, slow_stolen and stolen_max_ms (see the usage)."""
    ticks = steal_ticks(steal_path, float(started))
    starts = [t for t, _ in ticks]
    slow = [(s, d) for s, d in timed if d > SLOW]
    # Steal is booked at the first clock tick after the VM runs again, so a
    # request counts as stolen from when a sample up to 10 ms after it ended
    # saw steal.
    stolen = sum(1 for s, d in slow if bisect.bisect_right(starts, s + d + 0.01) > bisect.bisect_left(starts, s))
    worst, lo, window = 0.0, 0, 0.0
    measured = [(t, ms) for t, ms in ticks if t >= float(warmup)]
    for t, ms in measured:
        window += ms
        while measured[lo][0] <= t - 0.1:
            window -= measured[lo][1]
            lo += 1
        worst = max(worst, window)
    return {"slow_n": len(slow), "slow_stolen": stolen, "stolen_max_ms": "%.0f" % worst}


def cmd_summary(get_csv, patch_csv, seconds, warmup="0", started=None, steal=None):
    every, failed, by_kind, size, bad, early, timed = [], 0, {}, 0, 0, [], []
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
                timed.append((float(row["request-start"]), took))
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
    if started and steal:
        timed.sort()
        out.update(steal_report(timed, started, steal, warmup))
    print("BENCH_RESULT " + " ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    commands = {"urls": cmd_urls, "summary": cmd_summary, "steal": cmd_steal}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
