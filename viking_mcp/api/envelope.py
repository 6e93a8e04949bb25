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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, ParamSpec, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from viking_mcp.auth import KeyRing, key_from_headers
from viking_mcp.config import Settings
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.errors import ErrorCode, Internal, Unavailable, VikingError
from viking_mcp.models import ID_MAX_LENGTH, Owner

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Params = ParamSpec("Params")


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
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _started(scope: Scope) -> float:
    state = scope.get("state")
    value = state.get("viking_started") if isinstance(state, dict) else None
    return value if isinstance(value, float) else time.perf_counter()


def elapsed(scope: Scope) -> float:
    return round(time.perf_counter() - _started(scope), 6)


def error_response(
    code: ErrorCode, message: str, scope: Scope | None = None, status: int | None = None
) -> JSONResponse:
    body = {
        "status": "error",
        "error": {"code": code.value, "message": message},
        "time": elapsed(scope) if scope is not None else 0.0,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="viking-mcp"'} if code is ErrorCode.UNAUTHENTICATED else None
    return Json(body, status_code=status or code.http_status, headers=headers)


def error_from(exc: VikingError, scope: Scope | None = None) -> JSONResponse:
    return error_response(exc.code, exc.message, scope)


# --- app state ---------------------------------------------------------------------------------


@dataclass
class HttpState:
    """What the app owns: settings, keys, and (while it runs) the engine, worker and MCP manager."""

    settings: Settings
    keyring: KeyRing
    host: str | None
    engine: Engine | None = None
    owns_engine: bool = False
    run_worker: bool = False
    worker: Phase2Worker | None = None
    mcp: StreamableHTTPSessionManager | None = None

    def require_engine(self) -> Engine:
        engine = self.engine
        if engine is None or engine.closed:
            raise Unavailable("the server is starting or stopping; retry in a moment")
        return engine


def app_state(request: Request) -> HttpState:
    state = request.app.state.viking
    assert isinstance(state, HttpState)
    return state


# --- one engine call ---------------------------------------------------------------------------

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


def actor_of(request: Request) -> Owner | None:
    state = request.scope.get("state")
    if isinstance(state, dict) and "viking_actor" in state:
        actor = state["viking_actor"]
        return actor if isinstance(actor, Owner) else None
    return app_state(request).keyring.authenticate(key_from_headers(request.headers))


async def call(request: Request, operation: Callable[[Engine, Owner | None], M]) -> JSONResponse:
    """Run one engine operation on a worker thread as the caller, and wrap its result."""
    engine, actor = app_state(request).require_engine(), actor_of(request)
    result = await run_in_threadpool(guarded(request, lambda: operation(engine, actor)))
    return ok(request, result)


def guarded(request: Request, run: Callable[Params, T]) -> Callable[Params, T]:
    """`run`, whose crashes (not the engine's coded errors) are logged and answered INTERNAL."""

    def guarded(*args: Params.args, **kwargs: Params.kwargs) -> T:
        try:
            return run(*args, **kwargs)
        except VikingError:
            raise
        except Exception as exc:
            raise crashed(request, exc) from exc

    return guarded


def crashed(request: Request, exc: Exception) -> Internal:
    """A crash (not the engine's coded error), logged; the caller is answered INTERNAL."""
    logger.exception("%s %s failed", request.method, request.url.path)
    return Internal(f"the server failed on this request ({type(exc).__name__}); see its log")


def ok(request: Request, result: BaseModel) -> JSONResponse:
    return Json({"status": "ok", "result": result.model_dump(mode="json"), "time": elapsed(request.scope)})


def router(*tags: str) -> APIRouter:
    """A router for one area of /api/v1; every route can answer with the error envelope."""
    return APIRouter(prefix=API_PREFIX, tags=list(tags), responses=ERROR_RESPONSES)
