#!/usr/bin/env python3
"""bench/stream_all.py: watching many records (issue 19).

N records (default 1000) are each updated once a second (PATCH, by a writer
process of its own over WRITERS keep-alive connections). Against that load,
one at a time, for DURATION seconds each, after a warm-up:

  writes only     the baseline: no reader
  one stream      one GET /progress?prefix=… with Accept: text/event-stream
  N streams       N GET /progress/{id}/events, one per record
  poll first page the dashboard before issue 19: GET /progress?prefix=…&limit=50
                  every 5 s (its default: one page of 50, gzip as a browser asks)
  poll all        the listing of all N records every 5 s (pages of 500, gzip)

For each: the server's CPU time over the window (utime+stime from
/proc/<pid>/stat), less the baseline's, and the bytes the readers received,
both scaled to a minute, and the events received.

Usage: bench/stream_all.py [--bin target/release/progressd] [--records 1000]
       [--duration 20] [--redis redis://127.0.0.1:6379]
Build first: cargo build --release --bin progressd
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def read_response(reader):
    """Status, headers and body of one HTTP/1.1 response; bytes read in all."""
    head = await reader.readuntil(b"\r\n\r\n")
    total = len(head)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
        total += len(body)
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            total += len(size_line) + len(chunk)
            body += chunk[:-2]
            if size == 0:
                break
    return status, headers, body, total


async def request(port, method, path, body=None, headers=None, conn=None):
    reader, writer = conn or await asyncio.open_connection("127.0.0.1", port)
    data = body.encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    await writer.drain()
    result = await read_response(reader)
    if conn is None:
        writer.close()
    return result


# ---- the writer process -----------------------------------------------------------


async def write_loop(port, ids, stop_at, counts):
    conn = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while time.monotonic() < stop_at:
        started = time.monotonic()
        for i in ids:
            n += 1
            status, _, _, _ = await request(port, "PATCH", f"/progress/{i}",
                                            json.dumps({"current": n, "message": f"step {n}"}), conn=conn)
            counts[0 if status == 200 else 1] += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def writer_main(port, prefix, records, writers, seconds):
    async def main():
        counts = [0, 0]
        ids = [f"{prefix}{i}" for i in range(records)]
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(write_loop(port, ids[w::writers], stop_at, counts) for w in range(writers)))
        print(json.dumps({"ok": counts[0], "failed": counts[1]}), flush=True)

    asyncio.run(main())


# ---- readers ----------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.bytes = 0
        self.events = 0
        self.counting = False


async def stream_reader(port, path, counter, headers=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: bench", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            if counter.counting:
                counter.bytes += len(data)
                counter.events += data.count(b"\nevent: ")  + data.startswith(b"event: ")
    finally:
        writer.close()


async def poller(port, paths, counter, every):
    conn = await asyncio.open_connection("127.0.0.1", port)
    while True:
        started = time.monotonic()
        for base in paths:
            cursor = None
            while True:
                path = base + (f"&cursor={cursor}" if cursor else "")
                status, headers, body, total = await request(port, "GET", path, headers={"Accept-Encoding": "gzip"},
                                                             conn=conn)
                if counter.counting:
                    counter.bytes += total
                    counter.events += 1
                if headers.get("content-encoding") == "gzip":
                    import gzip
                    body = gzip.decompress(body)
                cursor = json.loads(body).get("next_cursor") if base.endswith("limit=500") else None
                if not cursor:
                    break
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


async def measure(pid, name, start_readers, warmup, duration):
    counter = Counter()
    tasks = start_readers(counter)
    await asyncio.sleep(warmup)
    counter.counting = True
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(duration)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    counter.counting = False
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1)
    scale = 60.0 / (t1 - t0)
    return {"name": name, "cpu_s_per_min": (cpu1 - cpu0) * scale, "bytes_per_min": counter.bytes * scale,
            "events_per_min": counter.events * scale}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/progressd")
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=4)
    ap.add_argument("--writers", type=int, default=20)
    ap.add_argument("--redis")
    ap.add_argument("--writer-only", nargs=4, metavar=("PORT", "PREFIX", "RECORDS", "SECONDS"))
    args = ap.parse_args()
    if args.writer_only:
        port, prefix, records, seconds = args.writer_only
        writer_main(int(port), prefix, int(records), args.writers, float(seconds))
        return

    port = free_port()
    env = {"PATH": os.environ["PATH"], "PORT": str(port), "PROGRESS_HOST": "127.0.0.1", "PROGRESS_LOG_LEVEL": "warn"}
    if args.redis:
        env["REDIS_URL"] = args.redis
        env["PROGRESS_KEY_PREFIX"] = f"bench-stream-{os.getpid()}:"
    server = subprocess.Popen([args.bin], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = "stream-"
    n = args.records
    scenarios = 5
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

        async def seed():
            conn = await asyncio.open_connection("127.0.0.1", port)
            for i in range(n):
                await request(port, "PUT", f"/progress/{prefix}{i}", json.dumps({"status": "running", "total": 1000000}),
                              conn=conn)
            await request(port, "PUT", "/progress/elsewhere", json.dumps({"status": "running"}), conn=conn)

        asyncio.run(seed())
        seconds = scenarios * (args.duration + args.warmup + 1) + 10
        writer = subprocess.Popen([sys.executable, __file__, "--writers", str(args.writers), "--writer-only", str(port),
                                   prefix, str(n), str(seconds)], stdout=subprocess.PIPE, text=True)

        def spawn(coros):
            return [asyncio.ensure_future(c) for c in coros]

        plans = [
            ("writes only (baseline)", lambda c: []),
            ("one multi-record stream", lambda c: spawn([stream_reader(port, f"/progress?prefix={prefix}", c)])),
            (f"{n} single-record streams",
             lambda c: spawn([stream_reader(port, f"/progress/{prefix}{i}/events", c) for i in range(n)])),
            ("dashboard polling (first 50, every 5 s)",
             lambda c: spawn([poller(port, [f"/progress?prefix={prefix}&limit=50"], c, 5)])),
            (f"polling all {n} (pages of 500, every 5 s)",
             lambda c: spawn([poller(port, [f"/progress?prefix={prefix}&limit=500"], c, 5)])),
        ]

        async def run_all():
            await asyncio.sleep(2)  # the writer reaches its rate
            results = []
            for name, plan in plans:
                results.append(await measure(server.pid, name, plan, args.warmup, args.duration))
                print(f"# {results[-1]}", file=sys.stderr, flush=True)
            return results

        results = asyncio.run(run_all())
        writer.wait()
        writes = json.loads(writer.stdout.read().strip() or "{}")
        base = results[0]["cpu_s_per_min"]
        load = os.getloadavg()
        print(f"records {n}, each updated once a second; {args.duration:g} s windows scaled to a minute; "
              f"store {'redis' if args.redis else 'memory'}; writes {writes}; load average {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f} on {os.cpu_count()} cores")
        print()
        print("| readers | server CPU s/min | CPU s/min over baseline | bytes received/min | events (or responses)/min |")
        print("|---|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['name']} | {r['cpu_s_per_min']:.2f} | {r['cpu_s_per_min'] - base:+.2f} | "
                  f"{r['bytes_per_min'] / 1e6:.2f} MB | {r['events_per_min']:.0f} |")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
