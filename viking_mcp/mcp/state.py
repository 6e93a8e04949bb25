"""What every MCP tool reaches through, and the argument types they share.

A tool is a plain module-level function: it finds the engine and the caller through its
`Context` (the server's lifespan yields `ServerState`), validates its arguments through
its typed signature, calls one engine method, and returns the engine's pydantic model as
structured output; a tool whose result can grow (get_context, expand_archive, the listings,
search_memories) returns a compact text instead, bounded (`replies.py`). Engine errors
reach the model as tool errors whose text starts with the code (`NOT_FOUND: session a1b2
not found`); `server.py` words them so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidatorFunctionWrapHandler, WrapValidator

from viking_mcp.auth import KeyRing, key_from_headers
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.errors import VikingError
from viking_mcp.models import Owner

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class ServerState:
    """What the tools reach through: the settings, API keys, and (while the server runs) the engine."""

    settings: Settings
    # API keys, when served over HTTP with keys; None: no keys (stdio).
    keyring: KeyRing | None = None
    # Set by the server's lifespan for as long as it runs.
    engine: Engine | None = None

    def actor(self, ctx: Context[ServerState, Any]) -> Owner | None:
        """Who is calling: the owner of the request's API key over HTTP; None (everything) over
        stdio, where the person who started the server is the only one there."""
        if self.keyring is None or not self.keyring.enabled:
            return None
        headers = ctx.headers
        if headers is None:  # keys are only given to a server that listens on HTTP: fail closed
            raise ToolError("UNAUTHENTICATED: this request carried no API key")
        try:
            return self.keyring.authenticate(key_from_headers(headers))
        except VikingError as exc:
            raise ToolError(str(exc)) from exc

    def require_engine(self) -> Engine:
        if self.engine is None:  # only outside the lifespan: before the server runs, or after
            raise ToolError("UNAVAILABLE: the server is starting or stopping; retry in a moment")
        return self.engine


Ctx = Context[ServerState, Any]


def caller(ctx: Ctx) -> tuple[Engine, Owner | None]:
    """The engine, and who is calling it."""
    state = ctx.request_context.lifespan_context
    return state.require_engine(), state.actor(ctx)


class Tool(NamedTuple):
    fn: Callable[..., Any]
    title: str
    annotations: ToolAnnotations


# Every tool, in the order the modules under mcp/tools/ define them; build_server registers them.
TOOLS: list[Tool] = []


def tool(title: str, annotations: ToolAnnotations) -> Callable[[F], F]:
    """Mark a module-level function as an MCP tool (it stays an ordinary function)."""

    def register(fn: F) -> F:
        TOOLS.append(Tool(fn, title, annotations))
        return fn

    return register


READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def writes(*, destructive: bool = False, idempotent: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )


def _text_or_none(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    return None if value is None else handler(value)


# Free text (a message, a summary): kept exactly as sent, even when it reads as JSON
# (`'{"ok": true}'`, `'["a"]'`, `'null'`). Before validating, the SDK reads a string argument
# as JSON unless its annotation is exactly `str` (modelcontextprotocol/python-sdk#1873), which
# turned `str | None` text into an object or into None. So at run time the annotation is
# `str`, a validator lets an explicit null through as "not given", and the input schema is
# the one `str | None` has; type checkers see `str | None`. tests/test_mcp_tools.py pins it.
if TYPE_CHECKING:
    OptionalText = str | None
else:
    OptionalText = Annotated[str, WrapValidator(_text_or_none, json_schema_input_type=str | None)]

SessionId = Annotated[
    str,
    Field(
        description="The session's id: 1-128 characters from A-Z a-z 0-9 . _ - (e.g. one per conversation).",
        max_length=128,
    ),
]
ArchiveId = Annotated[
    str, Field(description="An archive of the session, as get_context or commit named it: 'archive_001'.")
]
