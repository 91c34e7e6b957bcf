"""The synchronous client: a sender thread per `Client` writes coalesced updates.

A worker's calls (`update`, `child(...).update`) only merge fields into the
job's pending merge patch under a lock and return; the client's sender thread
sends that patch at most once per `min_interval`, retries what can be
retried, and logs (or, with `strict=True`, stores to raise) what still fails.
Terminal writes (`complete`, `fail`), `start` and `flush` skip the interval
and wait for their answer.
"""

from __future__ import annotations

import atexit
import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.parse
import weakref
from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

__all__ = ["Client", "Job", "Child", "ProgressError", "ConflictError", "TERMINAL_STATUSES"]

log = logging.getLogger("progressd")

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
# Answers worth another try: timeouts, rate limits, an unavailable store, and
# what a proxy in front says while progressd restarts.
RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
ERROR_MAX_CHARS = 8000
USER_AGENT = "progressd-python/0.1.0"

Fields = Dict[str, Any]


class ProgressError(Exception):
    """A write the server refused (or that could not be made), with its problem details."""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        problem: Optional[Mapping[str, Any]] = None,
        job_id: Optional[str] = None,
        method: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem: Dict[str, Any] = dict(problem or {})
        self.code: Optional[str] = self.problem.get("code")
        self.job_id = job_id
        self.method = method


class ConflictError(ProgressError):
    """409: the record has already finished (`conflict_terminal`)."""


_SCALARS = (int, float, str, bool, list, type(None))


def _merge_into(target: Fields, patch: Mapping[str, Any]) -> None:
    """Composes merge patch `patch` after `target` (in place), keeping nulls:
    sending the result once has the effect of sending both in turn."""
    for key, value in patch.items():
        if isinstance(value, dict) or (not isinstance(value, _SCALARS) and isinstance(value, Mapping)):
            current = target.get(key)
            if not isinstance(current, dict):
                current = target[key] = {}
            _merge_into(current, value)
        else:
            target[key] = value


def _copy(patch: Mapping[str, Any]) -> Fields:
    out: Fields = {}
    _merge_into(out, patch)
    return out


def error_value(error: Union[BaseException, str, Mapping[str, Any], None]) -> Any:
    """What `fail` sends as `error`: an exception becomes `{"type", "message"}`."""
    if error is None:
        return None
    if isinstance(error, BaseException):
        return {"type": type(error).__name__, "message": str(error)[:ERROR_MAX_CHARS]}
    if isinstance(error, str):
        return error[:ERROR_MAX_CHARS]
    return dict(error)


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Connection:
    """One keep-alive HTTP/1.1 connection (http.client), reopened after an error."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/path], got {base_url!r}")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: Optional[bytes] = None
    ) -> Tuple[int, http.client.HTTPMessage, bytes]:
        reused = self._conn is not None
        while True:
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                self._conn = cls(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request(method, self._prefix + path, body=body, headers=dict(headers))
                response = self._conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:
                    raise
                # A kept-alive connection the server had closed: once more on a new one.
                reused = False
            except BaseException:
                self.close()
                raise
        if response.will_close:
            self.close()
        return response.status, response.headers, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Outcome:
    """What one attempt at a write came to."""

    __slots__ = ("status", "record", "problem", "retry_after", "network_error")

    def __init__(
        self,
        status: Optional[int],
        record: Optional[Fields] = None,
        problem: Optional[Fields] = None,
        retry_after: Optional[float] = None,
        network_error: Optional[BaseException] = None,
    ) -> None:
        self.status = status
        self.record = record
        self.problem = problem
        self.retry_after = retry_after
        self.network_error = network_error


_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for client in list(_clients):
        try:
            client.close(timeout=client.timeout)
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("progressd: flushing at exit failed")


class Client:
    """A progressd client for workers.

    `base_url` is the server (`http://localhost:8080`), `token` a write token.
    `min_interval` (seconds) is how often each job's updates go out at most;
    `retry_for` bounds how long a write is retried (503, 429 honouring
    `Retry-After`; network errors with backoff) before it is logged and
    dropped (or, with `strict=True`, raised from the job's next call).
    """

    def __init__(
        self,
        base_url: str,
        token: Optional[str] = None,
        timeout: float = 5,
        *,
        min_interval: float = 0.5,
        retry_for: float = 30.0,
        strict: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = float(timeout)
        self.min_interval = float(min_interval)
        self.retry_for = float(retry_for)
        self.strict = strict
        _Connection(self.base_url, self.timeout)  # validates the URL now
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._jobs: List[Job] = []  # jobs with something to send or in flight
        self._thread: Optional[threading.Thread] = None
        self._closing = False
        _clients.add(self)
        if hasattr(os, "register_at_fork"):
            # A worker pool that forks (Celery's prefork) after the client was
            # made: the child gets fresh locks and its own sender thread.
            ref = weakref.ref(self)

            def after_fork_in_child() -> None:
                client = ref()
                if client is not None:
                    client._after_fork()

            os.register_at_fork(after_in_child=after_fork_in_child)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._jobs = []
        self._thread = None
        self._closing = False

    # -- public API ---------------------------------------------------------

    def job(self, job_id: str, **fields: Any) -> "Job":
        """A handle on job `job_id`. `fields` are what `start` (and `with`) PUT."""
        return Job(self, job_id, fields)

    def get(self, job_id: str) -> Optional[Fields]:
        """The record as the server holds it now (None for 404 and 410)."""
        status, _, data = _Connection(self.base_url, self.timeout).request(
            "GET", self._path(job_id), self._headers(None)
        )
        if status in (404, 410):
            return None
        if status != 200:
            raise ProgressError(
                f"GET {job_id}: {status} {data[:200]!r}", status=status, job_id=job_id, method="GET"
            )
        record: Fields = json.loads(data)
        return record

    def close(self, timeout: Optional[float] = None) -> None:
        """Sends what is pending (waiting at most `timeout` seconds), then stops the sender."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            for job in list(self._jobs):
                job._urgent = True
            self._closing = True
            self._cv.notify_all()
            while self._jobs and self._thread is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cv.wait(remaining)
        _clients.discard(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _path(self, job_id: str) -> str:
        return "/progress/" + urllib.parse.quote(job_id, safe="")

    def _headers(self, body: Optional[bytes]) -> Dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _schedule(self, job: "Job") -> None:
        """Called with the lock held when `job` has something new to send."""
        if self._closing:
            self._closing = False  # a write after close() reopens the client
        if job not in self._jobs:
            self._jobs.append(job)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="progressd-sender", daemon=True)
            self._thread.start()
        self._cv.notify_all()

    def _next(self) -> Optional[Tuple["Job", str, Fields, int]]:
        """With the lock held: waits for a job due to send, and takes its body."""
        while True:
            now = time.monotonic()
            wake: Optional[float] = None
            for job in self._jobs:
                if job._inflight or job._pending is None:
                    continue
                due = job._retry_at if job._urgent else max(job._next_at, job._retry_at)
                if due <= now:
                    body = job._pending
                    if job._create:
                        body = _copy(job._create_body or {})
                        _merge_into(body, job._pending)
                    job._pending = None
                    job._inflight = True
                    return job, ("PUT" if job._create else "PATCH"), body, job._queued
                wake = due if wake is None else min(wake, due)
            if not self._jobs and self._closing:
                return None
            self._cv.wait(None if wake is None else max(0.0, wake - now))

    def _run(self) -> None:
        conn = _Connection(self.base_url, self.timeout)
        try:
            while True:
                with self._cv:
                    taken = self._next()
                    if taken is None:
                        self._thread = None
                        self._cv.notify_all()
                        return
                job, method, body, seq = taken
                outcome = self._attempt(conn, method, job.id, body)
                with self._cv:
                    job._settle(method, body, seq, outcome)
                    if job._pending is None and not job._inflight and job in self._jobs:
                        self._jobs.remove(job)
                    self._cv.notify_all()
        finally:
            conn.close()

    def _attempt(self, conn: _Connection, method: str, job_id: str, body: Fields) -> _Outcome:
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            status, headers, payload = conn.request(method, self._path(job_id), self._headers(data), data)
        except (OSError, http.client.HTTPException) as e:
            return _Outcome(None, network_error=e)
        parsed: Optional[Fields] = None
        try:
            value = json.loads(payload) if payload else None
            parsed = value if isinstance(value, dict) else None
        except ValueError:
            parsed = None
        if 200 <= status < 300:
            return _Outcome(status, record=parsed)
        return _Outcome(status, problem=parsed, retry_after=_retry_after(headers.get("Retry-After")))


class Job:
    """One job's progress. Every method is safe to call from any thread."""

    def __init__(self, client: Client, job_id: str, fields: Mapping[str, Any]) -> None:
        self.client = client
        self.id = job_id
        self._initial: Fields = dict(fields)
        # All below is guarded by client._cv.
        self._pending: Optional[Fields] = None
        self._create = False  # the next write is the PUT of `start`
        self._create_body: Optional[Fields] = None  # a PUT that failed: resent with what follows
        self._urgent = False  # skip min_interval: start, a terminal write, flush
        self._next_at = 0.0  # min_interval after the last write
        self._retry_at = 0.0
        self._failing_since: Optional[float] = None
        self._attempts = 0
        self._inflight = False
        self._queued = 0  # updates merged so far
        self._settled = 0  # updates sent, or given up on
        self._error: Optional[ProgressError] = None  # raised from the job's next call
        self._finished = False  # terminal accepted, or 409: later writes are dropped
        self._last: Optional[Fields] = None

    # -- writes -------------------------------------------------------------

    def start(self, **fields: Any) -> "Job":
        """PUTs the record as `running` with `fields` (PUT replaces the client fields)."""
        body = {"status": "running", **self._initial, **fields}
        with self.client._cv:
            self._raise_stored()
            self._finished = False
            self._pending = _copy(body)
            self._create = True
            self._create_body = None
            self._urgent = True
            self._queued += 1
            self.client._schedule(self)
        return self

    def update(self, **fields: Any) -> None:
        """Merges `fields` into the next PATCH (sent within `min_interval`); never blocks on the network."""
        self._enqueue(fields)

    def child(self, child_id: str) -> "Child":
        """Child `child_id`: its updates go into this job's PATCH as `children.<child_id>`."""
        return Child(self, child_id)

    def complete(self, **fields: Any) -> Optional[Fields]:
        """Sends what is pending, then PATCHes `status: completed` with `fields`; returns the record."""
        return self._finish({"status": "completed", **fields})

    def fail(self, error: Union[BaseException, str, Mapping[str, Any], None] = None, **fields: Any) -> Optional[Fields]:
        """PATCHes `status: failed` with `error` (an exception becomes `{"type", "message"}`)."""
        body: Fields = {"status": "failed", **fields}
        if error is not None:
            body["error"] = error_value(error)
        return self._finish(body)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Sends what is pending now and waits for it (True), or `timeout` seconds (False)."""
        with self.client._cv:
            target = self._queued
            if self._pending is not None:
                self._urgent = True
                self.client._cv.notify_all()
            done = self.client._cv.wait_for(lambda: self._settled >= target, timeout)
            self._raise_stored()
            return done

    # -- state --------------------------------------------------------------

    @property
    def record(self) -> Optional[Fields]:
        """The record from the last successful write's response."""
        with self.client._cv:
            return self._last

    @property
    def cancel_requested(self) -> bool:
        """Whether the last write's response had a non-null `cancel_requested_at`."""
        last = self.record
        return bool(last and last.get("cancel_requested_at") is not None)

    @property
    def finished(self) -> bool:
        """A terminal status was accepted, or the server answered 409 (the record had finished)."""
        with self.client._cv:
            return self._finished

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> "Job":
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.finished:
            return  # the block completed or failed the job itself
        if exc is None:
            self.complete()
            return
        try:
            self.fail(exc)
        except Exception:
            log.exception("progressd: could not mark job %s failed", self.id)

    # -- internals ----------------------------------------------------------

    def _raise_stored(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _enqueue(self, fields: Mapping[str, Any], urgent: bool = False) -> None:
        with self.client._lock:  # the condition's lock; `with` on it directly is the cheaper call
            if self._error is not None:
                self._raise_stored()
            if self._finished:
                log.debug("progressd: job %s has finished; update dropped", self.id)
                return
            if self._pending is None:
                self._pending = _copy(fields)
                self._queued += 1
                self.client._schedule(self)
            else:
                _merge_into(self._pending, fields)
                self._queued += 1
            if urgent:
                self._urgent = True
                self.client._cv.notify_all()

    def _finish(self, body: Fields) -> Optional[Fields]:
        self.flush()  # what was pending goes first, in its own PATCH
        self._enqueue(body, urgent=True)
        self.flush()
        return self.record

    def _settle(self, method: str, body: Fields, seq: int, outcome: _Outcome) -> None:
        """With the lock held: what a write came to."""
        client = self.client
        now = time.monotonic()
        self._inflight = False
        status = outcome.status
        if status is not None and 200 <= status < 300:
            self._last = outcome.record
            self._create = False
            self._create_body = None
            self._failing_since = None
            self._attempts = 0
            self._settled = seq
            self._next_at = now + client.min_interval
            if self._pending is None:
                self._urgent = False
            if body.get("status") in TERMINAL_STATUSES:
                self._finished = True
            return
        retryable = status is None or status in RETRYABLE_STATUSES
        if retryable:
            if self._failing_since is None:
                self._failing_since = now
            self._attempts += 1
            if outcome.retry_after is not None:
                delay = outcome.retry_after
            else:
                delay = min(5.0, 0.1 * 2 ** (self._attempts - 1)) * random.uniform(0.5, 1.0)
            if now + delay - self._failing_since <= client.retry_for:
                # Again later, with whatever has been merged since on top.
                if self._pending is not None:
                    _merge_into(body, self._pending)
                self._pending = body
                self._retry_at = now + delay
                return
        what = f"{method} {self.id}"
        if status is None:
            detail = f"{type(outcome.network_error).__name__}: {outcome.network_error}"
        else:
            problem = outcome.problem or {}
            detail = f"{status} {problem.get('code') or ''} {problem.get('detail') or ''}".strip()
        self._failing_since = None
        self._attempts = 0
        self._settled = seq
        if method == "PUT" and retryable:
            # The record may not exist: the next write is a PUT with this body under it.
            self._create = True
            self._create_body = body
        if status == 409:
            self._finished = True
            log.warning("progressd: %s: the record has already finished (%s); not retried", what, detail)
            if client.strict:
                self._error = ConflictError(f"{what}: {detail}", status=status, problem=outcome.problem, job_id=self.id, method=method)
            return
        if retryable:
            message = f"{what} still failing after {client.retry_for:g} s: {detail}"
            if client.strict:
                self._error = ProgressError(message, status=status, problem=outcome.problem, job_id=self.id, method=method)
            else:
                log.warning("progressd: %s; dropped in favour of the next update", message)
            return
        # Any other 4xx (and 500): a programming error; raised from the job's next call.
        self._error = ProgressError(f"{what}: {detail}", status=status, problem=outcome.problem, job_id=self.id, method=method)
        log.error("progressd: %s", self._error)


class Child:
    """A child of a job; its fields go into the parent's PATCH as `children.<id>`."""

    def __init__(self, job: Job, child_id: str) -> None:
        self.job = job
        self.id = child_id

    def update(self, **fields: Any) -> None:
        """Merges `fields` into this child in the parent's next PATCH."""
        self.job._enqueue({"children": {self.id: fields}})

    def complete(self, **fields: Any) -> None:
        """`update(status="completed", ...)`: the child's status; the parent keeps running."""
        self.update(status="completed", **fields)

    def fail(self, error: Union[BaseException, str, None] = None, **fields: Any) -> None:
        """`update(status="failed", message=...)`: children have no `error` field, so the message says it."""
        if error is not None and "message" not in fields:
            value = error_value(error)
            fields["message"] = (f"{value['type']}: {value['message']}" if isinstance(value, dict) else str(value))[:2000]
        self.update(status="failed", **fields)
