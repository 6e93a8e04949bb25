"""The stdio transport: the SDK's, plus an answer for every request line it cannot read.

The SDK's stdin reader parses each line with pydantic's JSON parser, which stops at about
200 levels of nesting, and drops a line it cannot parse or validate without answering it:
the host then waits for its own timeout (a minute or more) instead of getting an error.
A tool argument may well nest that deep before our own limit answers RESOURCE_EXHAUSTED.

`AnsweringReadStream` wraps the reader's stream. Each line the SDK rejected gets a second
reading with the standard library's parser (its depth limit is Python's recursion limit,
about 1,000 levels), so that a deep but well-formed request reaches its tool and gets the
tool's coded error. A line that still cannot be read is answered with JSON-RPC's parse
error (-32700) or invalid request (-32600), carrying the request's id when it can be
found, so the caller's request ends at once.
"""

from __future__ import annotations

import json
import logging
import re
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

if TYPE_CHECKING:  # the SDK's stream protocols live in a private module: only for typing
    from mcp.shared._stream_protocols import ReadStream, WriteStream

logger = logging.getLogger(__name__)

RequestId = int | str
# The characters that matter when walking a JSON text for its top-level keys.
_STRUCTURE = re.compile(r'["{}\[\],]')
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_decoder = json.JSONDecoder()


class AnsweringReadStream:
    """A read stream of the SDK's stdio transport that answers the lines the SDK drops."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], replies: WriteStream[SessionMessage]) -> None:
        self._inner = inner
        self._replies = replies

    @property
    def last_context(self) -> object:
        """The sender's context, which the SDK's dispatcher reads off its read stream."""
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, ValidationError):
                return item
            line = rejected_line(item)
            answer = reread(line) if line is not None else invalid_request(item)
            if answer is None:
                return item  # not a request (a malformed response or notification): nobody waits
            if isinstance(answer, SessionMessage):
                return answer
            error = answer
            logger.warning("answered an unreadable request line with %s", error.error.message)
            try:
                await self._replies.send(SessionMessage(error))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> AnsweringReadStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AnsweringReadStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.aclose()


def rejected_line(item: ValidationError) -> str | None:
    """The raw line, when `item` is the SDK's failure to parse one (its error carries the input)."""
    for error in item.errors():
        if error["type"] == "json_invalid" and isinstance(error.get("input"), str):
            line: str = error["input"]
            return line
    return None


def invalid_request(item: ValidationError) -> types.JSONRPCError | None:
    """The answer to a request that is JSON but not a valid JSON-RPC request; None if not a request."""
    for error in item.errors():
        data = error.get("input")
        if isinstance(data, dict) and "method" in data:
            request_id = _request_id(data.get("id"))
            if request_id is not None:
                return _error(request_id, types.INVALID_REQUEST, "Invalid request: not a JSON-RPC 2.0 request")
    return None


def reread(line: str) -> SessionMessage | types.JSONRPCError:
    """The message the line holds, read with the standard library; or the error to answer with."""
    try:
        data = json.loads(line)
    except RecursionError:
        return _error(
            find_request_id(line),
            types.INVALID_REQUEST,
            "RESOURCE_EXHAUSTED: the request is nested too deeply to read; "
            "send arguments nested at most a few dozen levels",
        )
    except ValueError as exc:
        return _error(find_request_id(line), types.PARSE_ERROR, f"Parse error: the line is not JSON ({exc})")
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_python(data, by_name=False))
    except (ValidationError, RecursionError):
        request_id = _request_id(data.get("id")) if isinstance(data, dict) else None
        return _error(request_id, types.INVALID_REQUEST, "Invalid request: not a JSON-RPC 2.0 message")


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


def _error(request_id: RequestId | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))
