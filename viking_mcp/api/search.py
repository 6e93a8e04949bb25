"""Recall over HTTP: search everything the caller may see (engine/recall.py)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from viking_mcp.api.envelope import Ok, call, router
from viking_mcp.models import Count, SearchKind, SearchLimit, SearchQuery, SearchResult

search = router("search")


class SearchBody(BaseModel):
    query: SearchQuery = Field(description="What to look for, in plain words (e.g. the question).")
    session_id: str | None = Field(
        default=None, max_length=128, description="Only this session; omit for every session the caller may see."
    )
    kinds: list[SearchKind] | None = Field(
        default=None,
        min_length=1,
        description="message (live and archived), archive (summaries), memory (long-term). Default: all three; "
        "with a session_id, its messages and archives.",
    )
    since: str | None = Field(default=None, description="Only what was said at or after this ISO 8601 date or time.")
    until: str | None = Field(default=None, description="Only what was said at or before this ISO 8601 date or time.")
    limit: SearchLimit = 10
    token_budget: Count | None = Field(
        default=None, description="The passages' texts together stay within this many tokens (cl100k)."
    )


@search.post("/search", response_model=Ok[SearchResult], summary="Search everything remembered")
async def search_everything(request: Request, body: SearchBody) -> JSONResponse:
    """Messages (live and archived), archive summaries and long-term memories, best first, each
    with a score in 0..1 and a readable passage (speaker, date, the neighbouring question or answer)."""
    return await call(
        request,
        lambda e, a: e.search(
            body.query, body.session_id, body.kinds, body.since, body.until, body.limit, body.token_budget, actor=a
        ),
    )
