"""The HTTP face: OpenViking's session API at /api/v1 and MCP (streamable HTTP) at /mcp.

One ASGI app, one engine, one Phase 2 worker: a session written over REST is the same
session an agent reads over MCP. Thin by design, like the MCP face: each endpoint takes
OpenViking's request shape (unknown fields ignored, `keepRecentCount` accepted for
`keep_recent_count`), calls one engine method on a worker thread as the caller's API key
says, and wraps the engine's pydantic result in OpenViking's envelope:

    {"status": "ok", "result": {...}, "time": 0.0012}
    {"status": "error", "error": {"code": "NOT_FOUND", "message": "..."}}   (with 404)

Every failure a client can cause is a 4xx with a code, never a 5xx: validation errors
(including bad JSON) are 400 INVALID_ARGUMENT, unknown routes 404 NOT_FOUND, bodies over
the size limit 413 RESOURCE_EXHAUSTED (refused before they are read).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any, Generic, Literal, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from viking_mcp import __version__
from viking_mcp.auth import KeyRing, key_from_headers, keyring_from_env
from viking_mcp.config import Settings
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.engine.engine import PreparedMessage
from viking_mcp.engine.waiting import wait_for_task
from viking_mcp.errors import (
    ErrorCode,
    Internal,
    NotFound,
    Unavailable,
    VikingError,
)
from viking_mcp.heap import settle_later
from viking_mcp.mcp.server import build_server
from viking_mcp.models import (
    ArchiveDetail,
    CommitResult,
    ContextPart,
    ExtractResult,
    MemoryCategory,
    MemoryInput,
    MemorySearchResult,
    MessageAdded,
    MetadataUpdated,
    Owner,
    RetryResult,
    SessionContext,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionPage,
    TaskList,
    TaskRecord,
    TextPart,
    ToolPart,
    UsageRecorded,
)

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MCP_PATH = "/mcp"
# OpenViking's default budget for get_session_context over HTTP.
HTTP_DEFAULT_TOKEN_BUDGET = 128_000
# Request bodies past this are refused (413) before they are read; a message at the
# engine's own limit (VIKING_MCP_MAX_MESSAGE_BYTES) still fits, JSON escaping included.
MIN_BODY_LIMIT = 2 * 1024 * 1024

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.FAILED_PRECONDITION: 412,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_EXHAUSTED: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

T = TypeVar("T")
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


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
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


class _Json(JSONResponse):
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


def _elapsed(scope: Scope) -> float:
    return round(time.perf_counter() - _started(scope), 6)


def error_response(
    code: ErrorCode, message: str, scope: Scope | None = None, status: int | None = None
) -> JSONResponse:
    body = {
        "status": "error",
        "error": {"code": code.value, "message": message},
        "time": _elapsed(scope) if scope is not None else 0.0,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="viking-mcp"'} if code is ErrorCode.UNAUTHENTICATED else None
    return _Json(body, status_code=status or HTTP_STATUS.get(code, 500), headers=headers)


def _error_from(exc: VikingError, scope: Scope | None = None) -> JSONResponse:
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


def _state(request: Request) -> HttpState:
    state = request.app.state.viking
    assert isinstance(state, HttpState)
    return state


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name part of a Host header: 'localhost:1933' -> 'localhost', '[::1]:80' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


# --- the gate: Host check, API key, body size -----------------------------------------------------


class _Gate:
    """Pure ASGI middleware in front of everything (so it never breaks MCP's streaming).

    - On a loopback bind, the Host header must name loopback (no DNS rebinding into a
      server that may have no keys).
    - /api/... and /mcp need an API key when keys are configured (401 otherwise); the
      caller's identity goes into the request state for the endpoints.
    - Bodies over `max_body` are refused with 413 before they are read; a body without a
      Content-Length is read up to the limit first, then replayed to the app.
    """

    def __init__(self, app: ASGIApp, state: HttpState, max_body: int) -> None:
        self.app = app
        self.state = state
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_state = scope.setdefault("state", {})
        request_state["viking_started"] = time.perf_counter()
        headers = Headers(scope=scope)
        host = self.state.host
        if host is not None and is_loopback(host):
            name = _host_name(headers.get("host", "")).lower()
            if name not in _LOOPBACK_NAMES:
                message = f"Host {name[:100]!r} is not allowed: this server listens on loopback only"
                await error_response(ErrorCode.PERMISSION_DENIED, message, scope)(scope, receive, send)
                return
        path: str = scope["path"]
        if path in (API_PREFIX, MCP_PATH) or path.startswith((API_PREFIX + "/", MCP_PATH + "/")):
            try:
                request_state["viking_actor"] = self.state.keyring.authenticate(key_from_headers(headers))
            except VikingError as exc:
                await _error_from(exc, scope)(scope, receive, send)
                return
        length_text = headers.get("content-length")
        if length_text is not None:
            try:
                length = int(length_text)
            except ValueError:
                await error_response(ErrorCode.INVALID_ARGUMENT, "Content-Length is not a number", scope)(
                    scope, receive, send
                )
                return
            if length > self.max_body:
                await self._too_large(scope, receive, send)
                return
        elif "transfer-encoding" in headers:
            body, complete = await self._read_up_to_limit(receive)
            if not complete:
                await self._too_large(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _read_up_to_limit(self, receive: Receive) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True  # disconnected: the app will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than {self.max_body} bytes"
        response = error_response(ErrorCode.RESOURCE_EXHAUSTED, message, scope)
        response.headers["Connection"] = "close"  # the unread body is not worth draining
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- MCP at /mcp ---------------------------------------------------------------------------------


class _McpEndpoint:
    """Hands /mcp requests to the running MCP session manager (the gate has checked the key)."""

    def __init__(self, state: HttpState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self.state.mcp
        if manager is None:
            message = "MCP is not running (the server is starting or stopping); retry in a moment"
            await error_response(ErrorCode.UNAVAILABLE, message, scope)(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)


def _mcp_security(host: str | None) -> tuple[str, TransportSecuritySettings | None]:
    """The SDK's DNS-rebinding protection for a loopback bind; otherwise off (keys protect it)."""
    if host is not None and is_loopback(host):
        return host, None  # the SDK enables its protection for loopback hosts itself
    return "0.0.0.0", TransportSecuritySettings(enable_dns_rebinding_protection=False)


# --- request bodies (OpenViking's names; unknown fields ignored) ---------------------------------

_LENIENT = ConfigDict(extra="ignore", populate_by_name=True)


class CreateSessionBody(BaseModel):
    model_config = _LENIENT
    session_id: str | None = Field(
        default=None,
        description="Id to use (1-128 of A-Z a-z 0-9 . _ -); omit for a random one.",
        json_schema_extra={"pattern": _ID_PATTERN, "maxLength": 128},
    )
    metadata: dict[str, Any] | None = Field(default=None, description="Free-form JSON object kept with the session.")
    user_id: str | None = Field(
        default=None, description="The user it belongs to; with an API key, only the key's own user."
    )


class MetadataBody(BaseModel):
    model_config = _LENIENT
    metadata: dict[str, Any] = Field(description="Keys to merge into the session's metadata; null removes a key.")


# Documented as the parts the engine stores; validated by the engine (after OpenViking's
# extra fields are dropped), so that its messages say what is wrong.
def _part_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["required"] = ["type", *[name for name in schema.get("required", []) if name != "type"]]
    return schema


_PARTS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "minItems": 1,
            "items": {"oneOf": [_part_schema(m) for m in (TextPart, ContextPart, ToolPart)]},
        },
        {"type": "null"},
    ]
}


class AddMessageBody(BaseModel):
    model_config = _LENIENT
    role: Literal["user", "assistant"] = Field(description="Who said it.")
    content: str | None = Field(
        default=None, description="The text (one text part). If parts are given too, parts win."
    )
    parts: Annotated[list[dict[str, Any]] | None, WithJsonSchema(_PARTS_SCHEMA)] = Field(
        default=None,
        description="The message as parts: {type: text, text}, {type: context, uri, context_type, abstract}, "
        "{type: tool, tool_id, tool_name, tool_input, tool_output, tool_status}.",
    )
    created_at: str | None = Field(default=None, description="When it was said (ISO 8601); default now.")
    message_id: str | None = Field(
        default=None,
        description="Your id for the message: the same id twice stores it once.",
        json_schema_extra={"pattern": _ID_PATTERN, "maxLength": 128},
    )


class UsedBody(BaseModel):
    model_config = _LENIENT
    contexts: list[str] | None = Field(default=None, description="URIs of contexts the turn used.")
    skill: dict[str, Any] | None = Field(default=None, description="A skill used: {uri, input, output, success}.")


class CommitBody(BaseModel):
    model_config = _LENIENT
    abstract: str | None = Field(default=None, description="Your one- or two-sentence summary of what is archived.")
    overview: str | None = Field(default=None, description="Your markdown overview of the conversation so far.")
    keep_recent_count: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000_000,
        validation_alias=AliasChoices("keep_recent_count", "keepRecentCount"),
        description="Leave this many newest messages live (also accepted as keepRecentCount).",
    )
    wait: bool | None = Field(default=None, description="Block (up to ~40 s) until Phase 2 has finished.")
    memories: list[MemoryInput] | None = Field(default=None, description="Long-term memories you took from them.")


class RetryBody(BaseModel):
    model_config = _LENIENT
    action: Literal["retry", "skip"] = Field(
        default="retry", description="'retry' summarises it again; 'skip' gives up on its summary."
    )


# Parts as OpenViking clients send them carry fields we do not keep (tool_uri, null
# tool_input...): drop those, so that the engine validates what it stores.
_PART_FIELDS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text"}),
    "context": frozenset({"type", "uri", "context_type", "abstract"}),
    "tool": frozenset({"type", "tool_id", "tool_name", "skill_uri", "tool_input", "tool_output", "tool_status"}),
}


def _openviking_parts(parts: list[dict[str, Any]] | None) -> list[Any] | None:
    if parts is None:
        return None
    cleaned: list[Any] = []
    for part in parts:
        kind = part.get("type")
        fields = _PART_FIELDS.get(kind) if isinstance(kind, str) else None
        if fields is None:
            cleaned.append(part)  # unknown type: the engine says what is wrong
            continue
        cleaned.append({k: v for k, v in part.items() if k in fields and not (v is None and k != "type")})
    return cleaned


# --- endpoints -------------------------------------------------------------------------------------

SessionIdPath = Annotated[
    str,
    Path(
        description="The session's id: 1-128 characters from A-Z a-z 0-9 . _ -",
        examples=["demo"],
        json_schema_extra={"pattern": _ID_PATTERN, "maxLength": 128},
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
    Path(description="A task id, as commit returned it.", json_schema_extra={"pattern": _ID_PATTERN, "maxLength": 128}),
]

_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (VIKING_MCP_API_KEYS).")
_bearer_scheme = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")


async def _documented_auth(
    _key: Annotated[str | None, Security(_api_key_scheme)] = None,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)] = None,
) -> None:
    """Declares the API key schemes in the OpenAPI document; the gate does the checking."""


def _actor(request: Request) -> Owner | None:
    state = request.scope.get("state")
    if isinstance(state, dict) and "viking_actor" in state:
        actor = state["viking_actor"]
        return actor if isinstance(actor, Owner) else None
    return _state(request).keyring.authenticate(key_from_headers(request.headers))


M = TypeVar("M", bound=BaseModel)


async def _call(request: Request, operation: Callable[[Engine, Owner | None], M]) -> JSONResponse:
    """Run one engine operation on a worker thread as the caller, and wrap its result."""
    engine, actor = _state(request).require_engine(), _actor(request)
    result = await run_in_threadpool(_guarded(request, lambda: operation(engine, actor)))
    return _ok(request, result)


async def _append(request: Request, session_id: str, body: AddMessageBody, parts: list[Any] | None) -> JSONResponse:
    """add_message, on the engine's batch thread (`engine/batching.py`) as the caller."""
    engine, actor = _state(request).require_engine(), _actor(request)

    def prepare() -> PreparedMessage:
        return engine.prepare_message(
            session_id, body.role, body.content, parts, body.created_at, body.message_id, parts_win=True
        )

    def write(prepared: PreparedMessage) -> MessageAdded:
        return engine.write_message(prepared, actor=actor)

    result = await engine.batched_writes.run(_guarded(request, prepare), _guarded(request, write))
    return _ok(request, result)


def _guarded(request: Request, run: Callable[Params, T]) -> Callable[Params, T]:
    """`run`, whose crashes (not the engine's coded errors) are logged and answered INTERNAL."""

    def guarded(*args: Params.args, **kwargs: Params.kwargs) -> T:
        try:
            return run(*args, **kwargs)
        except VikingError:
            raise
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.url.path)
            raise Internal(f"the server failed on this request ({type(exc).__name__}); see its log") from exc

    return guarded


def _ok(request: Request, result: BaseModel) -> JSONResponse:
    return _Json({"status": "ok", "result": result.model_dump(mode="json"), "time": _elapsed(request.scope)})


def _router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, responses=_ERROR_RESPONSES)

    # --- sessions ---

    @router.post("/sessions", response_model=Ok[SessionCreated], tags=["sessions"], summary="Create a session")
    async def create_session(request: Request, body: CreateSessionBody | None = None) -> JSONResponse:
        """Create a session (optional: adding a message creates one). 409 if the id is taken."""
        b = body or CreateSessionBody()
        return await _call(request, lambda e, a: e.create_session(b.session_id, b.metadata, b.user_id, actor=a))

    @router.get("/sessions", response_model=Ok[SessionPage], tags=["sessions"], summary="List sessions")
    async def list_sessions(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500, description="Sessions per page.")] = 50,
        cursor: Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page.")] = None,
    ) -> JSONResponse:
        """The caller's sessions, newest first, a page at a time."""
        return await _call(request, lambda e, a: e.list_sessions(limit, cursor, actor=a))

    @router.get("/sessions/{session_id}", response_model=Ok[SessionInfo], tags=["sessions"], summary="Get a session")
    async def get_session(
        request: Request,
        session_id: SessionIdPath,
        auto_create: Annotated[bool, Query(description="Create the session if it does not exist.")] = False,
    ) -> JSONResponse:
        """A session's counters, including pending_tokens (tokens of the live messages)."""
        return await _call(request, lambda e, a: e.get_session(session_id, auto_create, actor=a))

    @router.patch(
        "/sessions/{session_id}/metadata",
        response_model=Ok[MetadataUpdated],
        tags=["sessions"],
        summary="Merge session metadata",
    )
    async def update_metadata(request: Request, session_id: SessionIdPath, body: MetadataBody) -> JSONResponse:
        """Merge keys into the session's metadata (Zep's rule: other keys are kept)."""
        return await _call(request, lambda e, a: e.update_session(session_id, body.metadata, actor=a))

    @router.delete(
        "/sessions/{session_id}", response_model=Ok[SessionDeleted], tags=["sessions"], summary="Delete a session"
    )
    async def delete_session(request: Request, session_id: SessionIdPath) -> JSONResponse:
        """Delete a session with its messages and archives; extracted memories stay."""
        return await _call(request, lambda e, a: e.delete_session(session_id, actor=a))

    # --- messages, usage ---

    @router.post(
        "/sessions/{session_id}/messages", response_model=Ok[MessageAdded], tags=["messages"], summary="Add a message"
    )
    async def add_message(request: Request, session_id: SessionIdPath, body: AddMessageBody) -> JSONResponse:
        """Append a message (content, or parts; parts win when both are given). Creates the session."""
        return await _append(request, session_id, body, _openviking_parts(body.parts))

    @router.post(
        "/sessions/{session_id}/used", response_model=Ok[UsageRecorded], tags=["messages"], summary="Record usage"
    )
    async def record_used(request: Request, session_id: SessionIdPath, body: UsedBody | None = None) -> JSONResponse:
        """Record the contexts and skill a turn actually used."""
        b = body or UsedBody()
        return await _call(request, lambda e, a: e.record_usage(session_id, b.contexts, b.skill, actor=a))

    # --- commit, extract, tasks ---

    @router.post(
        "/sessions/{session_id}/commit", response_model=Ok[CommitResult], tags=["commit"], summary="Commit a session"
    )
    async def commit(request: Request, session_id: SessionIdPath, body: CommitBody | None = None) -> JSONResponse:
        """Archive the live messages now (Phase 1); summaries and memories follow in the background
        (poll GET /tasks/{task_id}, or pass wait=true). 412 when an earlier archive failed."""
        b = body or CommitBody()
        response = await _call(
            request,
            lambda e, a: e.commit(
                session_id, b.abstract, b.overview, b.keep_recent_count or 0, False, None, b.memories, actor=a
            ),
        )
        if not b.wait:
            return response
        # Wait for Phase 2 on the event loop, not on a pool thread that every request shares.
        engine, actor = _state(request).require_engine(), _actor(request)
        result = json.loads(bytes(response.body))["result"]
        if result.get("task_id"):
            task = await wait_for_task(engine, result["task_id"], engine.settings.commit_wait_seconds, actor)
            result["task_status"] = task.status
        return _Json({"status": "ok", "result": result, "time": _elapsed(request.scope)})

    @router.post(
        "/sessions/{session_id}/extract", response_model=Ok[ExtractResult], tags=["commit"], summary="Extract memories"
    )
    async def extract(request: Request, session_id: SessionIdPath) -> JSONResponse:
        """Extract long-term memories from the live messages now, without committing."""
        return await _call(request, lambda e, a: e.extract(session_id, actor=a))

    @router.get("/tasks/{task_id}", response_model=Ok[TaskRecord], tags=["tasks"], summary="Get a task")
    async def get_task(request: Request, task_id: TaskIdPath) -> JSONResponse:
        """A background task: status pending/running/completed/failed, result, error."""
        return await _call(request, lambda e, a: e.get_task(task_id, actor=a))

    @router.get("/tasks", response_model=Ok[TaskList], tags=["tasks"], summary="List tasks")
    async def list_tasks(
        request: Request,
        task_type: Annotated[Literal["session_commit", "session_extract"] | None, Query()] = None,
        status: Annotated[Literal["pending", "running", "completed", "failed"] | None, Query()] = None,
        resource_id: Annotated[str | None, Query(max_length=128, description="Only this session's tasks.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> JSONResponse:
        """The caller's background tasks, newest first."""
        return await _call(request, lambda e, a: e.list_tasks(task_type, status, resource_id, limit, actor=a))

    # --- context, archives ---

    @router.get(
        "/sessions/{session_id}/context", response_model=Ok[SessionContext], tags=["context"], summary="Get context"
    )
    async def get_context(
        request: Request,
        session_id: SessionIdPath,
        token_budget: Annotated[
            int, Query(ge=0, le=2**53, description="Tokens to spend on archive summaries after the messages.")
        ] = HTTP_DEFAULT_TOKEN_BUDGET,
    ) -> JSONResponse:
        """The latest archive overview, earlier abstracts within budget, and the unsummarised messages."""
        return await _call(request, lambda e, a: e.get_context(session_id, token_budget, actor=a))

    @router.get(
        "/sessions/{session_id}/archives/{archive_id}",
        response_model=Ok[ArchiveDetail],
        tags=["context"],
        summary="Get an archive",
    )
    async def get_archive(
        request: Request,
        session_id: SessionIdPath,
        archive_id: ArchiveIdPath,
        offset: Annotated[int, Query(ge=0, le=2**53, description="Skip this many messages.")] = 0,
        limit: Annotated[int | None, Query(ge=1, le=100_000, description="At most this many messages.")] = None,
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

        return await _call(request, read)

    @router.post(
        "/sessions/{session_id}/archives/{archive_id}/retry",
        response_model=Ok[RetryResult],
        tags=["context"],
        summary="Retry or skip a failed archive",
    )
    async def retry_archive(
        request: Request, session_id: SessionIdPath, archive_id: ArchiveIdPath, body: RetryBody | None = None
    ) -> JSONResponse:
        """Queue a failed archive's Phase 2 again, or skip it, so that commits proceed."""
        action = (body or RetryBody()).action
        return await _call(request, lambda e, a: e.retry_archive(session_id, archive_id, action, actor=a))

    # --- memories ---

    @router.get("/memories/search", response_model=Ok[MemorySearchResult], tags=["memories"], summary="Search memories")
    async def search_memories(
        request: Request,
        query: Annotated[str, Query(min_length=1, max_length=2000, description="What to look for.")],
        category: Annotated[MemoryCategory | None, Query(description="Only this category.")] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> JSONResponse:
        """Full-text search (BM25) over the caller's long-term memories, best first."""
        return await _call(request, lambda e, a: e.search_memories(query, category, limit, actor=a))

    return router


# --- error handlers ----------------------------------------------------------------------------------


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    errors = list(exc.errors())
    for error in errors[:3]:
        loc = [str(p) for p in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            problems.append(f"the body is not valid JSON ({detail})" if detail else "the body is not valid JSON")
            continue
        if loc and loc[0] == "body" and len(loc) == 1 and error.get("type") == "missing":
            problems.append("a JSON body is required")
            continue
        where = ".".join(loc) or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request: " + "; ".join(problems) + more


_HTTP_CODES = {
    400: ErrorCode.INVALID_ARGUMENT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.ALREADY_EXISTS,
    412: ErrorCode.FAILED_PRECONDITION,
    413: ErrorCode.RESOURCE_EXHAUSTED,
    503: ErrorCode.UNAVAILABLE,
}


def _install_error_handlers(app: FastAPI) -> None:
    async def viking_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, VikingError)
        return _error_from(exc, request.scope)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(ErrorCode.INVALID_ARGUMENT, _describe_validation(exc), request.scope)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            message = f"no such endpoint: {request.method} {request.url.path[:200]}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path[:200]}"
        elif status == 400 and exc.detail == "There was an error parsing the body":
            message = "the body could not be read as JSON (is it UTF-8?)"
        else:
            message = str(exc.detail)
        default = ErrorCode.INVALID_ARGUMENT if status < 500 else ErrorCode.INTERNAL
        response = error_response(_HTTP_CODES.get(status, default), message, request.scope, status=status)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def crash(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
        return error_response(ErrorCode.INTERNAL, "internal error; see the server log", request.scope)

    app.add_exception_handler(VikingError, viking_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)


# --- the app ---------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


def build_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    keyring: KeyRing | None = None,
    host: str | None = None,
    run_worker: bool | None = None,
) -> FastAPI:
    """The HTTP app: /api/v1 (OpenViking's session API), /mcp (streamable HTTP MCP), /health.

    Without `engine` the app's lifespan opens one on `settings` and runs its Phase 2
    worker; with one, the caller owns it (the app never closes it) and a worker runs only
    with `run_worker=True`. `keyring` defaults to the keys in the environment. `host` is
    the address served on: on loopback, requests must carry a loopback Host header (no
    DNS rebinding); None (in-process use) skips that check.
    """
    state = HttpState(
        settings=settings,
        keyring=keyring if keyring is not None else keyring_from_env(),
        host=host,
        engine=engine,
        owns_engine=engine is None,
        run_worker=engine is None if run_worker is None else run_worker,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state.engine is None:
            state.engine = await anyio.to_thread.run_sync(Engine, settings)
        current = state.engine
        if state.run_worker:
            state.worker = Phase2Worker(current, threads=settings.phase2_workers)
            state.worker.start()
        # The MCP face shares the engine and this app's worker: its own lifespan runs none.
        mcp_server = build_server(replace(settings, phase2_workers=0), engine=current, keyring=state.keyring)
        mcp_host, security = _mcp_security(host)
        mcp_server.streamable_http_app(streamable_http_path=MCP_PATH, host=mcp_host, transport_security=security)
        manager = mcp_server.session_manager
        logger.info("viking-mcp %s: HTTP API and MCP on data in %s", __version__, settings.store_label)
        try:
            async with manager.run():
                state.mcp = manager
                yield
        finally:
            state.mcp = None
            worker, state.worker = state.worker, None
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)
            if state.owns_engine:
                state.engine = None
                await anyio.to_thread.run_sync(current.close)

    app = FastAPI(
        title="viking-mcp",
        version=__version__,
        summary="Conversation memory for LLM agents: OpenViking's session API, and MCP at /mcp.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.viking = state
    _install_error_handlers(app)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, without the 422 responses this app never gives (they are 400s)."""
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            for path_item in document.get("paths", {}).values():
                for operation in path_item.values():
                    if isinstance(operation, dict):
                        operation.get("responses", {}).pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health", response_model=Health, tags=["system"], summary="Health")
    async def health() -> dict[str, str]:
        """Liveness; needs no key."""
        return {"status": "ok", "version": __version__}

    app.include_router(_router(), dependencies=[Depends(_documented_auth)])
    endpoint = _McpEndpoint(state)
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint, include_in_schema=False))
    app.router.routes.append(Route(MCP_PATH + "/", endpoint=endpoint, include_in_schema=False))
    max_body = max(MIN_BODY_LIMIT, 2 * settings.limits.max_message_bytes + 64 * 1024)
    app.add_middleware(_Gate, state=state, max_body=max_body)
    return app


def _stopped(signum: int, _frame: object) -> None:
    logger.info("stopped by %s", signal.Signals(signum).name)


def serve_http(settings: Settings, host: str, port: int) -> None:
    """Serve the HTTP app with uvicorn until SIGINT/SIGTERM. Logs go to stderr only.

    Refuses (SystemExit 2) to listen beyond loopback without API keys configured."""
    import uvicorn

    keyring = keyring_from_env()
    if not is_loopback(host) and not keyring.enabled:
        sys.stderr.write(
            f"viking-mcp: refusing to serve on {host} without API keys: anyone who can reach it could read "
            "every session. Set VIKING_MCP_API_KEYS (or VIKING_MCP_KEYS_FILE / VIKING_MCP_ADMIN_KEY), "
            "or listen on 127.0.0.1.\n"
        )
        sys.stderr.flush()
        raise SystemExit(2)
    # Opened here, before the port is bound, so that a bad data directory is a one-line error.
    engine = Engine(settings)
    try:
        app = build_app(settings, engine=engine, keyring=keyring, host=host, run_worker=True)
        # This process serves until stopped: its start-up heap is left out of later garbage
        # collections, a little after it starts and once the tokenizer loads (viking_mcp/heap.py).
        settle_later(engine)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # uvicorn's loggers propagate to ours: stderr only
            lifespan="on",
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        server = uvicorn.Server(config)
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again to die of
        # it; with this handler in place the command exits 0 instead (Ctrl-C still gives 130).
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stopped) if on_main_thread else None
        try:
            server.run()  # uvicorn exits (SystemExit 1 or 3) when it cannot bind or start
        except SystemExit:
            if server.started:
                raise
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous)
        if not server.started:
            sys.stderr.write(f"viking-mcp: could not serve HTTP on {host}:{port} (the reason is logged above)\n")
            sys.stderr.flush()
            raise SystemExit(2)
    finally:
        engine.close()


__all__ = [
    "HTTP_STATUS",
    "ErrorEnvelope",
    "HttpState",
    "Ok",
    "build_app",
    "error_response",
    "is_loopback",
    "serve_http",
]
