"""Async code and the engine: committing, waiting for a task and extracting without holding a
thread of the pool that every request shares.

A `commit(wait=true)` over MCP or HTTP may wait up to tens of seconds; done on a thread,
a handful of such calls would take every thread of the pool that all requests share,
and stall other users. Here the wait is a sleep on the event loop; only the short
status reads go to a thread. Without a Phase 2 worker in this process (none would ever
finish the task) the engine's own blocking wait runs it in place.

An `extract` calls the LLM endpoint in the request and holds its thread for as long as the
endpoint takes: 45 extracts against an endpoint taking 20 s held all 40 threads of the shared
pool, and another user's `GET /sessions/x` waited 18 s for one (issue 15, B4b). Extracts run
under a limiter of their own instead (anyio's per-event-loop default limiter is the model):
at most `Settings.extract_threads` at once, the others waiting on the event loop, holding no
thread; and each user (account, user) may have at most `Settings.extracts_per_user` running
or waiting, one more is refused with RESOURCE_EXHAUSTED, so one key fills neither.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from viking_mcp.engine.engine import Engine
from viking_mcp.errors import TooManyAtOnce
from viking_mcp.models import CommitResult, ExtractResult, MemoryInput, Owner, TaskRecord

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


# Per event loop, as anyio keeps its own default thread limiter: the extracts' limiter, and
# how many each user has running or waiting.
_extract_limiter: RunVar[anyio.CapacityLimiter] = RunVar("viking_mcp_extract_limiter")
_extracts_of: RunVar[Counter[tuple[str, str]]] = RunVar("viking_mcp_extracts_of")


async def extract_apart(engine: Engine, session_id: str, actor: Owner | None) -> ExtractResult:
    """`Engine.extract` on a thread of the extracts' own limiter (MCP and HTTP extract)."""
    try:
        limiter, extracts_of = _extract_limiter.get(), _extracts_of.get()
    except LookupError:
        limiter, extracts_of = anyio.CapacityLimiter(engine.settings.extract_threads), Counter()
        _extract_limiter.set(limiter)
        _extracts_of.set(extracts_of)
    user = (actor.account_id, actor.user_id) if actor is not None else ("", "")
    allowed = engine.settings.extracts_per_user
    if extracts_of[user] >= allowed:
        raise TooManyAtOnce(
            f"this user already has {allowed} extractions running or waiting (VIKING_MCP_EXTRACTS_PER_USER); "
            "wait for one to answer, then retry"
        )
    extracts_of[user] += 1  # on the event loop's thread only: no lock needed
    try:
        return await anyio.to_thread.run_sync(lambda: engine.extract(session_id, actor=actor), limiter=limiter)
    finally:
        extracts_of[user] -= 1
        if not extracts_of[user]:
            del extracts_of[user]
