"""Memory routes: search the caller's long-term memories."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import JSONResponse

from viking_mcp.api.envelope import Ok, call, router
from viking_mcp.models import MemoryCategory, MemorySearchResult, SearchLimit, SearchQuery

memories = router("memories")


@memories.get("/memories/search", response_model=Ok[MemorySearchResult], summary="Search memories")
async def search_memories(
    request: Request,
    query: Annotated[SearchQuery, Query(description="What to look for.")],
    category: Annotated[MemoryCategory | None, Query(description="Only this category.")] = None,
    limit: Annotated[SearchLimit, Query()] = 10,
) -> JSONResponse:
    """Full-text search (BM25) over the caller's long-term memories, best first."""
    return await call(request, lambda e, a: e.search_memories(query, category, limit, actor=a))
