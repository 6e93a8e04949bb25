"""Async code and the engine: waiting for a task without holding a worker thread, and
writing without a worker thread when no wait is needed.

A `commit(wait=true)` over MCP or HTTP may wait up to tens of seconds; done on a thread,
a handful of such calls would take every thread of the pool that all requests share,
and stall other users. Here the wait is a sleep on the event loop; only the short
status reads go to a thread. Without a Phase 2 worker in this process (none would ever
finish the task) the engine's own blocking wait runs it in place.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from viking_mcp.engine.engine import Engine
from viking_mcp.errors import WouldWait
from viking_mcp.models import TaskRecord
from viking_mcp.store.base import Owner

AsyncProgress = Callable[[float, float, str], Awaitable[None]]
POLL_SECONDS = 0.1
T = TypeVar("T")
# Text longer than this is appended on a worker thread: counting its tokens and encoding it
# would hold the event loop, which every other client of the server shares, for milliseconds.
SHORT_TEXT_CHARS = 16_384


def is_short_text(content: object, parts: object) -> bool:
    """Whether an append of this content is short enough to run on the event loop."""
    return not parts and isinstance(content, str) and len(content) <= SHORT_TEXT_CHARS


async def write_soon(engine: Engine, write: Callable[[], T], short: bool = True) -> T:
    """Run a short write (an append: one transaction of a tenth of a millisecond) on the
    event loop when it need not wait, else on a worker thread, where it waits. A write
    that is not `short` always runs on the thread, and so does the first append of all,
    which loads the tokenizer (0.2 s: loaded at start instead, it would cost an idle
    server 40 MB).

    The hop to a worker thread and back was a quarter of an MCP round trip over stdio and
    a sixth of the HTTP server's CPU per appended message. On the loop the write must never
    wait for SQLite's write lock (another process's Phase 2 transaction can hold it for
    milliseconds): with the store's `without_waiting` it fails at once with WouldWait,
    before writing anything, and is run again where it may wait. A store without it
    (PostgreSQL, whose writes can always wait on the network) always writes on a thread."""
    nowait = getattr(engine.store, "without_waiting", None)
    if nowait is not None and short and engine.tokens.loaded:
        try:
            with nowait():
                return write()
        except WouldWait:
            pass
    return await anyio.to_thread.run_sync(write)


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
