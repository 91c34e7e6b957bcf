"""The asyncio variant: the same jobs, awaited.

`AsyncClient` drives a `Client` whose sender thread does the network I/O, so
`await job.update(...)` only merges fields (microseconds, never blocks the
event loop) and the waits (`complete`, `fail`, `flush`) run in the loop's
default executor.
"""

from __future__ import annotations

import asyncio
import functools
from types import TracebackType
from typing import Any, Callable, Mapping, Optional, Type, TypeVar, Union

from ._client import Child, Client, Fields, Job

__all__ = ["AsyncClient", "AsyncJob", "AsyncChild"]

T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


class AsyncClient:
    """`Client` for asyncio workers; same arguments."""

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
        self.sync = Client(base_url, token, timeout, min_interval=min_interval, retry_for=retry_for, strict=strict)

    def job(self, job_id: str, **fields: Any) -> "AsyncJob":
        return AsyncJob(self.sync.job(job_id, **fields))

    async def get(self, job_id: str) -> Optional[Fields]:
        return await _in_thread(self.sync.get, job_id)

    async def aclose(self, timeout: Optional[float] = None) -> None:
        await _in_thread(self.sync.close, timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncJob:
    """`Job`, awaited. `async with client.job(id, total=10) as job:` starts it,
    completes it, or fails it with the exception (re-raised)."""

    def __init__(self, job: Job) -> None:
        self.sync = job
        self.id = job.id

    async def start(self, **fields: Any) -> "AsyncJob":
        self.sync.start(**fields)
        return self

    async def update(self, **fields: Any) -> None:
        self.sync.update(**fields)

    def child(self, child_id: str) -> "AsyncChild":
        return AsyncChild(self.sync.child(child_id))

    async def complete(self, **fields: Any) -> Optional[Fields]:
        return await _in_thread(self.sync.complete, **fields)

    async def fail(
        self, error: Union[BaseException, str, Mapping[str, Any], None] = None, **fields: Any
    ) -> Optional[Fields]:
        return await _in_thread(self.sync.fail, error, **fields)

    async def flush(self, timeout: Optional[float] = None) -> bool:
        return await _in_thread(self.sync.flush, timeout)

    @property
    def record(self) -> Optional[Fields]:
        return self.sync.record

    @property
    def cancel_requested(self) -> bool:
        return self.sync.cancel_requested

    @property
    def finished(self) -> bool:
        return self.sync.finished

    async def __aenter__(self) -> "AsyncJob":
        return await self.start()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await _in_thread(self.sync.__exit__, exc_type, exc, tb)


class AsyncChild:
    def __init__(self, child: Child) -> None:
        self.sync = child
        self.id = child.id

    async def update(self, **fields: Any) -> None:
        self.sync.update(**fields)

    async def complete(self, **fields: Any) -> None:
        self.sync.complete(**fields)

    async def fail(self, error: Union[BaseException, str, None] = None, **fields: Any) -> None:
        self.sync.fail(error, **fields)
