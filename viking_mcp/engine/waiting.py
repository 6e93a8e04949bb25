"""Async code and the engine: committing and waiting for a task without holding a worker thread.

A `commit(wait=true)` over MCP or HTTP may wait up to tens of seconds; done on a thread,
a handful of such calls would take every thread of the pool that all requests share,
and stall other users. Here the wait is a sleep on the event loop; only the short
status reads go to a thread. Without a Phase 2 worker in this process (none would ever
finish the task) the engine's own blocking wait runs it in place.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread

from viking_mcp.engine.engine import Engine
from viking_mcp.models import CommitResult, MemoryInput, Owner, TaskRecord

AsyncProgress = Callable[[float, float, str], Awaitable[None]]
POLL_SECONDS = 0.1


async def wait_for_task(
    engine: Engine, task_id: str, timeout: float, actor: Owner | None, on_progress: AsyncProgress | None = None
) -> TaskRecord:
    """The task once it completes or fails, or as it is after `timeout` seconds."""
    if not engine.has_worker:
        return await anyio.to_thread.run_sync(lambda: engine.wait_for_task(task_id, timeout, actor=actor))
    started = time.monotonic()
    while True:
        task = await anyio.to_thread.run_sync(lambda: engine.get_task(task_id, actor=actor))
        elapsed = time.monotonic() - started
        if task.status in ("completed", "failed") or elapsed >= timeout:
            return task
        if on_progress is not None:
            await on_progress(elapsed, timeout, f"Phase 2 {task.status}")
        await anyio.sleep(min(POLL_SECONDS, timeout - elapsed))


async def commit_and_wait(
    engine: Engine,
    session_id: str,
    abstract: str | None,
    overview: str | None,
    keep_recent_count: int,
    memories: list[MemoryInput] | None,
    wait: bool,
    actor: Owner | None,
    on_progress: AsyncProgress | None = None,
) -> CommitResult:
    """Phase 1 on a worker thread; with `wait`, Phase 2 awaited on the event loop (MCP and HTTP commit)."""
    result = await anyio.to_thread.run_sync(
        lambda: engine.commit(session_id, abstract, overview, keep_recent_count, False, None, memories, actor=actor)
    )
    if wait and result.task_id is not None:
        task = await wait_for_task(engine, result.task_id, engine.settings.commit_wait_seconds, actor, on_progress)
        result.task_status = task.status
    return result
