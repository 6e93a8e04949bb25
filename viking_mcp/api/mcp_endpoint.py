"""MCP over streamable HTTP at /mcp: each session bound to the key that opened it, and a few per key.

The MCP SDK's session manager keeps every session in one process-wide table (10,000 at
most) until it has been idle for 30 minutes. Left as it is, one key can fill that table
and every other tenant's new session is refused for half an hour (the issue's B1), and
any key can use or end a session another key opened (B11). So, in front of the manager:

- Each session is bound to its key: the SDK compares the `scope["user"]` of every
  request with the one that opened the session, and answers 404, as for a session that
  does not exist, when they differ (the MCP spec's advice).
- Each key may hold `per_key` sessions at once (VIKING_MCP_HTTP_MCP_SESSIONS_PER_KEY); one
  more is refused with 429 RESOURCE_EXHAUSTED, for that key only. A session stops
  counting when it is ended (DELETE), answered 404, or has been idle for `idle_timeout`
  (VIKING_MCP_HTTP_MCP_SESSION_IDLE_SECONDS, 10 minutes, which the SDK is given too),
  idle counted as the SDK counts it: from the end of the last request in flight. The
  count never drops before the SDK has let the session go; a session the SDK drops on
  its own (a crash) counts until its idle time is up.

Without keys there are no tenants: sessions are neither bound nor counted per key.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from viking_mcp.api.envelope import HttpState, error_response
from viking_mcp.auth import key_from_headers
from viking_mcp.errors import ErrorCode

SESSION_HEADER = "mcp-session-id"


def key_holder(key: str) -> AuthenticatedUser:
    """Who holds `key`, as the SDK knows a caller (only a digest of the key is kept)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return AuthenticatedUser(AccessToken(token=digest, client_id=digest, scopes=[]))


@dataclass
class _Session:
    in_flight: int = 0
    last_active: float = field(default_factory=time.monotonic)


@dataclass
class _KeySessions:
    open: dict[str, _Session] = field(default_factory=dict)
    opening: int = 0  # requests without a session id, being answered


class SessionsPerKey:
    """The MCP sessions each key holds open, to refuse a key past `per_key` of them."""

    def __init__(self, per_key: int, idle_timeout: float) -> None:
        self.per_key = per_key
        self.idle_timeout = idle_timeout
        self._keys: dict[str, _KeySessions] = {}

    def admit(self, holder: str) -> bool:
        """Room for one more session for `holder` (reserved until `opened`); False at the limit."""
        sessions = self._keys.setdefault(holder, _KeySessions())
        now = time.monotonic()
        for session_id, session in list(sessions.open.items()):
            if session.in_flight == 0 and now - session.last_active > self.idle_timeout:
                del sessions.open[session_id]  # the SDK has ended it too
        if len(sessions.open) + sessions.opening >= self.per_key:
            return False
        sessions.opening += 1
        return True

    def opened(self, holder: str, session_id: str | None) -> None:
        """The answer to an admitted request: the session it opened, if any."""
        sessions = self._keys[holder]
        sessions.opening -= 1
        if session_id is not None:
            sessions.open[session_id] = _Session()
        elif not sessions.open and not sessions.opening:
            del self._keys[holder]

    def request_started(self, holder: str, session_id: str) -> _Session | None:
        session = self._keys.get(holder, _KeySessions()).open.get(session_id)
        if session is not None:
            session.in_flight += 1
        return session

    def request_finished(self, holder: str, session_id: str, session: _Session, ended: bool) -> None:
        session.in_flight -= 1
        session.last_active = time.monotonic()
        sessions = self._keys.get(holder)
        if ended and sessions is not None and sessions.open.get(session_id) is session:
            del sessions.open[session_id]

    def count(self, holder: str) -> int:
        sessions = self._keys.get(holder)
        return 0 if sessions is None else len(sessions.open) + sessions.opening


class McpEndpoint:
    """Hands /mcp requests to the running MCP session manager (the request guard has checked the key)."""

    def __init__(self, state: HttpState, sessions: SessionsPerKey) -> None:
        self.state = state
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self.state.mcp
        if manager is None:
            message = "MCP is not running (the server is starting or stopping); retry in a moment"
            await error_response(ErrorCode.UNAVAILABLE, message, scope)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = key_from_headers(headers)
        if not key or not self.state.keyring.enabled:
            await manager.handle_request(scope, receive, send)
            return
        user = key_holder(key)
        scope["user"] = user
        holder = user.access_token.client_id
        session_id = headers.get(SESSION_HEADER)
        if session_id is None and scope["method"] == "POST":
            await self._open(manager, holder, scope, receive, send)
            return
        session = None if session_id is None else self.sessions.request_started(holder, session_id)
        if session_id is None or session is None:  # the SDK refuses it (400), or another key's (404)
            await manager.handle_request(scope, receive, send)
            return
        status: list[int] = []
        try:
            await manager.handle_request(scope, receive, _watched(send, status, []))
        finally:
            answered = status[0] if status else None
            ended = answered == 404 or (scope["method"] == "DELETE" and answered is not None and answered < 300)
            self.sessions.request_finished(holder, session_id, session, ended)

    async def _open(
        self, manager: StreamableHTTPSessionManager, holder: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A POST without a session id (an `initialize`, which opens one), if this key has room."""
        if not self.sessions.admit(holder):
            message = (
                f"this API key has {self.sessions.count(holder)} MCP sessions open, its maximum "
                "(VIKING_MCP_HTTP_MCP_SESSIONS_PER_KEY): end one (DELETE /mcp with its Mcp-Session-Id), "
                f"or retry once one has been idle for {self.sessions.idle_timeout:g} s"
            )
            await error_response(ErrorCode.RESOURCE_EXHAUSTED, message, scope, status=429)(scope, receive, send)
            return
        status: list[int] = []
        opened: list[str] = []
        session_id = None
        try:
            await manager.handle_request(scope, receive, _watched(send, status, opened))
            if opened and status[0] < 400:  # the SDK keeps a session only when its opening request succeeds
                session_id = opened[0]
        finally:
            self.sessions.opened(holder, session_id)


def _watched(send: Send, status: list[int], session_ids: list[str]) -> Send:
    """`send`, noting the answer's status and the session id it carries."""

    async def watching(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
            session_ids.extend(Headers(raw=message.get("headers", [])).getlist(SESSION_HEADER)[:1])
        await send(message)

    return watching
