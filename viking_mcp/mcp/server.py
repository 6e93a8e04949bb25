"""The MCP face: the engine's operations as MCP tools, resources and a prompt.

The tools themselves are in `mcp_tools.py`. `build_server` registers them, the resource
templates and the prompt the ordinary way, before anything is served; the server's
lifespan opens the store on a worker thread (or takes an engine the caller owns), starts
the Phase 2 worker, and closes both when the server stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedToolError
from mcp.server.mcpserver.prompts.base import Message as PromptMessage, UserMessage
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult
from pydantic import ValidationError

from viking_mcp import __version__
from viking_mcp.config import Settings, settings_from_env
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.engine.context import render_context_text
from viking_mcp.engine.messages import describe_validation_error
from viking_mcp.engine.tree import read_node
from viking_mcp.errors import VikingError
from viking_mcp.heap import settle_later
from viking_mcp.mcp.stdio import UnreadableLines
from viking_mcp.mcp.tools import ServerState, add_tools

if TYPE_CHECKING:
    from viking_mcp.auth import KeyRing

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
    """MCPServer whose argument-validation errors carry the INVALID_ARGUMENT code too."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[ServerState, Any] | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
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
    add_tools(server, state)
    _add_resources(server, state)
    _add_prompts(server, state)
    return server


# --- resources ------------------------------------------------------------------------------------


def _add_resources(server: VikingMCPServer, state: ServerState) -> None:
    """Every node of the viking:// tree, as resource templates."""

    def read(uri: str, ctx: Context[ServerState, Any]) -> str:
        try:
            return read_node(state.require_engine(), uri, state.actor(ctx))[0]
        except (VikingError, ToolError) as exc:
            raise ResourceError(str(exc)) from exc

    def resource(template: str, description: str, mime_type: str) -> None:
        # One reader per shape of template; the SDK reads parameter names off the signature.
        register = server.resource(template, description=description, mime_type=mime_type)
        if "{archive_id}" in template:

            def archive_reader(session_id: str, archive_id: str, ctx: Context[ServerState, Any]) -> str:
                return read(template.format(session_id=session_id, archive_id=archive_id), ctx)

            register(archive_reader)
        elif "{tool_id}" in template:

            def tool_reader(session_id: str, tool_id: str, ctx: Context[ServerState, Any]) -> str:
                return read(template.format(session_id=session_id, tool_id=tool_id), ctx)

            register(tool_reader)
        else:

            def session_reader(session_id: str, ctx: Context[ServerState, Any]) -> str:
                return read(template.format(session_id=session_id), ctx)

            register(session_reader)

    resource("viking://session/{session_id}", "A session: its counters, metadata and files.", "application/json")
    for name, mime in (
        (".meta.json", "application/json"),
        ("messages.jsonl", "application/jsonl"),
        (".abstract.md", "text/markdown"),
        (".overview.md", "text/markdown"),
        (".relations.json", "application/json"),
    ):
        resource(f"viking://session/{{session_id}}/{name}", f"The session's {name}.", mime)
    resource("viking://session/{session_id}/history", "The session's archives.", "application/json")
    resource("viking://session/{session_id}/tools", "The session's tool calls.", "application/json")
    resource(
        "viking://session/{session_id}/tools/{tool_id}/tool.json",
        "One tool call of a session.",
        "application/json",
    )
    resource(
        "viking://session/{session_id}/history/{archive_id}",
        "An archive: status, abstract, files.",
        "application/json",
    )
    for name, mime in (
        ("messages.jsonl", "application/jsonl"),
        (".abstract.md", "text/markdown"),
        (".overview.md", "text/markdown"),
        ("memory_diff.json", "application/json"),
        (".done", "text/plain"),
    ):
        resource(f"viking://session/{{session_id}}/history/{{archive_id}}/{name}", f"The archive's {name}.", mime)

    for scope in ("user", "agent"):
        _memory_resources(server, read, scope)


# --- prompts ----------------------------------------------------------------------------------------


def _add_prompts(server: VikingMCPServer, state: ServerState) -> None:
    budget_default = state.settings.mcp_default_token_budget

    @server.prompt(title="Rebuild context from a session")
    def rebuild_context(
        ctx: Context[ServerState, Any], session_id: str, token_budget: str = str(budget_default)
    ) -> list[PromptMessage]:
        """Rebuild an agent's context window from a session within a token budget."""
        try:
            budget = int(token_budget)
        except ValueError:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"INVALID_ARGUMENT: token_budget {token_budget!r} is not a whole number",
            ) from None
        try:
            context = state.require_engine().get_context(session_id, budget, actor=state.actor(ctx))
        except (VikingError, ToolError) as exc:
            # A protocol error keeps its message (the SDK hides a plain exception's text).
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc
        text = render_context_text(session_id, context)
        return [
            UserMessage(
                "Continue our conversation. Here is what viking-mcp kept of it "
                f"(session {session_id}, within {budget} tokens):\n\n{text}"
            )
        ]


def _memory_resources(
    server: VikingMCPServer, read: Callable[[str, Context[ServerState, Any]], str], scope: str
) -> None:
    """Templates for one owner's memories: the listing, a category, one memory (and the profile)."""
    base = f"viking://{scope}/{{owner_id}}/memories"
    whose = "user's" if scope == "user" else "agent's"

    def listing(owner_id: str, ctx: Context[ServerState, Any]) -> str:
        return read(base.format(owner_id=owner_id), ctx)

    def category_listing(owner_id: str, category: str, ctx: Context[ServerState, Any]) -> str:
        return read(f"{base.format(owner_id=owner_id)}/{category}", ctx)

    def memory(owner_id: str, category: str, name: str, ctx: Context[ServerState, Any]) -> str:
        return read(f"{base.format(owner_id=owner_id)}/{category}/{name}", ctx)

    def profile(owner_id: str, ctx: Context[ServerState, Any]) -> str:
        return read(f"{base.format(owner_id=owner_id)}/profile.md", ctx)

    server.resource(base, description=f"The {whose} long-term memories.", mime_type="application/json")(listing)
    if scope == "user":
        server.resource(f"{base}/profile.md", description="The user's profile.", mime_type="text/markdown")(profile)
    server.resource(
        f"{base}/{{category}}", description=f"The {whose} memories of one category.", mime_type="application/json"
    )(category_listing)
    server.resource(
        f"{base}/{{category}}/{{name}}",
        description=f"One of the {whose} memories: abstract, overview and content.",
        mime_type="text/markdown",
    )(memory)


def result_text(result: CallToolResult) -> str:
    """The text of a tool result (for tests and examples)."""
    return "".join(getattr(block, "text", "") for block in result.content)
