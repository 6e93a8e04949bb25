"""Session routes: create, list, read, update metadata, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from viking_mcp.api.envelope import ID_PATTERN, Ok, SessionIdPath, call, router
from viking_mcp.models import (
    ID_MAX_LENGTH,
    MetadataUpdated,
    PageLimit,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionPage,
)

sessions = router("sessions")


class CreateSessionBody(BaseModel):
    session_id: str | None = Field(
        default=None,
        description="Id to use (1-128 of A-Z a-z 0-9 . _ -); omit for a random one.",
        json_schema_extra={"pattern": ID_PATTERN, "maxLength": ID_MAX_LENGTH},
    )
    metadata: dict[str, Any] | None = Field(default=None, description="Free-form JSON object kept with the session.")
    user_id: str | None = Field(
        default=None, description="The user it belongs to; with an API key, only the key's own user."
    )


class MetadataBody(BaseModel):
    metadata: dict[str, Any] = Field(description="Keys to merge into the session's metadata; null removes a key.")


@sessions.post("/sessions", response_model=Ok[SessionCreated], summary="Create a session")
async def create_session(request: Request, body: CreateSessionBody | None = None) -> JSONResponse:
    """Create a session (optional: adding a message creates one). 409 if the id is taken."""
    b = body or CreateSessionBody()
    return await call(request, lambda e, a: e.create_session(b.session_id, b.metadata, b.user_id, actor=a))


@sessions.get("/sessions", response_model=Ok[SessionPage], summary="List sessions")
async def list_sessions(
    request: Request,
    limit: Annotated[PageLimit, Query(description="Sessions per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page.")] = None,
) -> JSONResponse:
    """The caller's sessions, newest first, a page at a time."""
    return await call(request, lambda e, a: e.list_sessions(limit, cursor, actor=a))


@sessions.get("/sessions/{session_id}", response_model=Ok[SessionInfo], summary="Get a session")
async def get_session(
    request: Request,
    session_id: SessionIdPath,
    auto_create: Annotated[bool, Query(description="Create the session if it does not exist.")] = False,
) -> JSONResponse:
    """A session's counters, including pending_tokens (tokens of the live messages)."""
    return await call(request, lambda e, a: e.get_session(session_id, auto_create, actor=a))


@sessions.patch(
    "/sessions/{session_id}/metadata",
    response_model=Ok[MetadataUpdated],
    summary="Merge session metadata",
)
async def update_metadata(request: Request, session_id: SessionIdPath, body: MetadataBody) -> JSONResponse:
    """Merge keys into the session's metadata (Zep's rule: other keys are kept)."""
    return await call(request, lambda e, a: e.update_session(session_id, body.metadata, actor=a))


@sessions.delete("/sessions/{session_id}", response_model=Ok[SessionDeleted], summary="Delete a session")
async def delete_session(request: Request, session_id: SessionIdPath) -> JSONResponse:
    """Delete a session with its messages and archives; extracted memories stay."""
    return await call(request, lambda e, a: e.delete_session(session_id, actor=a))
