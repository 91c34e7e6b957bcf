#!/usr/bin/env python3
"""bench/blackhole_latency.py: what the first requests cost when Redis stops answering.

    python3 bench/blackhole_latency.py [--bin target/release/progressd] [--concurrent]

Starts its own redis-server (free port, no persistence), bench/blackhole.py in
front of it, a database of its own on the local PostgreSQL
(BENCH_PG_URL, default postgres://postgres@127.0.0.1:5432) and progressd with
its default settings over both. Creates ten records, waits until they are in
PostgreSQL, turns the proxy into a black hole (connections stay open, nothing
is answered: a dead network path), waits until the read cache has stepped
aside (so every request has to ask Redis), then sends the first ten requests,
a PATCH and a GET of each record in turn: one after the other, or with
--concurrent all ten at once. Prints each request's status and time, and the
slowest. Everything it started is stopped, and the database dropped.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PG = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, body=None, timeout=10.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            res.read()
            status = res.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, (time.perf_counter() - started) * 1000


def wait(what: str, check, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"blackhole_latency: {what} did not happen within {limit} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "progressd"))
    parser.add_argument("--concurrent", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="progressd-blackhole-")
    procs = []
    db = f"progressd_blackhole_{os.getpid()}_{int(time.time())}"
    subprocess.run(["psql", f"{PG}/postgres", "-XAtq", "-c", f"CREATE DATABASE {db}"], check=True)
    try:
        redis_port, proxy_port, port = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL))
        proxy_log = open(os.path.join(work, "proxy.log"), "w")
        proxy = subprocess.Popen([sys.executable, "-u", os.path.join(HERE, "blackhole.py"), str(proxy_port),
                                  "127.0.0.1", str(redis_port)], stdout=proxy_log, stderr=subprocess.STDOUT)
        procs.append(proxy)
        wait("the proxy", lambda: "listening" in open(proxy_log.name).read())
        env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "PROGRESS_HOST": "127.0.0.1",
               "REDIS_URL": f"redis://127.0.0.1:{proxy_port}", "DATABASE_URL": f"{PG}/{db}",
               "PROGRESS_LOG_FORMAT": "json"}
        log = open(os.path.join(work, "progressd.log"), "w")
        procs.append(subprocess.Popen([args.bin], env=env, stdout=log, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        wait("progressd ready", lambda: '"status":"ok"' in urllib.request.urlopen(base + "/readyz").read().decode())
        ids = [f"probe-{i}" for i in range(10)]
        for i in ids:
            status, _ = request("PUT", f"{base}/progress/{i}", {"status": "running", "current": 0, "total": 10})
            assert status == 201, status
        proxy.send_signal(signal.SIGUSR1)
        wait("the black hole", lambda: "blackhole on" in open(proxy_log.name).read())
        blackholed = time.perf_counter()

        def cache_empty():
            text = urllib.request.urlopen(base + "/metrics").read().decode()
            return "progressd_read_cache_entries 0" in text.splitlines()

        wait("the read cache to step aside", cache_empty)
        print(f"read cache stepped aside {(time.perf_counter() - blackholed) * 1000:.0f} ms after the black hole")
        plan = [("PATCH" if n % 2 == 0 else "GET", ids[n // 2 + (5 if n % 2 else 0)]) for n in range(10)]
        results = [None] * len(plan)

        def send(n):
            method, id_ = plan[n]
            body = {"current": n} if method == "PATCH" else None
            results[n] = (method, id_) + request(method, f"{base}/progress/{id_}", body)

        if args.concurrent:
            threads = [threading.Thread(target=send, args=(n,)) for n in range(len(plan))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for n in range(len(plan)):
                send(n)
        mode = "all at once" if args.concurrent else "one after the other"
        print(f"first ten requests after Redis stopped answering ({mode}), {args.bin}:")
        for n, (method, id_, status, ms) in enumerate(results):
            print(f"  #{n + 1:<2} {method:<5} {id_:<8} {status}  {ms:8.1f} ms")
        print(f"slowest: {max(r[3] for r in results):.1f} ms; statuses: {sorted(set(r[2] for r in results))}")
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["psql", f"{PG}/postgres", "-XAtq", "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])


if __name__ == "__main__":
    sys.exit(main())
