"""Session tools: create, list, read, update and delete sessions."""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from viking_mcp.engine.engine import session_cursor
from viking_mcp.mcp.replies import Composed, Lines, capped, clip, max_result_tokens, minute
from viking_mcp.mcp.state import READ_ONLY, Ctx, SessionId, caller, tool, writes
from viking_mcp.models import (
    MetadataUpdated,
    PageLimit,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionPage,
    SessionSummary,
    plural,
)
from viking_mcp.tokens import TokenCounter

# A session's metadata on its line: longer is cut (get_session shows it whole).
METADATA_TOKENS = 200


@tool("Create session", writes())
def create_session(
    ctx: Ctx,
    session_id: Annotated[
        str | None, Field(description="Id to use; omit it to get a fresh random id.", max_length=128)
    ] = None,
    metadata: Annotated[
        dict[str, Any] | None, Field(description="Free-form JSON object stored with the session.")
    ] = None,
    user_id: Annotated[str | None, Field(description="The user this session belongs to.", max_length=128)] = None,
) -> SessionCreated:
    """Create a session to record a conversation in. Optional: add_message creates sessions on
    first use. Fails with ALREADY_EXISTS if the id is taken."""
    engine, actor = caller(ctx)
    return engine.create_session(session_id, metadata, user_id, actor=actor)


class SessionsRead(BaseModel):
    """list_sessions over MCP: a page of sessions as lines (the same text `content` carries)."""

    sessions: str = Field(description="One line per session, newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


@tool("List sessions", READ_ONLY)
def list_sessions(
    ctx: Ctx,
    limit: Annotated[PageLimit, Field(description="At most this many sessions per page.")] = 50,
    cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
) -> Annotated[CallToolResult, SessionsRead]:
    """List sessions, newest first, one line each: id, live messages, when created and last
    updated, metadata. A page holds what fits one result: pass next_cursor back as cursor."""
    engine, actor = caller(ctx)
    page = engine.list_sessions(limit, cursor, actor=actor)
    return capped(lambda lines: _sessions_page(page, lines), engine.tokens, max_result_tokens(ctx))


def _sessions_page(page: SessionPage, lines: Lines) -> Composed:
    lines.put("sessions, newest first:" if page.sessions else "(no sessions)")
    shown = lines.add_items(
        page.sessions,
        lambda session: _session_line(session, lines.tokens),
        lambda session: f"(cut short: get_session(session_id={session.session_id!r}) shows it)",
    )
    if shown < len(page.sessions):
        last = page.sessions[shown - 1]
        next_cursor: str | None = session_cursor(last.created_at, last.session_id)
    else:
        next_cursor = page.next_cursor
    if next_cursor is not None:
        lines.put(f'(more: list_sessions with cursor="{next_cursor}")')
    return lines.text, {"sessions": lines.text, "next_cursor": next_cursor}


def _session_line(session: SessionSummary, tokens: TokenCounter) -> str:
    line = (
        f"{session.session_id}: {plural(session.message_count, 'live message')}, "
        f"created {minute(session.created_at)}, updated {minute(session.updated_at)}"
    )
    if session.metadata:
        metadata = json.dumps(session.metadata, ensure_ascii=False, separators=(",", ":"))
        line += ", metadata " + clip(metadata, METADATA_TOKENS, tokens, "(cut short: get_session shows it whole)")
    return line


@tool("Get session", writes(idempotent=True))
def get_session(
    ctx: Ctx,
    session_id: SessionId,
    auto_create: Annotated[bool, Field(description="Create the session if it does not exist.")] = False,
) -> SessionInfo:
    """A session's counters: live and total messages, commits, pending_tokens (tokens of
    the live messages: commit when it grows large), extracted memories, metadata."""
    engine, actor = caller(ctx)
    return engine.get_session(session_id, auto_create, actor=actor)


@tool("Update session metadata", writes(destructive=True, idempotent=True))
def update_session(
    ctx: Ctx,
    session_id: SessionId,
    metadata: Annotated[
        dict[str, Any],
        Field(description="Keys to set; merged into the existing metadata. A null value removes it."),
    ],
) -> MetadataUpdated:
    """Merge keys into a session's metadata (other keys are kept) and return the result."""
    engine, actor = caller(ctx)
    return engine.update_session(session_id, metadata, actor=actor)


@tool("Delete session", writes(destructive=True, idempotent=True))
def delete_session(ctx: Ctx, session_id: SessionId) -> SessionDeleted:
    """Delete a session: its messages, archives, summaries, tool records and metadata.
    Long-term memories extracted from it stay. This cannot be undone."""
    engine, actor = caller(ctx)
    return engine.delete_session(session_id, actor=actor)
