"""Commit routes: commit (and wait), extract, and the background tasks they start."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, Field

from viking_mcp.api.envelope import Ok, SessionIdPath, TaskIdPath, call, caller, crashes_answered, ok, router
from viking_mcp.engine.waiting import commit_and_wait, extract_apart
from viking_mcp.models import (
    ID_MAX_LENGTH,
    CommitResult,
    Count,
    ExtractResult,
    MemoryInput,
    PageLimit,
    TaskList,
    TaskRecord,
    TaskStatus,
    TaskType,
)

commits = router()


class CommitBody(BaseModel):
    abstract: str | None = Field(default=None, description="Your one- or two-sentence summary of what is archived.")
    overview: str | None = Field(default=None, description="Your markdown overview of the conversation so far.")
    keep_recent_count: Count | None = Field(
        default=None,
        validation_alias=AliasChoices("keep_recent_count", "keepRecentCount"),
        description="Leave this many newest messages live (also accepted as keepRecentCount).",
    )
    wait: bool | None = Field(default=None, description="Block (up to ~40 s) until Phase 2 has finished.")
    memories: list[MemoryInput] | None = Field(default=None, description="Long-term memories you took from them.")


@commits.post(
    "/sessions/{session_id}/commit", response_model=Ok[CommitResult], tags=["commit"], summary="Commit a session"
)
async def commit(request: Request, session_id: SessionIdPath, body: CommitBody | None = None) -> JSONResponse:
    """Archive the live messages now (Phase 1); summaries and memories follow in the background
    (poll GET /tasks/{task_id}, or pass wait=true). 412 when an earlier archive failed."""
    b = body or CommitBody()
    engine, actor = caller(request)
    with crashes_answered(request):
        # Waits for Phase 2 on the event loop, not on a pool thread that every request shares.
        result = await commit_and_wait(
            engine, session_id, b.abstract, b.overview, b.keep_recent_count or 0, b.memories, bool(b.wait), actor
        )
    return ok(request, result)


@commits.post(
    "/sessions/{session_id}/extract", response_model=Ok[ExtractResult], tags=["commit"], summary="Extract memories"
)
async def extract(request: Request, session_id: SessionIdPath) -> JSONResponse:
    """Extract long-term memories from the live messages now, without committing. 429 when this
    user already has VIKING_MCP_EXTRACTS_PER_USER extractions running or waiting."""
    engine, actor = caller(request)
    with crashes_answered(request):
        # On threads of the extracts' own, not the pool every request shares: the LLM may be slow.
        result = await extract_apart(engine, session_id, actor)
    return ok(request, result)


@commits.get("/tasks/{task_id}", response_model=Ok[TaskRecord], tags=["tasks"], summary="Get a task")
async def get_task(request: Request, task_id: TaskIdPath) -> JSONResponse:
    """A background task: status pending/running/completed/failed, result, error."""
    return await call(request, lambda e, a: e.get_task(task_id, actor=a))


@commits.get("/tasks", response_model=Ok[TaskList], tags=["tasks"], summary="List tasks")
async def list_tasks(
    request: Request,
    task_type: Annotated[TaskType | None, Query()] = None,
    status: Annotated[TaskStatus | None, Query()] = None,
    resource_id: Annotated[
        str | None, Query(max_length=ID_MAX_LENGTH, description="Only this session's tasks.")
    ] = None,
    limit: Annotated[PageLimit, Query()] = 50,
) -> JSONResponse:
    """The caller's background tasks, newest first."""
    return await call(request, lambda e, a: e.list_tasks(task_type, status, resource_id, limit, actor=a))
