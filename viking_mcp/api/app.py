"""The HTTP app: OpenViking's session API at /api/v1 and MCP (streamable HTTP) at /mcp.

One ASGI app, one engine, one Phase 2 worker: a session written over REST is the same
session an agent reads over MCP. The routes are module-level functions, by area, in
`sessions.py`, `messages.py`, `commits.py`, `context.py` and `memories.py`; what they share
(the envelope, one engine call) is in `envelope.py`; MCP at /mcp, its sessions bound to
keys and counted per key, in `mcp_endpoint.py`; the connections' limits in `connections.py`.
This module holds the app: the request guard in front of everything, error handlers, and
`serve_http`.

Every failure a client can cause is a 4xx with a code, never a 5xx: validation errors
(including bad JSON) are 400 INVALID_ARGUMENT, unknown routes 404 NOT_FOUND, bodies over
the size limit 413 RESOURCE_EXHAUSTED (refused before they are read), a web page of
another origin changing data 403 PERMISSION_DENIED, a body slower than its deadline 408.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from viking_mcp import __version__
from viking_mcp.api.commits import commits
from viking_mcp.api.context import context
from viking_mcp.api.envelope import API_PREFIX, HttpState, error_response
from viking_mcp.api.mcp_endpoint import McpEndpoint, SessionsPerKey
from viking_mcp.api.memories import memories
from viking_mcp.api.messages import messages
from viking_mcp.api.search import search
from viking_mcp.api.sessions import sessions
from viking_mcp.auth import KeyRing, key_from_headers, keyring_from_env
from viking_mcp.config import Settings
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.errors import ErrorCode, VikingError
from viking_mcp.heap import settle_later
from viking_mcp.mcp.server import build_server

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
# Request bodies past this are refused (413) before they are read; a message at the
# engine's own limit (VIKING_MCP_MAX_MESSAGE_BYTES) still fits, JSON escaping included.
MIN_BODY_LIMIT = 2 * 1024 * 1024

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


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


# --- the request guard: Host and Origin checks, API key, body size and deadline ---------------------------

# Methods that change data: a web page can send these to any site (a form, a fetch) without asking first.
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _origin_allowed(origin: str, host_header: str) -> bool:
    """An Origin this server takes changes from: its own (the one the Host header names), or a loopback page's."""
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not hostname:
        return False
    return parts.netloc.lower() == host_header.lower() or is_loopback(hostname)


def _cross_origin(method: str, headers: Headers) -> str | None:
    """Why a browser's request from another site's page is refused, or None to let it through.

    Go's `http.CrossOriginProtection` in order: safe methods pass; then a browser's
    Sec-Fetch-Site (`same-origin`, or `none` for what the user typed); then, for browsers
    that do not send it, the Origin. A request with neither comes from outside a browser
    (curl, the SDKs, the OpenClaw plugin): nothing to check. This keeps a page the user
    happens to visit from changing data on a server that has no keys (the issue's B13)."""
    if method not in _UNSAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site in ("same-origin", "none"):
        return None
    origin = headers.get("origin")
    if origin is None and site is None:
        return None
    if origin is not None and _origin_allowed(origin, headers.get("host", "")):
        return None
    return (
        f"cross-origin request refused: a page at {(origin or site or '')[:100]!r} may not change data here; "
        "only this server's own origin and loopback pages may. Clients outside a browser send no Origin header"
    )


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0").strip() != "0" or "transfer-encoding" in headers


class _RequestGuard:
    """Pure ASGI middleware in front of everything (so it never breaks MCP's streaming).

    - On a loopback bind, the Host header must name loopback (no DNS rebinding into a
      server that may have no keys).
    - A change (POST, PUT, PATCH, DELETE) to /api/... or /mcp from a web page of another
      origin is refused, keys or not (`_cross_origin`).
    - /api/... and /mcp need an API key when keys are configured (401 otherwise); the
      caller's identity goes into the request state for the endpoints.
    - Bodies over `max_body` are refused with 413 before they are read; a body is read
      whole, within `body_timeout` (408 otherwise), then replayed to the app.
    """

    def __init__(self, app: ASGIApp, state: HttpState, max_body: int, body_timeout: float) -> None:
        self.app = app
        self.state = state
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["viking_started"] = time.perf_counter()
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is None and _has_body(headers):
            body, refusal = await self._read_body(scope, receive)
            receive = _replay(body, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        """The answer to a request its headers alone refuse; None lets it through."""
        host = self.state.host
        if host is not None and is_loopback(host):
            name = _host_name(headers.get("host", "")).lower()
            if name not in _LOOPBACK_NAMES:
                message = f"Host {name[:100]!r} is not allowed: this server listens on loopback only"
                return error_response(ErrorCode.PERMISSION_DENIED, message, scope)
        path: str = scope["path"]
        if path in (API_PREFIX, MCP_PATH) or path.startswith((API_PREFIX + "/", MCP_PATH + "/")):
            if (cross_origin := _cross_origin(scope["method"], headers)) is not None:
                return error_response(ErrorCode.PERMISSION_DENIED, cross_origin, scope)
            try:
                scope["state"]["viking_actor"] = self.state.keyring.authenticate(key_from_headers(headers))
            except VikingError as exc:
                return error_response(exc.code, exc.message, scope)
        if (length := headers.get("content-length")) is not None:
            try:
                too_large = int(length) > self.max_body
            except ValueError:
                return error_response(ErrorCode.INVALID_ARGUMENT, "Content-Length is not a number", scope)
            if too_large:
                return self._too_large(scope)
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, JSONResponse | None]:
        """The body, read whole within the size limit and the deadline; or the answer refusing it.

        The deadline is for the whole body, not each read: a client dripping a byte at a
        time would otherwise hold the request (and its connection) for as long as it liked."""
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.body_timeout) as waited:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break  # disconnected: the app will see what arrived
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    return b"", self._too_large(scope)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if waited.cancelled_caught:
            late = (
                f"the request body did not arrive within {self.body_timeout:g} s; "
                "send it faster, or raise VIKING_MCP_HTTP_BODY_TIMEOUT_SECONDS"
            )
            response = error_response(ErrorCode.UNAVAILABLE, late, scope, status=408)
            response.headers["Connection"] = "close"  # the rest of the body is not worth waiting for
            return b"", response
        return b"".join(chunks), None

    def _too_large(self, scope: Scope) -> JSONResponse:
        message = f"request body is larger than {self.max_body} bytes"
        response = error_response(ErrorCode.RESOURCE_EXHAUSTED, message, scope)
        response.headers["Connection"] = "close"  # the unread body is not worth draining
        return response


def _replay(body: bytes, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


# --- MCP at /mcp ---------------------------------------------------------------------------------


def _mcp_security(host: str | None) -> tuple[str, TransportSecuritySettings | None]:
    """The SDK's DNS-rebinding protection for a loopback bind; otherwise off (keys protect it)."""
    if host is not None and is_loopback(host):
        return host, None  # the SDK enables its protection for loopback hosts itself
    return "0.0.0.0", TransportSecuritySettings(enable_dns_rebinding_protection=False)


_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (VIKING_MCP_API_KEYS).")
_bearer_scheme = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")


async def _documented_auth(
    _key: Annotated[str | None, Security(_api_key_scheme)] = None,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)] = None,
) -> None:
    """Declares the API key schemes in the OpenAPI document; the request guard does the checking."""


# --- error handlers ----------------------------------------------------------------------------------


def _describe_validation(exc: RequestValidationError) -> str:
    errors = list(exc.errors())
    problems = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            problems.append(f"the body is not valid JSON ({detail})" if detail else "the body is not valid JSON")
        elif where == "body" and error.get("type") == "missing":
            problems.append("a JSON body is required")
        else:
            problems.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request: " + "; ".join(problems) + more


async def _viking_error(request: Request, exc: VikingError) -> JSONResponse:
    return error_response(exc.code, exc.message, request.scope, status=exc.http_status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(ErrorCode.INVALID_ARGUMENT, _describe_validation(exc), request.scope)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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
    response = error_response(ErrorCode.for_http_status(status) or default, message, request.scope, status=status)
    response.headers.update(exc.headers or {})
    return response


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return error_response(ErrorCode.INTERNAL, "internal error; see the server log", request.scope)


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
    state = HttpState(keyring=keyring if keyring is not None else keyring_from_env(), host=host, engine=engine)
    run_worker = engine is None if run_worker is None else run_worker

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        current = engine if engine is not None else await anyio.to_thread.run_sync(Engine, settings)
        state.engine = current
        worker = Phase2Worker(current, threads=settings.phase2_workers) if run_worker else None
        if worker is not None:
            worker.start()
        # The MCP face shares the engine and this app's worker: its own lifespan runs none.
        mcp_server = build_server(replace(settings, phase2_workers=0), engine=current, keyring=state.keyring)
        mcp_host, security = _mcp_security(host)
        mcp_server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            host=mcp_host,
            transport_security=security,
            session_idle_timeout=settings.http_mcp_session_idle_seconds,
        )
        manager = mcp_server.session_manager
        logger.info("viking-mcp %s: HTTP API and MCP on data in %s", __version__, settings.store_label)
        try:
            async with manager.run():
                state.mcp = manager
                yield
        finally:
            state.mcp = None
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)
            if engine is None:
                state.engine = None
                await anyio.to_thread.run_sync(current.close)

    app = FastAPI(
        title="viking-mcp",
        version=__version__,
        summary="Conversation memory for LLM agents: OpenViking's session API, and MCP at /mcp.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        exception_handlers={
            VikingError: _viking_error,
            RequestValidationError: _validation_error,
            StarletteHTTPException: _http_error,
            Exception: _crash,
        },
    )
    app.state.viking = state

    def openapi() -> dict[str, Any]:
        """FastAPI's document, without the 422 responses this app never gives (they are 400s)."""
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            for path_item in document["paths"].values():
                for operation in path_item.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                document["components"]["schemas"].pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health", response_model=Health, tags=["system"], summary="Health")
    async def health() -> dict[str, str]:
        """Liveness; needs no key."""
        return {"status": "ok", "version": __version__}

    for routes in (sessions, messages, commits, context, memories, search):
        app.include_router(routes, dependencies=[Depends(_documented_auth)])
    mcp_endpoint = McpEndpoint(
        state, SessionsPerKey(settings.http_mcp_sessions_per_key, settings.http_mcp_session_idle_seconds)
    )
    for path in (MCP_PATH, MCP_PATH + "/"):
        app.router.routes.append(Route(path, endpoint=mcp_endpoint, include_in_schema=False))
    max_body = max(MIN_BODY_LIMIT, 2 * settings.limits.max_message_bytes + 64 * 1024)
    app.add_middleware(_RequestGuard, state=state, max_body=max_body, body_timeout=settings.http_body_timeout_seconds)
    return app


def _stopped(signum: int, _frame: object) -> None:
    logger.info("stopped by %s", signal.Signals(signum).name)


# Connections waiting to be accepted. asyncio accepts up to this many at once, before any
# is refused, and a refused one holds its descriptor until the next turn of the loop.
_ACCEPT_BACKLOG = 256
# File descriptors kept free of connections: the database, its journal, the listening socket,
# logs (64), and two batches of accepts (see above).
_RESERVED_FILES = 64 + 2 * _ACCEPT_BACKLOG


def _connection_cap(wanted: int | None) -> int:
    """VIKING_MCP_HTTP_MAX_CONNECTIONS, within the process's open-file limit: past that limit
    `accept()` fails and even /health goes unanswered, so connections are refused first."""
    unbounded = 1_000_000
    try:
        import resource  # not on Windows
    except ImportError:
        return wanted or unbounded
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = 1 << 62 if hard == resource.RLIM_INFINITY else hard
    # Like Go's runtime and most servers, take what the hard limit allows first: macOS starts
    # processes at 256, which would leave no room at all. (macOS refuses more than 10240.)
    for raised in (min(ceiling, 65_536), 10_240):
        if soft != resource.RLIM_INFINITY and soft < raised <= ceiling:
            with suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
                break
    room = unbounded if soft == resource.RLIM_INFINITY else max(soft - _RESERVED_FILES, soft // 4, 1)
    if wanted is not None and wanted > room:
        logger.warning("at most %d HTTP connections: the open-file limit is %d (ulimit -n)", room, soft)
    return min(wanted or room, room)


def serve_http(settings: Settings, host: str, port: int) -> None:
    """Serve the HTTP app with uvicorn until SIGINT/SIGTERM. Logs go to stderr only.

    Refuses (SystemExit 2) to listen beyond loopback without API keys configured."""
    import uvicorn

    from viking_mcp.api.connections import guarded_connections, requests_tracked  # uvicorn's protocol, wrapped

    keyring = keyring_from_env()
    if not is_loopback(host) and not keyring.enabled:
        sys.stderr.write(
            f"viking-mcp: refusing to serve on {host} without API keys: anyone who can reach it could read "
            "every session. Set VIKING_MCP_API_KEYS (or VIKING_MCP_KEYS_FILE / VIKING_MCP_ADMIN_KEY), "
            "or listen on 127.0.0.1.\n"
        )
        raise SystemExit(2)
    # Opened here, before the port is bound, so that a bad data directory is a one-line error.
    engine = Engine(settings)
    try:
        app = build_app(settings, engine=engine, keyring=keyring, host=host, run_worker=True)
        # This process serves until stopped: its start-up heap is left out of later garbage
        # collections, a little after it starts and once the tokenizer loads (viking_mcp/heap.py).
        settle_later(engine)
        # A deadline on each request's headers and a cap on open connections (api/connections.py).
        connections = guarded_connections(
            settings.http_header_timeout_seconds, _connection_cap(settings.http_max_connections)
        )
        config = uvicorn.Config(
            requests_tracked(app),
            host=host,
            port=port,
            log_config=None,  # uvicorn's loggers propagate to ours: stderr only
            lifespan="on",
            timeout_graceful_shutdown=5,
            server_header=False,
            backlog=_ACCEPT_BACKLOG,
            http=connections,
            ws="none",  # no WebSocket routes: an upgrade request is answered as plain HTTP
            # requests_tracked finds a request's connection in a context variable its task inherits
            reset_contextvars=False,
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
            raise SystemExit(2)
    finally:
        engine.close()
