#!/usr/bin/env python3
"""bench/webhooks.py: what webhooks cost writes, and how soon they arrive (issue 21).

    python3 bench/webhooks.py [--bin target/release/progressd] [--rounds 3] [--duration 5]
                              [--jobs 300] [--store memory|redis]

1. Throughput: two release instances on the same store kind (the memory store by
   default; --store redis gives each its own key prefix on the shared Redis),
   one without webhooks and one with PROGRESS_WEBHOOK_URL (and its secret) set.
   wrk PUTs running records (bench/put.lua) and PATCHes them (bench/patch.lua):
   no write fires an event, so the difference is what a configured webhook costs
   a write that causes none. Rows of a round run back to back, their order
   alternating between rounds; the table gives each row's median requests/s and
   the median of the rounds' with/without ratios (target: 0.95 or more).
2. A receiver that hangs (accepts and never answers): --jobs terminal PATCHes,
   one at a time, on a third instance whose webhook goes there, next to the
   same on the instance without webhooks; p50 and p99 of the PATCHes.
3. Delay: on the instance with webhooks, --jobs records are PUT running and then
   PATCHed to completed, one at a time; a receiver on loopback (a thread of this
   script, answering 204) notes when each delivery arrives. The delay is counted
   from the start of the terminal PATCH and from its response; p50, p99, max.

Everything it started is stopped; Redis keys under its prefixes are deleted.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as res:
        return res.status, res.read()


class Received:
    def __init__(self):
        self.lock = threading.Lock()
        self.at = {}
        self.event = threading.Condition(self.lock)


def receiver(received: Received):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            now = time.perf_counter()
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            record = json.loads(body)["data"]["id"]
            with received.lock:
                received.at.setdefault(record, now)
                received.event.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def hanging_receiver():
    """Accepts connections and never answers (holds them open)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    held = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server


def start(binary, port, env_extra):
    env = {"PATH": os.environ["PATH"], "PORT": str(port), "PROGRESS_HOST": "127.0.0.1", "PROGRESS_LOG_LEVEL": "warn"}
    env.update(env_extra)
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            call("GET", f"http://127.0.0.1:{port}/healthz")
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"progressd did not start on {port}")


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User plus system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(script, base, duration, env):
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", "32", "-d", f"{duration}s", "--latency", "-s", os.path.join(HERE, script), base],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"BENCH_RESULT .*", out)
    if not m:
        sys.exit(f"wrk printed no result:\n{out}")
    fields = dict(kv.split("=") for kv in m.group(0).split()[1:])
    if int(fields["status"]) or int(fields["connect"]) or int(fields["timeout"]):
        sys.exit(f"wrk saw errors: {m.group(0)}")
    return float(fields["rps"]), int(fields["requests"])


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "progressd"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--store", choices=["memory", "redis"], default="memory")
    args = ap.parse_args()

    received = Received()
    rx = receiver(received)
    hook_url = f"http://127.0.0.1:{rx.server_port}/hooks"
    run_id = f"{os.getpid()}-{int(time.time())}"
    prefixes = []

    def store_env(name):
        if args.store == "memory":
            return {}
        prefix = f"bench-webhooks-{name}-{run_id}:"
        prefixes.append(prefix)
        # A loaded 2-core machine can hold a Redis answer past the 100 ms default.
        return {"REDIS_URL": REDIS, "PROGRESS_KEY_PREFIX": prefix, "PROGRESS_REDIS_TIMEOUT_MS": "1000"}

    hang = hanging_receiver()
    hang_url = f"http://127.0.0.1:{hang.getsockname()[1]}/hooks"
    ports = {"off": free_port(), "on": free_port(), "hang": free_port()}
    procs = {
        "off": start(args.bin, ports["off"], store_env("off")),
        "on": start(
            args.bin,
            ports["on"],
            {**store_env("on"), "PROGRESS_WEBHOOK_URL": hook_url, "PROGRESS_WEBHOOK_SECRET": SECRET},
        ),
        "hang": start(
            args.bin,
            ports["hang"],
            {**store_env("hang"), "PROGRESS_WEBHOOK_URL": hang_url, "PROGRESS_WEBHOOK_SECRET": SECRET},
        ),
    }
    try:
        bases = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
        ids = 1000
        for kind in ("off", "on"):
            base = bases[kind]
            for i in range(ids):
                call("PUT", f"{base}/progress/bench-patch-{i}", {"status": "running", "current": 0, "total": 100})
        rows = {(kind, op): [] for kind in ("off", "on") for op in ("PUT", "PATCH")}
        ratios = {"PUT": [], "PATCH": []}
        env = {"BENCH_WRITE_IDS": str(ids)}
        cpu_us = {(kind, op): [] for kind in ("off", "on") for op in ("PUT", "PATCH")}
        for kind in ("off", "on"):
            wrk("put.lua", bases[kind], 1, env)
        for r in range(args.rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for op, script in (("PUT", "put.lua"), ("PATCH", "patch.lua")):
                got = {}
                for kind in order:
                    before = cpu_seconds(procs[kind].pid)
                    rps, requests = wrk(script, bases[kind], args.duration, env)
                    cpu_us[(kind, op)].append((cpu_seconds(procs[kind].pid) - before) / requests * 1e6)
                    got[kind] = rps
                for kind in order:
                    rows[(kind, op)].append(got[kind])
                ratios[op].append(got["on"] / got["off"])

        print(f"## Webhooks: writes with PROGRESS_WEBHOOK_URL set (no event fired) next to none ({args.store} store)")
        print()
        print(f"wrk 2 threads, 32 connections, {args.duration} s per run, {args.rounds} rounds; "
              f"load average {os.getloadavg()[0]:.2f}")
        print()
        print("| write | no webhook (req/s) | webhook URL set (req/s) | ratio (median of rounds) "
              "| server CPU µs/request, without → with |")
        print("|---|---:|---:|---:|---:|")
        for op in ("PUT", "PATCH"):
            off = statistics.median(rows[("off", op)])
            on = statistics.median(rows[("on", op)])
            cpu = f"{statistics.median(cpu_us[('off', op)]):.1f} → {statistics.median(cpu_us[('on', op)]):.1f}"
            print(f"| {op} | {off:,.0f} | {on:,.0f} | {statistics.median(ratios[op]):.3f} | {cpu} |")
        print()

        def terminal_patches(base, tag):
            times = []
            for n in range(args.jobs):
                rid = f"{tag}-{run_id}-{n}"
                call("PUT", f"{base}/progress/{rid}", {"status": "running"})
                t0 = time.perf_counter()
                call("PATCH", f"{base}/progress/{rid}", {"status": "completed"})
                times.append((time.perf_counter() - t0) * 1000)
            return times

        plain = terminal_patches(bases["off"], "plain")
        hung = terminal_patches(bases["hang"], "hung")
        print(f"## Webhooks: terminal PATCHes while the receiver hangs ({args.jobs}, one at a time)")
        print()
        print("| instance | p50 (ms) | p99 (ms) | max (ms) |")
        print("|---|---:|---:|---:|")
        for name, values in (("no webhook", plain), ("webhook to a receiver that never answers", hung)):
            print(f"| {name} | {percentile(values, 50):.2f} | {percentile(values, 99):.2f} | {max(values):.2f} |")
        print()

        base = bases["on"]
        from_start, from_ack = [], []
        for n in range(args.jobs):
            rid = f"delay-{run_id}-{n}"
            call("PUT", f"{base}/progress/{rid}", {"status": "running"})
            t0 = time.perf_counter()
            call("PATCH", f"{base}/progress/{rid}", {"status": "completed"})
            t1 = time.perf_counter()
            with received.lock:
                ok = received.event.wait_for(lambda: rid in received.at, timeout=10)
                if not ok:
                    sys.exit(f"no delivery for {rid} within 10 s")
                t2 = received.at[rid]
            from_start.append((t2 - t0) * 1000)
            from_ack.append((t2 - t1) * 1000)
        print(f"## Webhooks: delay from a terminal PATCH to its delivery ({args.jobs} jobs, receiver on loopback)")
        print()
        print("| counted from | p50 (ms) | p99 (ms) | max (ms) |")
        print("|---|---:|---:|---:|")
        for name, values in (("the PATCH's start", from_start), ("its response", from_ack)):
            print(f"| {name} | {percentile(values, 50):.2f} | {percentile(values, 99):.2f} | {max(values):.2f} |")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        rx.shutdown()
        hang.close()
        for prefix in prefixes:
            subprocess.run(
                ["redis-cli", "-u", REDIS, "--scan", "--pattern", f"{prefix}*"], capture_output=True, text=True
            ).stdout.split() and subprocess.run(
                "redis-cli -u {0} --scan --pattern '{1}*' | xargs -r redis-cli -u {0} del".format(REDIS, prefix),
                shell=True,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
