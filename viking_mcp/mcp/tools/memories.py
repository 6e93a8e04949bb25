"""Long-term memory tools: extract memories now, and search them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from viking_mcp.engine.waiting import extract_apart
from viking_mcp.mcp.state import READ_ONLY, Ctx, SessionId, caller, tool, writes
from viking_mcp.models import ExtractResult, MemoryCategory, MemorySearchResult, SearchLimit, SearchQuery


@tool("Extract memories now", writes())
async def extract(ctx: Ctx, session_id: SessionId) -> ExtractResult:
    """Extract long-term memories from the session's live messages now, without committing.
    Memories merge by category, so extracting again or committing later adds no duplicates."""
    engine, actor = caller(ctx)
    # On threads of the extracts' own, not the pool every call shares: the LLM may be slow.
    return await extract_apart(engine, session_id, actor)


@tool("Search memories", READ_ONLY)
def search_memories(
    ctx: Ctx,
    query: Annotated[SearchQuery, Field(description="What to look for, in plain words.")],
    category: Annotated[MemoryCategory | None, Field(description="Only memories of this category.")] = None,
    limit: Annotated[SearchLimit, Field(description="At most this many results.")] = 10,
) -> MemorySearchResult:
    """Search long-term memories (the user's profile, preferences, people, events, and the
    agent's cases, patterns, tools, skills), best match first. Read a whole memory as a
    resource at its uri."""
    engine, actor = caller(ctx)
    return engine.search_memories(query, category, limit, actor=actor)
