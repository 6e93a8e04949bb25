"""Async code and the engine: waiting for a task without holding a worker thread.

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
from viking_mcp.models import Owner, TaskRecord

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
