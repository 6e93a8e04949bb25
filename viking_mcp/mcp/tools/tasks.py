"""Task tools: the background work a commit or an extraction started."""

from __future__ import annotations

import json
from typing import Annotated

from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from viking_mcp.mcp.replies import Composed, Lines, capped, clip, max_result_tokens, minute
from viking_mcp.mcp.state import READ_ONLY, Ctx, caller, tool
from viking_mcp.models import Count, PageLimit, TaskRecord, TaskStatus, TaskType
from viking_mcp.tokens import TokenCounter

# A task's result or error on its line: longer is cut (get_task shows it whole).
DETAIL_TOKENS = 200


@tool("Get task", READ_ONLY)
def get_task(ctx: Ctx, task_id: Annotated[str, Field(description="task_id returned by commit.")]) -> TaskRecord:
    """A background task's status (pending, running, completed, failed), result and error."""
    engine, actor = caller(ctx)
    return engine.get_task(task_id, actor=actor)


class TasksRead(BaseModel):
    """list_tasks over MCP: a page of tasks as lines (the same text `content` carries)."""

    tasks: str = Field(description="One line per task, newest first.")
    next_offset: int | None = Field(description="Pass as `offset` for the next page; null on the last page.")


@tool("List tasks", READ_ONLY)
def list_tasks(
    ctx: Ctx,
    task_type: Annotated[TaskType | None, Field(description="Only tasks of this type.")] = None,
    status: Annotated[TaskStatus | None, Field(description="Only tasks in this state.")] = None,
    resource_id: Annotated[str | None, Field(description="Only tasks of this session id.")] = None,
    limit: Annotated[PageLimit, Field(description="At most this many tasks per page.")] = 50,
    offset: Annotated[Count, Field(description="Skip this many tasks (pass next_offset for the next page).")] = 0,
) -> Annotated[CallToolResult, TasksRead]:
    """Background tasks, newest first, optionally filtered, one line each: id, type, status,
    session, times, result or error. A page holds what fits one result: pass next_offset back
    as offset for the next."""
    engine, actor = caller(ctx)
    tasks = engine.list_tasks(task_type, status, resource_id, limit, offset=offset, actor=actor).tasks
    # A full page: is there another after it?
    more = len(tasks) == limit and bool(
        engine.list_tasks(task_type, status, resource_id, 1, offset=offset + limit, actor=actor).tasks
    )
    return capped(lambda lines: _tasks_page(tasks, offset, more, lines), engine.tokens, max_result_tokens(ctx))


def _tasks_page(tasks: list[TaskRecord], offset: int, more: bool, lines: Lines) -> Composed:
    if tasks:
        lines.put("tasks, newest first:")
    else:
        lines.put(f"(no tasks after the first {offset})" if offset else "(no tasks)")
    shown = lines.add_items(
        tasks,
        lambda task: _task_line(task, lines.tokens),
        lambda task: f"(cut short: get_task(task_id={task.task_id!r}) shows it)",
    )
    next_offset = offset + shown if shown < len(tasks) or more else None
    if next_offset is not None:
        lines.put(f"(more: list_tasks with offset={next_offset})")
    return lines.text, {"tasks": lines.text, "next_offset": next_offset}


def _task_line(task: TaskRecord, tokens: TokenCounter) -> str:
    line = (
        f"{task.task_id}: {task.task_type} {task.status}, session {task.resource_id}, "
        f"created {minute(task.created_at)}, updated {minute(task.updated_at)}"
    )
    note = "(cut short: get_task shows it whole)"
    if task.result is not None:
        result = json.dumps(task.result.model_dump(exclude={"session_id"}, exclude_none=True), separators=(",", ":"))
        line += ", result " + clip(result, DETAIL_TOKENS, tokens, note)
    if task.error:
        line += ", error: " + clip(task.error, DETAIL_TOKENS, tokens, note)
    return line
