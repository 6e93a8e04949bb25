"""Session tools: create, list, read, update and delete sessions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from viking_mcp.mcp.state import READ_ONLY, Ctx, SessionId, caller, tool, writes
from viking_mcp.models import MetadataUpdated, PageLimit, SessionCreated, SessionDeleted, SessionInfo, SessionPage


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


@tool("List sessions", READ_ONLY)
def list_sessions(
    ctx: Ctx,
    limit: Annotated[PageLimit, Field(description="Sessions per page.")] = 50,
    cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
) -> SessionPage:
    """List sessions, newest first, a page at a time; pass next_cursor back for the next page."""
    engine, actor = caller(ctx)
    return engine.list_sessions(limit, cursor, actor=actor)


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
