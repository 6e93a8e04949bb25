"""The CLI's remote backend: a running server's HTTP API (`--url`, `--api-key`).

`RemoteClient` answers to the embedded `Client`'s method names, each one route of the API
(the table below), called with keyword arguments named as the route's parameters. One
request per call, with httpx (`httpx2`, the one the MCP SDK depends on). Answers come in
OpenViking's envelope, `{"status": "ok", "result": ...}` or `{"status": "error", "error":
{"code", "message"}}`; an error becomes the same coded exception the engine would have
raised, so the CLI reports it the same way in both modes.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import httpx2 as httpx
from pydantic import BaseModel, ValidationError

from viking_mcp import __version__, models
from viking_mcp.errors import ErrorCode, Internal, InvalidArgument, Unavailable, error_for

API_PREFIX = "/api/v1"
# Longer than the server holds a commit with wait=true (at most 50 s).
TIMEOUT_SECONDS = 120.0

Result = TypeVar("Result", bound=BaseModel)


def _printable_ascii(value: str, space: bool = False) -> bool:
    return all(" " < c < "\x7f" or (space and c == " ") for c in value)


def _check_ids(arguments: dict[str, Any]) -> None:
    """Ids checked as the engine checks them, so that '' or 'a/b' is INVALID_ARGUMENT here as
    in embedded mode, before any request is built."""
    for name, value in arguments.items():
        if name == "archive_id":
            models.parse_archive_id(value)
        elif name in ("session_id", "task_id", "resource_id") and value is not None:
            models.validate_id(value, name)


def _route(method: str, path: str, kind: type[Result]) -> Callable[..., Result]:
    """A `RemoteClient` method: `{name}` in `path` takes the argument of that name (quoted, so
    that no id can become another path); the others go in the query (GET) or the JSON body (POST)."""

    def call(self: RemoteClient, **arguments: Any) -> Result:
        arguments.pop("on_progress", None)  # the server waits (bounded) when asked; no progress comes back
        _check_ids(arguments)
        in_path = {k: urllib.parse.quote(v, safe="") for k, v in arguments.items() if f"{{{k}}}" in path}
        rest = {k: v for k, v in arguments.items() if k not in in_path and v is not None}
        result = self.request(method, path.format(**in_path), rest)
        try:
            return kind.model_validate(result)
        except ValidationError as exc:
            raise Internal(f"{self.url} answered an unexpected {kind.__name__}: {exc.errors()[0]['msg']}") from None

    return call


class RemoteClient:
    """A running server, answering the CLI through the embedded `Client`'s method names."""

    create_session = _route("POST", "/sessions", models.SessionCreated)
    list_sessions = _route("GET", "/sessions", models.SessionPage)
    get_session = _route("GET", "/sessions/{session_id}", models.SessionInfo)
    delete_session = _route("DELETE", "/sessions/{session_id}", models.SessionDeleted)
    add_message = _route("POST", "/sessions/{session_id}/messages", models.MessageAdded)
    commit_session = _route("POST", "/sessions/{session_id}/commit", models.CommitResult)
    get_session_context = _route("GET", "/sessions/{session_id}/context", models.SessionContext)
    get_session_archive = _route("GET", "/sessions/{session_id}/archives/{archive_id}", models.ArchiveDetail)
    get_task = _route("GET", "/tasks/{task_id}", models.TaskRecord)
    list_tasks = _route("GET", "/tasks", models.TaskList)
    search_memories = _route("GET", "/memories/search", models.MemorySearchResult)
    search = _route("POST", "/search", models.SearchResult)

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

    def request(self, method: str, path: str, parameters: dict[str, Any]) -> Any:
        """The `result` of one API call, or the coded error it answered. `parameters` go in the
        query of a GET, in the JSON body of a POST."""
        headers = {"Accept": "application/json", "User-Agent": f"viking-mcp-cli/{__version__}"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        content = None
        if method == "POST":
            content = json.dumps(parameters, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            # One request per command: no client kept open. Redirects are not followed, so the
            # X-API-Key goes to --url's origin only (never to another host, nor https -> http).
            response = httpx.request(
                method,
                self.url + API_PREFIX + path,
                params=parameters if method == "GET" else None,
                content=content,
                headers=headers,
                timeout=self.timeout,
                follow_redirects=False,
            )
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
        try:
            envelope = json.loads(response.content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            envelope = None
        status = response.status_code
        if isinstance(envelope, dict) and envelope.get("status") == "error":
            error = envelope.get("error") or {}
            raise error_for(str(error.get("code", "INTERNAL")), str(error.get("message", f"HTTP {status}")))
        if 200 <= status < 300 and isinstance(envelope, dict) and "result" in envelope:
            return envelope["result"]
        if 300 <= status <= 399:
            raise Unavailable(
                f"{method} {API_PREFIX}{path} was redirected (HTTP {status}) to "
                f"{_without_query(response.headers.get('Location', ''))}; redirects are not followed, "
                "so that the API key goes nowhere else: give the server's own address as --url"
            )
        code = ErrorCode.for_http_status(status) or (ErrorCode.INTERNAL if status >= 500 else ErrorCode.UNAVAILABLE)
        raise error_for(
            code.value,
            f"{method} {API_PREFIX}{path} answered HTTP {status} without a viking-mcp result; "
            f"is {self.url} a viking-mcp server?",
        )


def _without_query(location: str) -> str:
    """A redirect's target without its query (where a key or token may ride), for an error text."""
    try:
        return urllib.parse.urlsplit(location)._replace(query="", fragment="").geturl()[:200] or "nowhere"
    except ValueError:
        return "an invalid address"


def _reason(exc: httpx.ConnectError) -> str:
    """Why a connection failed, as the OS said it ('Connection refused'), without httpx's wrapping."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return cause.strerror or str(cause) if isinstance(cause, OSError) else str(exc)
