"""Context routes: rebuild a context window, read an archive, retry or skip a failed one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from viking_mcp.api.envelope import ArchiveIdPath, Ok, SessionIdPath, call, router
from viking_mcp.engine import Engine
from viking_mcp.errors import NotFound
from viking_mcp.models import (
    MAX_ARCHIVE_PAGE,
    OPENVIKING_TOKEN_BUDGET,
    ArchiveDetail,
    Count,
    Owner,
    RetryResult,
    SearchQuery,
    SessionContext,
)

context = router("context")


class RetryBody(BaseModel):
    action: Literal["retry", "skip"] = Field(
        default="retry", description="'retry' summarises it again; 'skip' gives up on its summary."
    )


@context.get("/sessions/{session_id}/context", response_model=Ok[SessionContext], summary="Get context")
async def get_context(
    request: Request,
    session_id: SessionIdPath,
    token_budget: Annotated[
        Count, Query(description="Tokens to spend on archive summaries after the messages.")
    ] = OPENVIKING_TOKEN_BUDGET,
    query: Annotated[
        SearchQuery | None,
        Query(description="The task at hand: archived messages relevant to it get part of the budget."),
    ] = None,
) -> JSONResponse:
    """The latest archive overview, earlier abstracts within budget, and the unsummarised messages;
    with a query, the archived messages most relevant to it (relevant_passages) first."""
    return await call(request, lambda e, a: e.get_context(session_id, token_budget, query, actor=a))


@context.get(
    "/sessions/{session_id}/archives/{archive_id}",
    response_model=Ok[ArchiveDetail],
    summary="Get an archive",
)
async def get_archive(
    request: Request,
    session_id: SessionIdPath,
    archive_id: ArchiveIdPath,
    offset: Annotated[Count, Query(description="Skip this many messages.")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=MAX_ARCHIVE_PAGE, description="At most this many messages.")] = None,
) -> JSONResponse:
    """A completed archive: abstract, overview and messages. Like OpenViking, an archive whose
    Phase 2 has not completed answers 404 (MCP's expand_archive shows it with its status)."""

    def read(e: Engine, a: Owner | None) -> ArchiveDetail:
        detail = e.expand_archive(session_id, archive_id, offset, limit, actor=a)
        if detail.status != "completed":
            raise NotFound(
                f"{archive_id} of session {session_id} is not completed (Phase 2 {detail.status}); "
                "poll its commit task, or read it with MCP's expand_archive"
            )
        return detail

    return await call(request, read)


@context.post(
    "/sessions/{session_id}/archives/{archive_id}/retry",
    response_model=Ok[RetryResult],
    summary="Retry or skip a failed archive",
)
async def retry_archive(
    request: Request, session_id: SessionIdPath, archive_id: ArchiveIdPath, body: RetryBody | None = None
) -> JSONResponse:
    """Queue a failed archive's Phase 2 again, or skip it, so that commits proceed."""
    action = (body or RetryBody()).action
    return await call(request, lambda e, a: e.retry_archive(session_id, archive_id, action, actor=a))
