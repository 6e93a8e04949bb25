"""Long-term memory tools: extract memories now, and search them."""

from __future__ import annotations

from typing import Annotated

from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from viking_mcp.engine.waiting import extract_apart
from viking_mcp.mcp.replies import Composed, Lines, capped, clip, max_result_tokens
from viking_mcp.mcp.state import READ_ONLY, Ctx, SessionId, caller, tool, writes
from viking_mcp.models import Count, ExtractResult, MemoryCategory, MemoryHit, SearchLimit, SearchQuery
from viking_mcp.tokens import TokenCounter

# A memory's abstract on its line (one or two sentences, usually): longer is cut.
ABSTRACT_TOKENS = 300
# The query, repeated at the top of the results.
QUERY_TOKENS = 50


@tool("Extract memories now", writes())
async def extract(ctx: Ctx, session_id: SessionId) -> ExtractResult:
    """Extract long-term memories from the session's live messages now, without committing.
    Memories merge by category, so extracting again or committing later adds no duplicates."""
    engine, actor = caller(ctx)
    # On threads of the extracts' own, not the pool every call shares: the LLM may be slow.
    return await extract_apart(engine, session_id, actor)


class MemoriesRead(BaseModel):
    """search_memories over MCP: the matches as lines (the same text `content` carries)."""

    memories: str = Field(description="One line per memory, best match first: uri, category, score, abstract.")
    next_offset: int | None = Field(description="Pass as `offset` for the rest of the matches; null at the end.")


@tool("Search memories", READ_ONLY)
def search_memories(
    ctx: Ctx,
    query: Annotated[SearchQuery, Field(description="What to look for, in plain words.")],
    category: Annotated[MemoryCategory | None, Field(description="Only memories of this category.")] = None,
    limit: Annotated[SearchLimit, Field(description="At most this many results in all.")] = 10,
    offset: Annotated[Count, Field(description="Skip this many results (pass next_offset for the rest).")] = 0,
) -> Annotated[CallToolResult, MemoriesRead]:
    """Search long-term memories (the user's profile, preferences, people, events, and the
    agent's cases, patterns, tools, skills), best match first, one line each: uri, category,
    score (1 is the best match), abstract. Read a whole memory as a resource at its uri. When
    the results do not fit one result, pass next_offset back as offset for the rest."""
    engine, actor = caller(ctx)
    found = engine.search_memories(query, category, limit, actor=actor).memories
    return capped(
        lambda lines: _memories_page(query, found, offset, lines),
        engine.tokens,
        max_result_tokens(ctx),
    )


def _memories_page(query: str, found: list[MemoryHit], offset: int, lines: Lines) -> Composed:
    asked = clip(query, QUERY_TOKENS, lines.tokens, "")
    if not found:
        lines.put(f"(no memories match {asked!r})")
    elif offset >= len(found):
        lines.put(f"(no memories match {asked!r} after the first {len(found)})")
    else:
        lines.put(f"memories matching {asked!r}, best first:")
    shown = lines.add_items(
        found[offset:], lambda hit: _memory_line(hit, lines.tokens), lambda hit: "(cut short: read it at its uri)"
    )
    end = offset + shown
    next_offset = end if end < len(found) else None
    if next_offset is not None:
        lines.put(f"(more: search_memories with offset={next_offset})")
    return lines.text, {"memories": lines.text, "next_offset": next_offset}


def _memory_line(hit: MemoryHit, tokens: TokenCounter) -> str:
    abstract = clip(" ".join(hit.abstract.split()), ABSTRACT_TOKENS, tokens, "(cut short: read it at its uri)")
    return f"{hit.uri} ({hit.category}, score {hit.score:.2f}): {abstract}"
