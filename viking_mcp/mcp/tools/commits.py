"""The commit tool: archive the live messages, summarised in the background."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from viking_mcp.engine.waiting import commit_and_wait
from viking_mcp.mcp.state import Ctx, OptionalText, SessionId, caller, tool, writes
from viking_mcp.models import CommitResult, Count, MemoryInput


@tool("Commit session", writes())
async def commit(
    ctx: Ctx,
    session_id: SessionId,
    abstract: Annotated[
        OptionalText, Field(description="Your one- or two-sentence summary of the messages being archived.")
    ] = None,
    overview: Annotated[
        OptionalText,
        Field(description="Your markdown overview of the conversation so far (carry forward what matters)."),
    ] = None,
    keep_recent_count: Annotated[Count, Field(description="Leave this many newest messages live (not archived).")] = 0,
    wait: Annotated[bool, Field(description="Wait (up to ~40 s) until the archive is summarised.")] = False,
    memories: Annotated[
        list[MemoryInput] | None,
        Field(
            description="Long-term memories you took from these messages (facts about the user, preferences, "
            "people, dated events, solved cases...). Stored verbatim and merged by category; omit to let "
            "the server extract them."
        ),
    ] = None,
) -> CommitResult:
    """Archive the live messages now and summarise them in the background (task_id tracks
    it). Call when the window fills. status 'skipped' means there was nothing to archive.
    FAILED_PRECONDITION means an earlier archive failed: retry_archive it first."""
    engine, actor = caller(ctx)
    # Waits on the event loop, reporting progress, not on a shared worker thread.
    return await commit_and_wait(
        engine, session_id, abstract, overview, keep_recent_count, memories, wait, actor, ctx.report_progress
    )
