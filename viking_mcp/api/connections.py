"""The HTTP server's connections: a deadline for each request's headers, and a cap on how many are open.

uvicorn times out nothing before a request's headers are complete: its keep-alive timer
starts only after an answer, and any byte received stops it. A client that opens
connections and sends its headers a byte at a time (slowloris) holds each one for as
long as it likes, until the process runs out of file descriptors and `/health` no longer
answers (uvicorn issue #157 lists the missing `--timeout-request-start`; Go's
`ReadHeaderTimeout` and Node's `headersTimeout` are the same idea).

`guarded_connections` gives uvicorn (`Config(http=...)`) a protocol that wraps uvicorn's
own, through asyncio's public protocol interface only:

- A connection must deliver a request's headers within `header_timeout` of opening, and
  of each answer after that; otherwise it is closed (with a 408 if it had started one).
- Past `max_connections` open connections, a new one is answered 503 and closed at once.

When a request's headers are complete, uvicorn starts the app's task from inside our
`data_received` (or, for a pipelined request, from the previous request's task), so the
task inherits a context variable naming its connection; `requests_tracked`, around the
app, reads it to stop the deadline while a request is being served and start it again
after. The request body has a deadline of its own, in the request guard (app.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from viking_mcp.errors import ErrorCode

logger = logging.getLogger(__name__)


@dataclass
class ConnectionLimits:
    """What every connection of one server shares: the limits, and how many are open."""

    header_timeout: float
    max_connections: int
    open: int = field(default=0, init=False)


class _GuardedConnection(asyncio.Protocol):
    """uvicorn's HTTP protocol for one connection, behind a header deadline."""

    limits: ConnectionLimits  # set by guarded_connections

    def __init__(self, **uvicorn_arguments: Any) -> None:
        self._uvicorn_arguments = uvicorn_arguments
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request arrived since the deadline started
        self._serving = 0  # requests whose app is running

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self.limits.open >= self.limits.max_connections:
            logger.warning("refusing a connection: %d are open (VIKING_MCP_HTTP_MAX_CONNECTIONS)", self.limits.open)
            message = f"the server has {self.limits.open} open connections, its maximum; retry in a moment"
            transport.write(_response(503, "Service Unavailable", ErrorCode.UNAVAILABLE, message))
            transport.close()
            return
        self.limits.open += 1
        self._inner = AutoHTTPProtocol(**self._uvicorn_arguments)
        self._inner.connection_made(transport)
        self._start_deadline()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._deadline is not None:
            self._partial = True
        token = _connection.set(self)  # inherited by the app task this data may start
        try:
            self._inner.data_received(data)
        finally:
            _connection.reset(token)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return
        self.limits.open -= 1
        self._stop_deadline()
        self._inner.connection_lost(exc)
        self._inner = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # --- the deadline, stopped while a request is served --------------------------------------

    def request_started(self) -> None:
        self._serving += 1
        self._stop_deadline()

    def request_finished(self) -> None:
        self._serving -= 1
        if self._serving == 0 and self._inner is not None:
            self._start_deadline()

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._partial = False
        self._deadline = asyncio.get_running_loop().call_later(self.limits.header_timeout, self._expired)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._partial:  # a client between requests gets no answer it did not ask for
            logger.warning(
                "closing a connection that sent no complete request headers in %g s "
                "(VIKING_MCP_HTTP_HEADER_TIMEOUT_SECONDS)",
                self.limits.header_timeout,
            )
            message = f"the request headers did not arrive within {self.limits.header_timeout:g} s"
            transport.write(_response(408, "Request Timeout", ErrorCode.UNAVAILABLE, message))
        transport.close()


_connection: ContextVar[_GuardedConnection | None] = ContextVar("viking_connection", default=None)


def _response(status: int, reason: str, code: ErrorCode, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the API's error envelope, for a connection the app never sees."""
    body = json.dumps({"status": "error", "error": {"code": code.value, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def guarded_connections(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """A protocol class for uvicorn's `Config(http=...)`; wrap the app in `requests_tracked`."""

    class GuardedConnection(_GuardedConnection):
        limits = ConnectionLimits(header_timeout, max_connections)

    return GuardedConnection


def requests_tracked(app: ASGIApp) -> ASGIApp:
    """`app`, telling its connection when a request starts and ends (see the module's docstring)."""

    async def tracked(scope: Scope, receive: Receive, send: Send) -> None:
        connection = _connection.get()
        if connection is None or scope["type"] != "http":
            await app(scope, receive, send)
            return
        connection.request_started()
        try:
            await app(scope, receive, send)
        finally:
            connection.request_finished()

    return tracked
