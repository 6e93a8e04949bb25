"""Context tools: rebuild a window, read an archive, recover a failed one."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from viking_mcp.mcp.replies import Composed, Lines, capped, max_result_tokens, minute, reply
from viking_mcp.mcp.state import READ_ONLY, ArchiveId, Ctx, SessionId, caller, tool, writes
from viking_mcp.models import ArchiveDetail, Count, Message, RetryResult, SearchQuery, message_line

# A model reads lines without the blank ones between them (each costs a token, two as JSON).
_BLANK_LINES = re.compile(r"\n\s*\n")


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
    query: Annotated[
        SearchQuery | None,
        Field(
            description="The task at hand (e.g. the user's last message): archived messages relevant to it "
            "get part of the budget."
        ),
    ] = None,
) -> Annotated[CallToolResult, ContextRead]:
    """Rebuild your context window within token_budget: the messages not yet summarised
    (newest first if they do not all fit), then, with a query, the archived messages most
    relevant to it, then the latest archive's overview and the abstracts of archives it does
    not show. Use expand_archive for any archive's full text, search to find more."""
    engine, actor = caller(ctx)
    read = engine.read_context(session_id, token_budget, query, actor=actor)
    return reply(read.text, read.structured)


class ArchiveRead(BaseModel):
    """expand_archive over MCP: a page of the archive as lines (the same text `content` carries)."""

    archive: str = Field(description="The archive: its status and summaries (first page), then its messages.")
    next_offset: int | None = Field(description="Pass as `offset` for the rest of the messages; null at the end.")


@tool("Expand archive", READ_ONLY)
def expand_archive(
    ctx: Ctx,
    session_id: SessionId,
    archive_id: ArchiveId,
    offset: Annotated[Count, Field(description="Skip this many messages (pass next_offset for the next page).")] = 0,
    limit: Annotated[int, Field(description="At most this many messages.", ge=1, le=1000)] = 200,
) -> Annotated[CallToolResult, ArchiveRead]:
    """An archive's raw messages, oldest first, one `[YYYY-MM-DD HH:MM] role: text` line each;
    the first page (offset 0) starts with its status, abstract and overview. A page holds what
    fits one result: pass next_offset back as offset for the rest. Pending and failed archives
    have their messages and empty summaries."""
    engine, actor = caller(ctx)
    detail = engine.expand_archive(session_id, archive_id, offset, limit, actor=actor)
    return capped(lambda lines: _archive_page(detail, lines), engine.tokens, max_result_tokens(ctx))


def _archive_page(detail: ArchiveDetail, lines: Lines) -> Composed:
    """The archive's heading (its summaries on the first page), then its messages while they fit."""
    heading = f"{detail.archive_id} of session {detail.session_id} ({detail.uri})"
    if detail.offset == 0:
        lines.put(f"{heading}: {detail.status}, {detail.message_count} messages")
        if detail.error:
            lines.add_cut(f"error: {detail.error}", lines.room // 16, "(error cut short: retry_archive retries it)")
        if detail.abstract:
            note = f"(abstract cut short: read it whole at {detail.uri}/.abstract.md)"
            lines.add_cut(f"abstract: {detail.abstract}", lines.room // 8, note)
        if detail.overview:
            overview = _BLANK_LINES.sub("\n", detail.overview.strip())
            note = f"(overview cut short: read it whole at {detail.uri}/.overview.md)"
            lines.add_cut(f"overview:\n{overview}", lines.room // 2, note)
    else:
        lines.put(f"{heading}:")
    # Only the first message of a page is ever cut: it is larger than what the page has left.
    number = detail.offset + 1
    shown = lines.add_items(
        detail.messages,
        _message_line,
        lambda _: f"(message {number} is cut short; read it whole at {detail.uri}/messages.jsonl, line {number})",
    )
    end = detail.offset + shown
    next_offset = end if end < detail.message_count else None
    if shown:
        span = f"message{f's {detail.offset + 1}-' if shown > 1 else ' '}{end} of {detail.message_count}"
        more = f"; more: expand_archive with offset={next_offset}" if next_offset is not None else ""
        lines.put(f"({span}{more})")
    elif detail.message_count:
        lines.put(f"(no messages from offset {detail.offset}: the archive has {detail.message_count})")
    return lines.text, {"archive": lines.text, "next_offset": next_offset}


def _message_line(message: Message) -> str:
    return message_line(message, minute(message.created_at))


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
