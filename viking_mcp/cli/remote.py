"""The CLI's remote backend: a running server's HTTP API (`--url`, `--api-key`).

One request per call, with httpx (`httpx2`, the one the MCP SDK depends on). Answers come in OpenViking's
envelope, `{"status": "ok", "result": ...}` or `{"status": "error", "error": {"code",
"message"}}`; an error becomes the same coded exception the engine would have raised, so
the CLI reports it the same way in both modes.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2 as httpx
from pydantic import BaseModel, ValidationError

from viking_mcp import __version__
from viking_mcp.errors import (
    ErrorCode,
    Internal,
    InvalidArgument,
    Unavailable,
    error_for,
)
from viking_mcp.models import (
    OPENVIKING_TOKEN_BUDGET,
    ArchiveDetail,
    CommitResult,
    MemorySearchResult,
    MessageAdded,
    SessionContext,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionPage,
    TaskList,
    TaskRecord,
    parse_archive_id,
    validate_id,
)

if TYPE_CHECKING:
    from viking_mcp.engine.engine import ProgressCallback

API_PREFIX = "/api/v1"
# Longer than the server holds a commit with wait=true (at most 50 s).
TIMEOUT_SECONDS = 120.0

Result = TypeVar("Result", bound=BaseModel)


def _segment(value: str, what: str = "session_id") -> str:
    """One path segment: an id checked as the engine checks it (so that '' or 'a/b' is
    INVALID_ARGUMENT here as in embedded mode), and quoted so that no id can become another path."""
    if what == "archive_id":
        parse_archive_id(value)
    else:
        validate_id(value, what)
    return urllib.parse.quote(value, safe="")


def _printable_ascii(value: str, space: bool = False) -> bool:
    return all(" " < c < "\x7f" or (space and c == " ") for c in value)


class RemoteClient:
    """A running server, answering the CLI through the embedded `Client`'s methods."""

    def __init__(self, url: str, api_key: str | None, timeout: float = TIMEOUT_SECONDS) -> None:
        example = "e.g. http://127.0.0.1:1933"
        try:
            parts = urllib.parse.urlsplit(url.strip())
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
        except ValueError as exc:
            raise InvalidArgument(f"--url {url[:80]!r} is not a valid URL ({exc}); {example}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc or not parts.hostname:
            raise InvalidArgument(f"--url {url[:80]!r} is not an http(s) URL; {example}")
        if not _printable_ascii(url.strip()):
            raise InvalidArgument(
                f"--url {url[:80]!r} holds spaces, control or non-ASCII characters; {example} "
                "(percent-encode what a URL cannot hold)"
            )
        if api_key and not _printable_ascii(api_key, space=True):
            raise InvalidArgument(
                "--api-key (or VIKING_MCP_API_KEY) holds control or non-ASCII characters (a newline?); "
                "an API key is printable ASCII"
            )
        path = parts.path.rstrip("/")
        if path.endswith(API_PREFIX):  # accept the API's own address too
            path = path[: -len(API_PREFIX)]
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.api_key = api_key
        self.timeout = timeout

    def close(self) -> None:
        pass

    # --- one request ------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> Any:
        """The `result` of one API call, or the coded error it answered."""
        address = self.url + API_PREFIX + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            address += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json", "User-Agent": f"viking-mcp-cli/{__version__}"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        content = None
        if body is not None:
            content = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            # One request per command: no client kept open; redirects are not followed.
            response = httpx.request(method, address, content=content, headers=headers, timeout=self.timeout)
            status, raw = response.status_code, response.content
        except httpx.TimeoutException:
            raise Unavailable(f"{self.url} did not answer within {self.timeout:.0f} s") from None
        except httpx.ConnectError as exc:
            raise Unavailable(
                f"cannot reach {self.url} ({_reason(exc)}); is `viking-mcp serve --transport http` running there?"
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:  # a URL or header it will not send
            raise InvalidArgument(f"cannot send {method} {API_PREFIX}{path} to {self.url}: {exc}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise Unavailable(f"talking to {self.url} failed: {exc}") from None
        return self._result(method, path, status, raw)

    def _result(self, method: str, path: str, status: int, raw: bytes) -> Any:
        try:
            envelope = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            envelope = None
        if isinstance(envelope, dict) and envelope.get("status") == "error":
            error = envelope.get("error") or {}
            raise error_for(str(error.get("code", "INTERNAL")), str(error.get("message", f"HTTP {status}")))
        if 200 <= status < 300 and isinstance(envelope, dict) and "result" in envelope:
            return envelope["result"]
        code = ErrorCode.for_http_status(status) or (ErrorCode.INTERNAL if status >= 500 else ErrorCode.UNAVAILABLE)
        raise error_for(
            code.value,
            f"{method} {API_PREFIX}{path} answered HTTP {status} without a viking-mcp result; "
            f"is {self.url} a viking-mcp server?",
        )

    def _model(self, kind: type[Result], result: Any) -> Result:
        try:
            return kind.model_validate(result)
        except ValidationError as exc:
            raise Internal(f"{self.url} answered an unexpected {kind.__name__}: {exc.errors()[0]['msg']}") from None

    # --- sessions ---------------------------------------------------------------------------------

    def create_session(self, session_id: str | None, metadata: dict[str, Any] | None) -> SessionCreated:
        if session_id is not None:
            validate_id(session_id)
        body: dict[str, Any] = {"session_id": session_id, "metadata": metadata}
        result = self._request("POST", "/sessions", body={k: v for k, v in body.items() if v is not None})
        return self._model(SessionCreated, result)

    def list_sessions(self, limit: int, cursor: str | None) -> SessionPage:
        return self._model(SessionPage, self._request("GET", "/sessions", {"limit": limit, "cursor": cursor}))

    def get_session(self, session_id: str) -> SessionInfo:
        return self._model(SessionInfo, self._request("GET", f"/sessions/{_segment(session_id)}"))

    def delete_session(self, session_id: str) -> SessionDeleted:
        return self._model(SessionDeleted, self._request("DELETE", f"/sessions/{_segment(session_id)}"))

    # --- messages, commit, context ---------------------------------------------------------------

    def add_message(
        self,
        session_id: str,
        role: str,
        parts: list[Any] | None = None,
        *,
        content: str | None = None,
        created_at: str | None = None,
        message_id: str | None = None,
    ) -> MessageAdded:
        body = {"role": role, "content": content, "parts": parts, "created_at": created_at, "message_id": message_id}
        result = self._request(
            "POST", f"/sessions/{_segment(session_id)}/messages", body={k: v for k, v in body.items() if v is not None}
        )
        return self._model(MessageAdded, result)

    def commit_session(
        self,
        session_id: str,
        *,
        abstract: str | None = None,
        overview: str | None = None,
        keep_recent_count: int = 0,
        wait: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> CommitResult:
        # The server waits (bounded) when asked to; no progress comes back over one request.
        body: dict[str, Any] = {"keep_recent_count": keep_recent_count, "wait": wait}
        body.update({k: v for k, v in (("abstract", abstract), ("overview", overview)) if v is not None})
        return self._model(CommitResult, self._request("POST", f"/sessions/{_segment(session_id)}/commit", body=body))

    def get_session_context(self, session_id: str, token_budget: int = OPENVIKING_TOKEN_BUDGET) -> SessionContext:
        result = self._request("GET", f"/sessions/{_segment(session_id)}/context", {"token_budget": token_budget})
        return self._model(SessionContext, result)

    def get_session_archive(self, session_id: str, archive_id: str) -> ArchiveDetail:
        result = self._request("GET", f"/sessions/{_segment(session_id)}/archives/{_segment(archive_id, 'archive_id')}")
        return self._model(ArchiveDetail, result)

    # --- tasks, memories ---------------------------------------------------------------------------

    def get_task(self, task_id: str) -> TaskRecord:
        return self._model(TaskRecord, self._request("GET", f"/tasks/{_segment(task_id, 'task_id')}"))

    def list_tasks(self, task_type: str | None, status: str | None, resource_id: str | None, limit: int) -> TaskList:
        if resource_id is not None:
            validate_id(resource_id, "resource_id")
        query = {"task_type": task_type, "status": status, "resource_id": resource_id, "limit": limit}
        return self._model(TaskList, self._request("GET", "/tasks", query))

    def search_memories(self, query: str, category: str | None, limit: int) -> MemorySearchResult:
        result = self._request("GET", "/memories/search", {"query": query, "category": category, "limit": limit})
        return self._model(MemorySearchResult, result)


def _reason(exc: httpx.ConnectError) -> str:
    """Why a connection failed, as the OS said it ('Connection refused'), without httpx's wrapping."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return cause.strerror or str(cause) if isinstance(cause, OSError) else str(exc)
