#!/usr/bin/env python3
"""bench/soak.py: the load and the sampler of bench/soak.sh (standard library only).

Sends a steady, open-loop load at RATE requests/s to one progressd for
SECONDS: 20 % PUT of a new id (running, ttl_seconds=TTL), 40 % PATCH of an
id created less than TTL/2 s ago, 40 % GET of such an id. Every record
expires TTL s after its last write, so the live set should stay at about
0.2 x RATE x TTL records. Every INTERVAL s it samples:
  keys     keys under the run's key prefix on Redis (SCAN MATCH prefix*)
  kbytes   MEMORY USAGE of those keys, summed (records and listing indexes)
  used_mb  INFO memory used_memory of the whole (shared) Redis, for context
  rows     rows of table progress in the run's database (and of them live:
           expires_at > now(); the rest wait for cleanup)
  rss_mb   VmRSS of the progressd process (/proc/PID/status)
  cache    progressd_read_cache_entries and progressd_write_behind_backlog
           from its /metrics
and prints the curve as a table and, per series, first third vs last third
of the samples after WARMUP s: "flat" when both the largest and the median
of the last third are at most 1.10 x those of the first third plus a small
absolute slack (the largest catches a sawtooth that rises, the median a
steady climb); "GROWS" otherwise. Exit status 1 when something grew or more than
0.1 % of the requests failed.

Usage: soak.py BASE_URL PID REDIS_HOST REDIS_PORT KEY_PREFIX DATABASE_URL SECONDS RATE TTL INTERVAL WARMUP
"""

import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque


# --- a minimal RESP client ---------------------------------------------------


class Redis:
    def __init__(self, host, port, password=None):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        if password:
            self.call("AUTH", password)

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)[:-2]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)


# --- the load ------------------------------------------------------------------


class Load:
    def __init__(self, base, rate, ttl, seconds, workers=8):
        self.host, self.port = base.replace("http://", "").split(":")
        self.port = int(self.port)
        self.rate, self.ttl, self.seconds, self.workers = rate, ttl, seconds, workers
        self.statuses = Counter()
        self.errors = Counter()
        self.recent = deque()  # (created monotonic, id)
        self.lock = threading.Lock()
        self.next_id = 0
        self.run_tag = "%d" % os.getpid()
        self.late = 0

    def pick_recent(self, rng):
        now = time.monotonic()
        with self.lock:
            while self.recent and now - self.recent[0][0] > self.ttl / 2:
                self.recent.popleft()
            if not self.recent:
                return None
            return self.recent[rng.randrange(len(self.recent))][1]

    def worker(self, index, start):
        rng = random.Random(index)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        period = self.workers / self.rate
        due = start + index * period / self.workers
        end = start + self.seconds
        while due < end:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                self.late += 1
            due += period
            roll = rng.random()
            rid = None if roll < 0.2 else self.pick_recent(rng)
            if rid is None:
                with self.lock:
                    self.next_id += 1
                    rid = "soak-%s-%d" % (self.run_tag, self.next_id)
                method, body = "PUT", '{"status":"running","current":1,"total":10,"ttl_seconds":%d,"metadata":{"soak":true}}' % self.ttl
                kind = "PUT"
            elif roll < 0.6:
                method, body, kind = "PATCH", '{"current":%d,"message":"working"}' % rng.randrange(2, 10), "PATCH"
            else:
                method, body, kind = "GET", None, "GET"
            try:
                headers = {"content-type": "application/json"} if body else {}
                conn.request(method, "/progress/" + rid, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as e:
                self.errors[(kind, type(e).__name__)] += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                continue
            self.statuses[(kind, status)] += 1
            if kind == "PUT" and status in (200, 201):
                with self.lock:
                    self.recent.append((time.monotonic(), rid))

    def run(self):
        start = time.monotonic() + 0.1
        threads = [threading.Thread(target=self.worker, args=(i, start), daemon=True) for i in range(self.workers)]
        for t in threads:
            t.start()
        return threads


# --- sampling ------------------------------------------------------------------


def redis_sample(redis, prefix):
    cursor, keys, total_bytes = b"0", 0, 0
    while True:
        cursor, batch = redis.call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
        for key in batch:
            keys += 1
            usage = redis.call("MEMORY", "USAGE", key, "SAMPLES", "0")
            total_bytes += usage or 0
        if cursor in (b"0", "0"):
            break
    info = redis.call("INFO", "memory").decode()
    used = next(int(line.split(":")[1]) for line in info.splitlines() if line.startswith("used_memory:"))
    return keys, total_bytes, used


def pg_sample(database_url):
    out = subprocess.run(
        ["psql", database_url, "-XAtq", "-F", " ", "-c",
         "SELECT count(*), count(*) FILTER (WHERE expires_at > now()) FROM progress"],
        capture_output=True, text=True, timeout=30,
    )
    if out.returncode != 0:
        return None, None
    total, live = out.stdout.split()
    return int(total), int(live)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def metrics(base):
    host, port = base.replace("http://", "").split(":")
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None, None
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("progressd_read_cache_entries", "progressd_write_behind_backlog"):
            values[parts[0]] = int(float(parts[1]))
    return values.get("progressd_read_cache_entries"), values.get("progressd_write_behind_backlog")


def verdict(name, values, slack):
    values = [v for v in values if v is not None]
    if len(values) < 3:
        return name, "n/a (fewer than 3 samples after warm-up)", True
    third = max(1, len(values) // 3)
    first, last = sorted(values[:third]), sorted(values[-third:])
    fmax, lmax, fmed, lmed = first[-1], last[-1], first[len(first) // 2], last[len(last) // 2]
    ok = lmax <= fmax * 1.10 + slack and lmed <= fmed * 1.10 + slack
    return name, "%s: first third max %s median %s, last third max %s median %s" % (
        "flat" if ok else "GROWS", fmax, fmed, lmax, lmed), ok


def main():
    (base, pid, redis_host, redis_port, prefix, database_url, seconds, rate, ttl, interval, warmup) = sys.argv[1:12]
    pid, seconds, rate, ttl, interval, warmup = int(pid), int(seconds), float(rate), int(ttl), int(interval), int(warmup)
    redis = Redis(redis_host, int(redis_port), os.environ.get("SOAK_REDIS_PASSWORD") or None)
    load = Load(base, rate, ttl, seconds)
    t0 = time.monotonic()
    threads = load.run()
    samples = []
    next_sample = t0
    while True:
        now = time.monotonic()
        if now >= next_sample:
            keys, kbytes, used = redis_sample(redis, prefix)
            rows, live = pg_sample(database_url)
            rss = rss_kb(pid)
            cache, backlog = metrics(base)
            done = sum(load.statuses.values()) + sum(load.errors.values())
            samples.append((now - t0, keys, kbytes // 1024, used / 1048576, rows, live, rss / 1024 if rss else None, done, cache, backlog))
            s = samples[-1]
            print("soak: t=%5.0fs keys=%d kbytes=%d rows=%s live=%s rss=%.1fMB cache=%s requests=%d" % (s[0], s[1], s[2], s[4], s[5], s[6] or 0, s[8], s[7]),
                  file=sys.stderr, flush=True)
            next_sample += interval
        if now - t0 > seconds + 0.5 and not any(t.is_alive() for t in threads):
            break
        time.sleep(max(0.0, min(next_sample - time.monotonic(), 0.5)))

    total = sum(load.statuses.values()) + sum(load.errors.values())
    failed = sum(n for (kind, status), n in load.statuses.items() if status >= 400) + sum(load.errors.values())
    print()
    print("requests:    %d in %d s (%.0f/s asked, %.0f/s sent); by answer: %s" % (
        total, seconds, rate, total / seconds,
        ", ".join("%s %s: %d" % (k, s, n) for (k, s), n in sorted(load.statuses.items()))))
    if load.errors:
        print("errors:      %s" % ", ".join("%s %s: %d" % (k, e, n) for (k, e), n in sorted(load.errors.items())))
    print("expected:    about %.0f live records (0.2 x rate x TTL)" % (0.2 * rate * ttl))
    print()
    print("| t (s) | Redis keys | Redis KB (prefix) | Redis used_memory MB (shared) | PG rows | PG live rows | RSS MB | read cache entries | write-behind backlog | requests |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, keys, kb, used, rows, live, rss, done, cache, backlog in samples:
        print("| %.0f | %d | %d | %.1f | %s | %s | %s | %s | %s | %d |" % (
            t, keys, kb, used, rows, live, "%.1f" % rss if rss else "?", cache, backlog, done))
    print()
    after = [s for s in samples if s[0] >= warmup]
    results = [
        verdict("Redis keys", [s[1] for s in after], 50),
        verdict("Redis KB (prefix)", [s[2] for s in after], 256),
        verdict("PostgreSQL rows", [s[4] for s in after], 100),
        verdict("RSS MB", [round(s[6], 1) if s[6] else None for s in after], 2),
        verdict("read cache entries", [s[8] for s in after], 50),
    ]
    print("verdict (samples after %d s of warm-up; last third max and median <= 1.10 x first third's + slack):" % warmup)
    ok = True
    for name, text, good in results:
        print("  %-18s %s" % (name, text))
        ok = ok and good
    print("  %-18s %s" % ("Redis used_memory", "not judged: the Redis is shared, other sessions move it"))
    if failed > total / 1000:
        print("  requests failed: %d of %d (more than 0.1 %%)" % (failed, total))
        ok = False
    if load.late:
        print("  note: the loader fell more than 1 s behind schedule %d times" % load.late)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
