#!/usr/bin/env python3
# bench/half_headers.py: the slow-client check of issue 19 (see bench/README.md, "half_headers.py").
"""Opens N connections that each send half a request head to a running
progressd, and reports the server's RSS and open fds, and GET /healthz
latency, before, while held, and after the header timeout.
usage: halfheads.py PID PORT [N] [WAIT_AFTER_S]"""
import os, socket, sys, time, urllib.request

pid, port = int(sys.argv[1]), int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
after = float(sys.argv[4]) if len(sys.argv) > 4 else 12

def rss_kb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))
def get_ms():
    out = []
    for _ in range(5):
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            r.read()
        out.append((time.perf_counter() - t) * 1000)
    return " ".join(f"{x:.1f}" for x in out)
def report(what):
    print(f"{what:<28} rss={rss_kb()/1024:7.1f} MiB  fds={fds():5}  GET /healthz ms: {get_ms()}", flush=True)

report("before")
socks = []
t0 = time.time()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: slow")
    socks.append(s)
print(f"opened {n} half-sent heads in {time.time()-t0:.2f} s", flush=True)
time.sleep(1.5)
report(f"held ({n}, t+{time.time()-t0:.1f} s)")
while time.time() - t0 < after:
    time.sleep(0.5)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        closed += s.recv(1) == b""
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
report(f"t+{time.time()-t0:.1f} s, {closed} closed")
for s in socks:
    s.close()
