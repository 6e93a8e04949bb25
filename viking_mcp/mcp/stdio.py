"""Serving MCP on stdio: the SDK's transport, plus an answer for the request lines it drops.

The SDK's stdin reader drops a line it cannot read as JSON-RPC (not JSON, nested deeper
than its JSON parser's limit of about 200 levels, or not a JSON-RPC message) without
answering it, so a host would wait out its own timeout, a minute or more, for an answer
that never comes (modelcontextprotocol/python-sdk#2751).

The SDK reads stdin through `sys.stdin`. `serve_stdio` puts `AnsweredStdin` there for
the duration: it hands the SDK every line unchanged, except a line the SDK would drop
(checked with the SDK's own parser, `mcp_types.jsonrpc_message_adapter`) that names a
request id. That line is replaced by a request for `UNREADABLE_METHOD`, which the
`UnreadableLines` extension answers with the JSON-RPC error for it (parse error -32700,
or invalid request -32600) under the request's own id. So the answer goes out through the
SDK's own writer, in order with every other, and only the SDK's public API is used. A line
with no id to answer is logged on stderr and dropped: nobody can be waiting for it by id.

A JSON-RPC batch (a JSON array of messages on one line; MCP 2025-03-26 allowed them,
2025-06-18 removed them) is one such line: the SDK reads one message per line and has no
way to run a batch (over HTTP it refuses one with a single -32600). Here none of the
batch's messages is run, each request in it is answered with an invalid request error
(-32600) under its own id, saying to send one message per line, and the refusal is
logged. Running some of a batch and refusing the rest would leave a client guessing what
happened; refusing it whole means the client can simply send the same messages again,
one per line.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import IO, Any, NoReturn

import mcp_types as types
from mcp.server import MCPServer, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

logger = logging.getLogger(__name__)

UNREADABLE_METHOD = "viking-mcp/unreadable"
RequestId = int | str
# The characters that matter when walking a JSON text for its top-level keys.
_STRUCTURE = re.compile(r'["{}\[\],]')
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_decoder = json.JSONDecoder()
# A modern (2026-07-28) connection refuses a request without the envelope its client stamps
# on every request: the replacement request carries the last one seen.
_ENVELOPE_KEYS = (types.PROTOCOL_VERSION_META_KEY, types.CLIENT_CAPABILITIES_META_KEY)
BATCH_REFUSED = (
    "Invalid request: this server does not take JSON-RPC batches, and ran none of the batch's "
    "messages; send each message as a line of its own"
)


class UnreadableParams(types.RequestParams):
    """What `AnsweredStdin` says about a line it replaced: the JSON-RPC error to answer with."""

    code: int
    message: str


async def _answer_unreadable(_ctx: ServerRequestContext[Any, Any], params: UnreadableParams) -> NoReturn:
    raise MCPError(code=params.code, message=params.message)


class UnreadableLines(Extension):
    """Answers the requests `AnsweredStdin` put in place of unreadable lines."""

    identifier = "io.github.viking-mcp/unreadable-lines"

    def methods(self) -> Sequence[MethodBinding]:
        return [MethodBinding(method=UNREADABLE_METHOD, params_type=UnreadableParams, handler=_answer_unreadable)]


class AnsweredStdin(io.RawIOBase):
    """The bytes of `source`, a line at a time, with each line the SDK would drop replaced
    by a request for the error answer it is owed (or left out, if it names no request)."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self._pending = b""
        self._envelope: dict[str, Any] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            line = self._source.readline()
            if not line:
                return 0  # end of input
            self._pending = self._checked(line)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _checked(self, line: bytes) -> bytes:
        # Decoded as the SDK decodes stdin, so that both read the same text.
        text = line.decode("utf-8", errors="replace")
        if not text.strip():
            return b""
        try:
            message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
        except ValidationError as exc:
            batch = batch_messages(text, exc)
            return self._refused_batch(batch) if batch is not None else self._replacement(text, exc)
        if isinstance(message, types.JSONRPCRequest):
            meta = (message.params or {}).get("_meta")
            if isinstance(meta, dict) and all(key in meta for key in _ENVELOPE_KEYS):
                self._envelope = {key: meta[key] for key in _ENVELOPE_KEYS}
        return line

    def _replacement(self, text: str, exc: ValidationError) -> bytes:
        request_id, code, message = unreadable_answer(text, exc)
        if request_id is None:
            logger.warning("dropped a stdin line that is not a JSON-RPC request: %s", message)
            return b""
        logger.warning("answered an unreadable request (id %r) with %s", request_id, message)
        return self._answer_request(request_id, code, message)

    def _refused_batch(self, batch: list[Any]) -> bytes:
        requests = [m for m in batch if isinstance(m, dict) and "method" in m]
        request_ids = list(dict.fromkeys(i for m in requests if (i := _request_id(m.get("id"))) is not None))
        shown = ", ".join(map(repr, request_ids[:10])) + (", ..." if len(request_ids) > 10 else "")
        logger.warning(
            "refused a JSON-RPC batch of %d messages, none of them run; answered the requests in it (ids %s) "
            "with invalid request: the client must send one message per line",
            len(batch), shown or "none",
        )  # fmt: skip
        return b"".join(self._answer_request(i, types.INVALID_REQUEST, BATCH_REFUSED) for i in request_ids)

    def _answer_request(self, request_id: RequestId, code: int, message: str) -> bytes:
        """The line that has the SDK answer `request_id` with this JSON-RPC error."""
        params: dict[str, Any] = {"code": code, "message": message}
        if self._envelope is not None:
            params["_meta"] = self._envelope
        request = {"jsonrpc": "2.0", "id": request_id, "method": UNREADABLE_METHOD, "params": params}
        return (json.dumps(request) + "\n").encode()


def batch_messages(text: str, exc: ValidationError) -> list[Any] | None:
    """The messages of a JSON-RPC batch, if the line the SDK could not read is one (a JSON array)."""
    if exc.errors()[0]["type"] == "json_invalid" or not text.lstrip().startswith("["):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, list) else None


def unreadable_answer(text: str, exc: ValidationError) -> tuple[RequestId | None, int, str]:
    """The id of the request in a line the SDK could not read, and the error it is owed."""
    reason = exc.errors()[0]
    if reason["type"] == "json_invalid":
        if "recursion limit" in reason["msg"]:
            return (
                find_request_id(text),
                types.INVALID_REQUEST,
                "RESOURCE_EXHAUSTED: the request is nested too deeply to read; "
                "send arguments nested at most a few dozen levels",
            )
        return find_request_id(text), types.PARSE_ERROR, f"Parse error: the line is not JSON ({reason['msg']})"
    # JSON (as deep as the SDK reads), but not a JSON-RPC message: answered only if it is a request.
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # what the SDK's parser read and the standard library's does not
        data = None
    request_id = _request_id(data.get("id")) if isinstance(data, dict) and "method" in data else None
    return request_id, types.INVALID_REQUEST, "Invalid request: not a JSON-RPC 2.0 request"


def find_request_id(line: str) -> RequestId | None:
    """The value of the top-level object's "id" key, found without parsing the whole line."""
    depth, expect_key, position = 0, False, 0
    try:
        while (found := _STRUCTURE.search(line, position)) is not None:
            char, position = found.group(), found.end()
            if char == '"':
                text, position = _decoder.raw_decode(line, found.start())
                after = _WHITESPACE.match(line, position)
                position = after.end() if after else position
                if expect_key and text == "id" and line.startswith(":", position):
                    value_at = _WHITESPACE.match(line, position + 1)
                    value, _ = _decoder.raw_decode(line, value_at.end() if value_at else position + 1)
                    return _request_id(value)
                expect_key = False
            elif char in "{[":
                depth += 1
                expect_key = char == "{" and depth == 1
            elif char in "}]":
                depth -= 1
            else:  # a comma
                expect_key = depth == 1
    except (ValueError, RecursionError):
        return None
    return None


def _request_id(value: object) -> RequestId | None:
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


async def serve_stdio(server: MCPServer[Any]) -> None:
    """Serve `server` on this process's stdin and stdout, until stdin closes."""
    stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BufferedReader(AnsweredStdin(stdin.buffer)), encoding="utf-8", errors="replace")
    try:
        await server.run_stdio_async()
    finally:
        sys.stdin = stdin
