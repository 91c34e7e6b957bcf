"""Fixtures: the real progressd binary on a free port (memory store, and Redis),
and a fault-injecting HTTP proxy in front of it.

The binary is `$PROGRESSD_BIN`, else the repository's target/release/progressd
when it exists, else target/debug/progressd.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
WRITE_TOKEN = "test-write-token"
READ_TOKEN = "test-read-token"


def binary() -> Path:
    configured = os.environ.get("PROGRESSD_BIN")
    if configured:
        path = Path(configured)
    else:
        release = REPO / "target" / "release" / "progressd"
        path = release if release.exists() else REPO / "target" / "debug" / "progressd"
    if not path.exists():
        pytest.fail(f"no progressd binary at {path}: build it (cargo build --bin progressd) or set PROGRESSD_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Server:
    def __init__(self, store: str, extra_env: Optional[Dict[str, str]] = None) -> None:
        self.store = store
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORT": str(self.port),
            "PROGRESS_HOST": "127.0.0.1",
            "PROGRESS_LOG_LEVEL": "warn",
            "PROGRESS_WRITE_TOKENS": WRITE_TOKEN,
            "PROGRESS_READ_TOKENS": READ_TOKEN,
        }
        if store == "redis":
            env["REDIS_URL"] = "redis://127.0.0.1:6379"
            env["PROGRESS_KEY_PREFIX"] = f"clients-py-{uuid.uuid4().hex[:12]}:"
        env.update(extra_env or {})
        self.process = subprocess.Popen([str(binary())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                self.stop()
                raise RuntimeError(f"progressd did not start ({store}): {err}")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: Any = None, token: str = WRITE_TOKEN) -> Tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        return response.status, (json.loads(raw) if raw else None)

    def record(self, job_id: str) -> Dict[str, Any]:
        status, body = self.request("GET", f"/progress/{job_id}", token=READ_TOKEN)
        assert status == 200, (status, body)
        assert isinstance(body, dict)
        return body

    def requests_seen(self, method: str) -> int:
        """`http_requests_total` for `method` on /progress/{id}, all statuses, from /metrics."""
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0
        for line in text.splitlines():
            if not line.startswith("http_requests_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
            if labels.get("method") == method and labels.get("route") == "/progress/{id}":
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session", params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    if request.param == "redis" and not redis_up():
        if os.environ.get("PROGRESSD_REQUIRE_REDIS"):
            pytest.fail("Redis is not answering on 127.0.0.1:6379 and PROGRESSD_REQUIRE_REDIS is set")
        pytest.skip("Redis is not answering on 127.0.0.1:6379: the Redis-backed runs are skipped")
    s = Server(request.param)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def memory_server() -> Iterator[Server]:
    s = Server("memory")
    yield s
    s.stop()


@pytest.fixture
def job_id(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9]", "-", request.node.name)[:60]
    return f"py-{name}-{uuid.uuid4().hex[:8]}"


class FaultProxy:
    """An HTTP proxy in front of `upstream` that can answer 503 (with
    `Retry-After`) instead of forwarding, and records what it answered."""

    def __init__(self, upstream: Server) -> None:
        self.upstream = upstream
        self.fail_until = 0.0  # monotonic time until which writes get 503
        self.retry_after = "1"
        self.status = 503
        self.inject: Dict[str, Any] = {}  # fields added to every forwarded JSON response
        self.log: List[Tuple[float, str, str, int]] = []  # (time, method, path, status)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command != "GET" and time.monotonic() < proxy.fail_until:
                    payload = json.dumps({"type": "urn:progressd:problem:storage_unavailable", "status": proxy.status, "code": "storage_unavailable", "title": "injected", "detail": "injected by the test proxy"}).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/problem+json")
                    self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    proxy.record(self.command, self.path, proxy.status)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                conn.close()
                if proxy.inject and response.status < 300 and payload:
                    data = json.loads(payload)
                    data.update(proxy.inject)
                    payload = json.dumps(data).encode()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                proxy.record(self.command, self.path, response.status)

            do_GET = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((time.monotonic(), method, path, status))

    def answered(self, status: int, method: Optional[str] = None) -> List[float]:
        with self.lock:
            return [t for t, m, _, s in self.log if s == status and (method is None or m == method)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(server: Server) -> Iterator[FaultProxy]:
    p = FaultProxy(server)
    yield p
    p.close()
