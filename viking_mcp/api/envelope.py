"""What every route shares: OpenViking's envelope, the app's state, and one engine call.

Each route takes OpenViking's request shape (unknown fields ignored), calls one engine
method on a worker thread as the caller's API key says, and wraps the engine's pydantic
result in the envelope:

    {"status": "ok", "result": {...}, "time": 0.0012}
    {"status": "error", "error": {"code": "NOT_FOUND", "message": "..."}}   (with 404)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from viking_mcp.auth import KeyRing, key_from_headers
from viking_mcp.engine import Engine
from viking_mcp.errors import ErrorCode, Internal, Unavailable, VikingError
from viking_mcp.models import ID_MAX_LENGTH, Owner

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# --- envelope ----------------------------------------------------------------------------------


class Ok(BaseModel, Generic[T]):
    """A successful response."""

    status: Literal["ok"] = "ok"
    result: T
    time: float = Field(description="Seconds the server spent on the request.")


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str


class ErrorEnvelope(BaseModel):
    """A failed response; the HTTP status matches the code."""

    status: Literal["error"] = "error"
    error: ErrorInfo
    time: float | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in (
        (400, "INVALID_ARGUMENT: a malformed request or a value out of range"),
        (401, "UNAUTHENTICATED: missing or wrong API key"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND (also another user's session or task)"),
        (409, "ALREADY_EXISTS"),
        (412, "FAILED_PRECONDITION"),
        (413, "RESOURCE_EXHAUSTED: past a size limit"),
        (503, "UNAVAILABLE: the store is busy or the server is starting; retry"),
    )
}


class Json(JSONResponse):
    """JSON in UTF-8; text the client sent that is not valid Unicode comes back escaped."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def elapsed(scope: Scope) -> float:
    """Seconds since the request guard (app.py) let the request in (0.0 if it never saw it)."""
    started: float | None = scope.get("state", {}).get("viking_started")
    return 0.0 if started is None else round(time.perf_counter() - started, 6)


def error_response(code: ErrorCode, message: str, scope: Scope, status: int | None = None) -> JSONResponse:
    body = {"status": "error", "error": {"code": code.value, "message": message}, "time": elapsed(scope)}
    headers = {"WWW-Authenticate": 'Bearer realm="viking-mcp"'} if code is ErrorCode.UNAUTHENTICATED else None
    return Json(body, status_code=status or code.http_status, headers=headers)


# --- app state ---------------------------------------------------------------------------------


@dataclass
class HttpState:
    """What the app's request guard and routes reach: the keys, the address served on, and (while the
    app runs) the engine and the MCP session manager."""

    keyring: KeyRing
    host: str | None
    engine: Engine | None = None
    mcp: StreamableHTTPSessionManager | None = None

    def require_engine(self) -> Engine:
        engine = self.engine
        if engine is None or engine.closed:
            raise Unavailable("the server is starting or stopping; retry in a moment")
        return engine


# --- path parameters, and one engine call -------------------------------------------

SessionIdPath = Annotated[
    str,
    Path(
        description="The session's id: 1-128 characters from A-Z a-z 0-9 . _ -",
        examples=["demo"],
        json_schema_extra={"pattern": ID_PATTERN, "maxLength": ID_MAX_LENGTH},
    ),
]
ArchiveIdPath = Annotated[
    str,
    Path(
        description="An archive of the session: archive_001, archive_002, ...",
        examples=["archive_001"],
        json_schema_extra={"pattern": r"^archive_[0-9]{3,9}$"},
    ),
]
TaskIdPath = Annotated[
    str,
    Path(
        description="A task id, as commit returned it.",
        json_schema_extra={"pattern": ID_PATTERN, "maxLength": ID_MAX_LENGTH},
    ),
]


def caller(request: Request) -> tuple[Engine, Owner | None]:
    """The engine, and who is calling it: as the request guard (app.py) found, or, on a path the guard
    did not take for the API's (the app mounted under a prefix), from the request's key."""
    state: HttpState = request.app.state.viking
    seen = request.scope["state"]
    engine = state.require_engine()
    if "viking_actor" in seen:
        return engine, seen["viking_actor"]
    return engine, state.keyring.authenticate(key_from_headers(request.headers))


async def call(request: Request, operation: Callable[[Engine, Owner | None], M]) -> JSONResponse:
    """Run one engine operation on a worker thread as the caller, and wrap its result."""
    engine, actor = caller(request)

    def run() -> M:
        with crashes_answered(request):
            return operation(engine, actor)

    return ok(request, await run_in_threadpool(run))


@contextmanager
def crashes_answered(request: Request) -> Iterator[None]:
    """Crashes inside (not the engine's coded errors) are logged, and answered INTERNAL."""
    try:
        yield
    except VikingError:
        raise
    except Exception as exc:
        logger.exception("%s %s failed", request.method, request.url.path)
        raise Internal(f"the server failed on this request ({type(exc).__name__}); see its log") from exc


def ok(request: Request, result: BaseModel) -> JSONResponse:
    return Json({"status": "ok", "result": result.model_dump(mode="json"), "time": elapsed(request.scope)})


def router(*tags: str) -> APIRouter:
    """A router for one area of /api/v1; every route can answer with the error envelope."""
    return APIRouter(prefix=API_PREFIX, tags=list(tags), responses=ERROR_RESPONSES)
