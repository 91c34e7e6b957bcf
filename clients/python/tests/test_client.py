"""The Python client against the real binary: every check reads the record
the server holds (or its /metrics), not the client's own idea of it."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from conftest import READ_TOKEN, WRITE_TOKEN, FaultProxy, Server, free_port
from progressd import AsyncClient, Client, ConflictError, ProgressError


def client_for(server: Server, **kwargs: object) -> Client:
    return Client(server.base_url, token=WRITE_TOKEN, **kwargs)  # type: ignore[arg-type]


def test_with_block_creates_running_then_completes(server: Server, job_id: str) -> None:
    client = client_for(server)
    with client.job(job_id, total=10, stage="IMPORT") as job:
        job.flush()
        started = server.record(job_id)
        assert started["status"] == "running"
        assert started["total"] == 10 and started["stage"] == "IMPORT"
        for i in range(10):
            job.update(current=i + 1, message=f"chunk {i + 1}")
    record = server.record(job_id)
    assert record["status"] == "completed"
    assert record["current"] == 10 and record["total"] == 10
    assert record["message"] == "chunk 10"
    assert record["progress"] == 100
    assert job.record is not None and job.record["status"] == "completed"


def test_tight_loop_is_coalesced_and_ends_with_the_last_value(server: Server, job_id: str) -> None:
    client = client_for(server)
    job = client.job(job_id, total=100_000).start()
    job.flush()
    before = server.requests_seen("PATCH")
    started = time.monotonic()
    for i in range(100_000):
        job.update(current=i)
    loop_seconds = time.monotonic() - started
    job.flush()
    patches = server.requests_seen("PATCH") - before
    elapsed = time.monotonic() - started
    # One per min_interval (0.5 s), plus the flush's own.
    assert 1 <= patches <= 2 + elapsed / 0.5, (patches, elapsed)
    assert server.record(job_id)["current"] == 99_999
    job.complete()
    record = server.record(job_id)
    assert record["status"] == "completed" and record["current"] == 99_999
    print(f"100,000 updates in {loop_seconds:.3f} s, {patches} PATCHes over {elapsed:.3f} s")


def test_updates_within_the_interval_merge_into_one_patch(server: Server, job_id: str) -> None:
    client = client_for(server)
    job = client.job(job_id).start(metadata={"kept": True})
    job.flush()
    before = server.requests_seen("PATCH")
    job.update(stage="A")
    job.update(message="first", metadata={"a": 1})
    job.update(stage="B", metadata={"b": 2})
    job.update(metadata={"kept": None})  # merge patch: null removes the key
    job.flush()
    assert server.requests_seen("PATCH") - before == 1
    record = server.record(job_id)
    assert record["stage"] == "B" and record["message"] == "first"
    assert record["metadata"] == {"a": 1, "b": 2}


def test_updates_are_sent_at_most_once_per_min_interval(server: Server, job_id: str) -> None:
    client = client_for(server, min_interval=0.2)
    job = client.job(job_id, total=100).start()
    job.flush()
    before = server.requests_seen("PATCH")
    started = time.monotonic()
    for i in range(100):  # one update per 10 ms for a second
        job.update(current=i + 1)
        time.sleep(0.01)
    job.flush()
    elapsed = time.monotonic() - started
    patches = server.requests_seen("PATCH") - before
    assert 2 <= patches <= 2 + elapsed / 0.2, (patches, elapsed)
    assert server.record(job_id)["current"] == 100


def test_an_exception_fails_the_job_and_is_reraised(server: Server, job_id: str) -> None:
    client = client_for(server)
    with pytest.raises(ValueError, match="bad chunk 3"):
        with client.job(job_id, total=5) as job:
            job.update(current=3)
            raise ValueError("bad chunk 3")
    record = server.record(job_id)
    assert record["status"] == "failed"
    assert record["error"] == {"type": "ValueError", "message": "bad chunk 3"}
    assert record["current"] == 3  # what was pending went out first


def test_fail_takes_a_string(server: Server, job_id: str) -> None:
    client = client_for(server)
    job = client.job(job_id).start()
    job.fail("disk full")
    assert server.record(job_id)["error"] == "disk full"
    assert server.record(job_id)["status"] == "failed"


def test_503_with_retry_after_is_retried_and_nothing_raises(server: Server, proxy: FaultProxy, job_id: str) -> None:
    client = Client(proxy.base_url, token=WRITE_TOKEN, min_interval=0.1)
    job = client.job(job_id, total=20).start()
    job.flush()
    proxy.retry_after = "1"
    proxy.fail_until = time.monotonic() + 2.2
    for i in range(20):
        job.update(current=i + 1)
        time.sleep(0.05)
    record = job.complete(result={"ok": True})
    assert record is not None and record["status"] == "completed"
    held = server.record(job_id)
    assert held["status"] == "completed" and held["current"] == 20 and held["result"] == {"ok": True}
    refused = proxy.answered(503)
    assert 2 <= len(refused) <= 4, refused  # about one try per Retry-After second, not a busy loop
    gaps = [b - a for a, b in zip(refused, refused[1:])]
    assert all(gap >= 0.9 for gap in gaps), gaps


def test_what_still_fails_is_logged_and_dropped(
    server: Server, proxy: FaultProxy, job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(proxy.base_url, token=WRITE_TOKEN, min_interval=0.1, retry_for=0.8)
    job = client.job(job_id).start()
    job.flush()
    proxy.retry_after = "0.3"
    proxy.fail_until = time.monotonic() + 60
    with caplog.at_level(logging.WARNING, logger="progressd"):
        job.update(current=1, message="lost")
        assert job.flush(timeout=5) is True  # given up on, not raised
    assert any("dropped in favour of the next update" in r.getMessage() for r in caplog.records), caplog.text
    assert server.record(job_id).get("current") is None
    proxy.fail_until = 0
    job.update(current=2)
    job.flush()
    assert server.record(job_id)["current"] == 2


def test_strict_raises_what_still_fails(server: Server, proxy: FaultProxy, job_id: str) -> None:
    client = Client(proxy.base_url, token=WRITE_TOKEN, retry_for=0.5, strict=True)
    job = client.job(job_id).start()
    job.flush()
    proxy.retry_after = "0.2"
    proxy.fail_until = time.monotonic() + 60
    job.update(current=1)
    with pytest.raises(ProgressError) as e:
        job.flush()
    assert e.value.status == 503 and e.value.code == "storage_unavailable"


def test_network_errors_never_reach_the_job(caplog: pytest.LogCaptureFixture) -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", retry_for=0.5)  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="progressd"):
        with client.job("py-nobody-listens", total=3) as job:
            for i in range(3):
                job.update(current=i + 1)
    assert "still failing" in caplog.text


def test_409_on_a_finished_job_is_reported_not_retried(
    server: Server, job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(server)
    with client.job(job_id, total=1) as job:
        job.update(current=1)
    before = server.requests_seen("PATCH")
    late = client.job(job_id)
    with caplog.at_level(logging.WARNING, logger="progressd"):
        late.update(message="too late")
        late.flush()
    assert server.requests_seen("PATCH") - before == 1  # one try, no retry
    assert late.finished
    assert "already finished" in caplog.text
    late.update(message="dropped without a request")
    late.flush()
    assert server.requests_seen("PATCH") - before == 1
    assert server.record(job_id)["status"] == "completed"
    assert server.record(job_id).get("message") is None

    strict = client_for(server, strict=True).job(job_id)
    strict.update(message="too late")
    with pytest.raises(ConflictError) as e:
        strict.flush()
    assert e.value.status == 409 and e.value.code == "conflict_terminal"


def test_tokens(server: Server, job_id: str) -> None:
    for token in (None, "wrong", READ_TOKEN):
        client = Client(server.base_url, token=token)
        with pytest.raises(ProgressError) as e:
            with client.job(job_id, total=1) as job:
                job.update(current=1)
        assert e.value.status == 401, (token, e.value)
        assert e.value.code == "unauthorized"
    status, _ = server.request("GET", f"/progress/{job_id}", token=READ_TOKEN)
    assert status == 404
    client = client_for(server)
    with client.job(job_id, total=1) as job:
        job.update(current=1)
    assert server.record(job_id)["status"] == "completed"


def test_other_4xx_are_programming_errors_and_raise(server: Server, job_id: str) -> None:
    client = client_for(server)
    job = client.job(job_id).start()
    job.flush()
    job.update(colour="red")
    with pytest.raises(ProgressError) as e:
        job.flush()
    assert e.value.status == 422 and e.value.problem.get("field") == "colour"
    missing = client.job(job_id + "-never-created")
    missing.update(current=1)
    with pytest.raises(ProgressError) as e:
        missing.flush()
    assert e.value.status == 404


def test_children_coalesce_into_the_parent_patch(server: Server, job_id: str) -> None:
    client = client_for(server)
    job = client.job(job_id).start()
    job.flush()
    before = server.requests_seen("PATCH")
    ch1, ch2 = job.child("ch1"), job.child("ch2")
    ch1.update(title="Chapter 1", progress=50)
    ch2.update(title="Chapter 2", current=1, total=4)
    ch1.update(message="half way")
    job.update(stage="CHAPTERS")
    job.flush()
    assert server.requests_seen("PATCH") - before == 1
    record = server.record(job_id)
    assert record["stage"] == "CHAPTERS"
    assert record["children"]["ch1"]["title"] == "Chapter 1"
    assert record["children"]["ch1"]["progress"] == 50
    assert record["children"]["ch1"]["message"] == "half way"
    assert record["children"]["ch2"]["current"] == 1 and record["children"]["ch2"]["total"] == 4
    assert record["progress"] == 37.5  # the mean of 50 and 25
    ch1.complete(progress=100)
    ch2.update(current=4)
    job.complete()
    record = server.record(job_id)
    assert record["children"]["ch1"]["status"] == "completed"
    assert record["children"]["ch2"]["current"] == 4
    assert record["children"]["ch1"]["title"] == "Chapter 1"  # merged, not replaced
    assert record["status"] == "completed"


def test_cancel_requested_reads_the_last_response(server: Server, job_id: str) -> None:
    client = client_for(server)
    job = client.job(job_id).start()
    job.flush()
    assert job.record is not None
    if "cancel_requested_at" not in job.record:
        pytest.skip("this progressd binary has no cancel_requested_at in its records (cancellation has not landed)")
    assert job.cancel_requested is False
    status, _ = server.request("POST", f"/progress/{job_id}/cancel", {"reason": "the user asked"})
    assert status == 202
    job.update(current=1)
    job.flush()
    assert job.cancel_requested is True, "the next write's response carries the request"
    job.update(status="cancelled", message="stopped on request")
    job.flush()
    record = server.record(job_id)
    assert record["status"] == "cancelled" and record["cancel_reason"] == "the user asked"


def test_cancel_requested_from_a_response_that_has_it(server: Server, proxy: FaultProxy, job_id: str) -> None:
    client = Client(proxy.base_url, token=WRITE_TOKEN)
    job = client.job(job_id).start()
    job.flush()
    assert job.cancel_requested is False
    proxy.inject = {"cancel_requested_at": "2026-12-06T12:00:00.000Z", "cancel_reason": "user"}
    job.update(current=1)
    job.flush()
    assert job.cancel_requested is True
    proxy.inject = {"cancel_requested_at": None}
    job.update(current=2)
    job.flush()
    assert job.cancel_requested is False


def test_async_client(server: Server, job_id: str) -> None:
    async def main() -> None:
        client = AsyncClient(server.base_url, token=WRITE_TOKEN)
        async with client.job(job_id, total=1000) as job:
            for i in range(1000):
                await job.update(current=i + 1)
                if i % 100 == 0:
                    await asyncio.sleep(0.01)
            await job.child("a").update(progress=10)
        record = await client.get(job_id)
        assert record is not None and record["status"] == "completed"

        with pytest.raises(RuntimeError):
            async with client.job(job_id + "-b") as job:
                await job.update(current=1)
                raise RuntimeError("async boom")
        await client.aclose()

    asyncio.run(main())
    record = server.record(job_id)
    assert record["current"] == 1000 and record["children"]["a"]["progress"] == 10
    failed = server.record(job_id + "-b")
    assert failed["status"] == "failed" and failed["error"] == {"type": "RuntimeError", "message": "async boom"}


def test_a_failed_put_is_sent_again_with_what_followed(server: Server, proxy: FaultProxy, job_id: str) -> None:
    client = Client(proxy.base_url, token=WRITE_TOKEN, retry_for=0.3, min_interval=0.1)
    proxy.retry_after = "0.2"
    proxy.fail_until = time.monotonic() + 1.0
    job = client.job(job_id, total=7, stage="S").start()
    job.flush()  # the PUT was given up on
    proxy.fail_until = 0
    job.update(current=3)
    job.flush()
    record = server.record(job_id)
    assert record["status"] == "running" and record["total"] == 7 and record["stage"] == "S" and record["current"] == 3


def test_a_client_made_before_a_fork_works_in_the_child(server: Server, job_id: str) -> None:
    import multiprocessing

    client = client_for(server)
    parent = client.job(job_id + "-parent").start()
    parent.update(current=1)  # the parent's sender thread is running (and may hold the lock) at the fork

    def child() -> None:
        with client.job(job_id, total=2) as job:
            job.update(current=2)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(20)
    assert process.exitcode == 0
    record = server.record(job_id)
    assert record["status"] == "completed" and record["current"] == 2
    parent.complete()
    assert server.record(job_id + "-parent")["status"] == "completed"


def test_429_with_retry_after_is_retried(server: Server, proxy: FaultProxy, job_id: str) -> None:
    client = Client(proxy.base_url, token=WRITE_TOKEN, min_interval=0.1)
    job = client.job(job_id).start()
    job.flush()
    proxy.status, proxy.retry_after = 429, "0.3"
    proxy.fail_until = time.monotonic() + 0.5
    job.update(current=7)
    job.flush()
    refused = proxy.answered(429)
    assert 1 <= len(refused) <= 3, refused
    assert all(b - a >= 0.25 for a, b in zip(refused, refused[1:]))
    assert server.record(job_id)["current"] == 7
