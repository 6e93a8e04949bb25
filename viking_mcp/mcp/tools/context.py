"""Context tools: rebuild a window, read an archive, recover a failed one."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from viking_mcp.mcp.state import READ_ONLY, ArchiveId, Ctx, SessionId, caller, tool, writes
from viking_mcp.models import ArchiveDetail, Count, RetryResult


class ContextRead(BaseModel):
    """get_context over MCP: the context as one text (the same text `content` carries)."""

    context: str = Field(description="The rebuilt context: overview, other archives' abstracts, recent messages.")
    estimatedTokens: int = Field(description="Tokens of this result as JSON, counted with the server's tokenizer.")


@tool("Get context", READ_ONLY)
def get_context(
    ctx: Ctx,
    session_id: SessionId,
    # Its default is the server's setting (VIKING_MCP_DEFAULT_TOKEN_BUDGET), set when it is built.
    token_budget: Annotated[Count, Field(description="The most tokens this result may cost you, everything included.")],
) -> Annotated[CallToolResult, ContextRead]:
    """Rebuild your context window within token_budget: the messages not yet summarised
    (newest first if they do not all fit), then the latest archive's overview and the
    abstracts of archives it does not show. Use expand_archive for any archive's full text."""
    engine, actor = caller(ctx)
    read = engine.read_context(session_id, token_budget, actor=actor)
    return CallToolResult(content=[TextContent(text=read.text)], structured_content=read.structured)


@tool("Expand archive", READ_ONLY)
def expand_archive(
    ctx: Ctx,
    session_id: SessionId,
    archive_id: ArchiveId,
    offset: Annotated[Count, Field(description="Skip this many messages (for paging).")] = 0,
    limit: Annotated[int, Field(description="At most this many messages.", ge=1, le=1000)] = 200,
) -> ArchiveDetail:
    """An archive's status, abstract, overview and raw messages (paged: pass next_offset back
    as offset). Pending and failed archives have their messages and empty summaries."""
    engine, actor = caller(ctx)
    return engine.expand_archive(session_id, archive_id, offset, limit, actor=actor)


# Destructive: skipping gives up an archive's summaries for good.
@tool("Retry or skip a failed archive", writes(destructive=True))
def retry_archive(
    ctx: Ctx,
    session_id: SessionId,
    archive_id: ArchiveId,
    action: Annotated[
        Literal["retry", "skip"],
        Field(description="'retry' summarises it again; 'skip' gives up on its summary."),
    ] = "retry",
) -> RetryResult:
    """Recover an archive whose background summarising failed, so that commits proceed. Its
    messages are kept either way (expand_archive)."""
    engine, actor = caller(ctx)
    return engine.retry_archive(session_id, archive_id, action, actor=actor)
