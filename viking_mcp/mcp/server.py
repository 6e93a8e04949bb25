"""The MCP face: the engine's operations as MCP tools, resources and a prompt.

The tools are module-level functions in `mcp/tools/`, the resources in `resources.py`, the
prompt in `prompts.py`. `build_server` registers them the ordinary way, before anything is
served; the server's lifespan opens the store on a worker thread (or takes an engine the
caller owns), starts the Phase 2 worker, and closes both when the server stops.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult
from pydantic import ValidationError

from viking_mcp import __version__
from viking_mcp.auth import KeyRing
from viking_mcp.config import Settings, settings_from_env
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.engine.messages import describe_validation_error
from viking_mcp.errors import VikingError
from viking_mcp.heap import settle_later
from viking_mcp.mcp.prompts import add_prompts
from viking_mcp.mcp.resources import add_resources
from viking_mcp.mcp.state import ServerState
from viking_mcp.mcp.stdio import UnreadableLines
from viking_mcp.mcp.tools import TOOLS

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
viking-mcp keeps this conversation's memory across context windows.
- Record every turn with add_message (the session is created on first use).
- When the window fills (get_session.pending_tokens is large), call commit: the live
  messages are archived and summarised in the background. Pass your own abstract and
  overview to commit when you can: you summarise better than the built-in summariser.
- To rebuild your window, call get_context(session_id, token_budget): the latest
  archive overview, earlier archive abstracts and the live messages, within budget.
- expand_archive(session_id, archive_id) returns any archive's full messages.
- search(query) finds again what was said (archived messages too), summarised or
  remembered, in this session or every one; get_context(..., query=the task) spends part
  of the budget on the archived messages relevant to it.
- search_memories(query) finds long-term memories (profile, preferences, people, events,
  cases, patterns, tools, skills) kept across sessions.
"""


def describe_open_error(exc: BaseException, settings: Settings) -> str:
    """One line saying why the data directory could not be opened, and what to do."""
    if isinstance(exc, VikingError):
        return str(exc)
    if settings.store is not None:
        return f"cannot open the store {settings.store_label}: {type(exc).__name__}: {exc}; check VIKING_MCP_STORE"
    if isinstance(exc, OSError):
        return f"cannot use the data directory {settings.home}: {exc}; set VIKING_MCP_HOME or --home"
    return f"cannot open the data directory {settings.home}: {type(exc).__name__}: {exc}"


class VikingMCPServer(MCPServer[ServerState]):
    """MCPServer whose tool errors carry the code: the engine's own, and INVALID_ARGUMENT for arguments."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[ServerState, Any] | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:
            if isinstance(exc.__cause__, VikingError):  # the engine's coded error: the model reads it
                raise ToolError(f"Error executing tool {name}: {exc.__cause__}") from exc.__cause__
            raise
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                message = describe_validation_error(cause, "arguments")
                raise ToolError(f"Error executing tool {name}: INVALID_ARGUMENT: {message}") from cause
            raise


def build_server(
    settings: Settings | None = None,
    engine: Engine | None = None,
    keyring: KeyRing | None = None,
    *,
    settle_heap: bool = False,
) -> VikingMCPServer:
    """The MCP server. Give `engine` to serve an engine you own (tests, the HTTP app), and
    `keyring` when it is served over HTTP with API keys. `settle_heap`: the server is the
    process (the stdio command), whose start-up heap later garbage collections should skip
    (`viking_mcp.heap`).

    Without `engine`, the server's lifespan opens one on `settings`, on a worker thread, and
    closes it when the server stops; if the store cannot be opened, the lifespan raises
    the error (`describe_open_error` words it for people) and nothing is served."""
    state = ServerState(settings=settings or (engine.settings if engine else settings_from_env()), keyring=keyring)

    @asynccontextmanager
    async def lifespan(_: MCPServer[ServerState]) -> AsyncIterator[ServerState]:
        current = engine if engine is not None else await anyio.to_thread.run_sync(Engine, state.settings)
        # An engine the caller owns may have the caller's worker: only start one when asked to.
        worker = Phase2Worker(current, threads=state.settings.phase2_workers) if state.settings.phase2_workers else None
        try:
            if worker is not None:
                worker.start()
            state.engine = current
            if settle_heap:
                settle_later(current)
            if engine is None:
                logger.info("viking-mcp %s serving data in %s", __version__, state.settings.store_label)
            yield state
        finally:
            state.engine = None
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)
            if engine is None:
                await anyio.to_thread.run_sync(current.close)

    server = VikingMCPServer(
        "viking-mcp",
        title="viking-mcp: conversation memory",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        extensions=[UnreadableLines()],
    )
    defaults = {"token_budget": state.settings.mcp_default_token_budget}
    for tool in TOOLS:
        description = inspect.cleandoc(tool.fn.__doc__ or "")  # the model reads it: no source indentation
        server.tool(title=tool.title, annotations=tool.annotations, description=description)(
            _with_defaults(tool.fn, defaults)
        )
    add_resources(server, state)
    add_prompts(server, state)
    return server


def _with_defaults(fn: Callable[..., Any], defaults: dict[str, Any]) -> Callable[..., Any]:
    """`fn` as the SDK reads it, with defaults known only when the server is built (settings)."""
    signature = inspect.signature(fn, eval_str=True)
    if not defaults.keys() & signature.parameters.keys():
        return fn

    @functools.wraps(fn)
    def with_defaults(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    parameters = [p.replace(default=defaults.get(p.name, p.default)) for p in signature.parameters.values()]
    with_defaults.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return with_defaults


def result_text(result: CallToolResult) -> str:
    """The text of a tool result (for tests and examples)."""
    return "".join(getattr(block, "text", "") for block in result.content)
