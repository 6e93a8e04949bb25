"""Task tools: the background work a commit or an extraction started."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from viking_mcp.mcp.state import READ_ONLY, Ctx, caller, tool
from viking_mcp.models import PageLimit, TaskList, TaskRecord, TaskStatus, TaskType


@tool("Get task", READ_ONLY)
def get_task(ctx: Ctx, task_id: Annotated[str, Field(description="task_id returned by commit.")]) -> TaskRecord:
    """A background task's status (pending, running, completed, failed), result and error."""
    engine, actor = caller(ctx)
    return engine.get_task(task_id, actor=actor)


@tool("List tasks", READ_ONLY)
def list_tasks(
    ctx: Ctx,
    task_type: Annotated[TaskType | None, Field(description="Only tasks of this type.")] = None,
    status: Annotated[TaskStatus | None, Field(description="Only tasks in this state.")] = None,
    resource_id: Annotated[str | None, Field(description="Only tasks of this session id.")] = None,
    limit: Annotated[PageLimit, Field(description="At most this many tasks.")] = 50,
) -> TaskList:
    """Background tasks, newest first, optionally filtered."""
    engine, actor = caller(ctx)
    return engine.list_tasks(task_type, status, resource_id, limit, actor=actor)
