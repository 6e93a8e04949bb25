"""The MCP face: the engine's operations as MCP tools, resources and a prompt.

The tools themselves are in `mcp_tools.py`. This module is what a host waits for when it
starts the server over stdio, so it does as little as it can before the first
`tools/list`: the data directory is opened on a thread of its own (`ServerState`), the
tools are registered (each one a pydantic model and JSON schemas, built by the SDK) after
the server has answered, and `tools/list` is answered meanwhile from `mcp_tools.json`,
the listing those registrations produce, used only when it was written from this very
code and SDK (`cached_tool_listing`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedToolError
from mcp.server.mcpserver.prompts.base import Message as PromptMessage, UserMessage
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, Tool as MCPTool
from pydantic import ValidationError

from viking_mcp import __version__
from viking_mcp.config import Settings, settings_from_env
from viking_mcp.errors import VikingError
from viking_mcp.faces.stdio import AnsweringReadStream

if TYPE_CHECKING:
    # The engine, the store, API keys and the tools' models are imported when first
    # needed, not to list the tools: a host starting the server over stdio waits for that.
    from viking_mcp.auth import KeyRing
    from viking_mcp.engine import Engine, Phase2Worker
    from viking_mcp.store.base import Owner

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

# How long a tool call waits for the data directory to open (it opens as the server starts).
OPEN_WAIT_SECONDS = 30.0
# The data directory is opened this long after start, or at the first call that needs it,
# whichever comes first: a host's initialize and tools/list then do not share the CPU (and
# the GIL) with importing the engine and opening the database.
OPEN_DELAY_SECONDS = 0.5


@dataclass
class ServerState:
    """What the lifespan owns: the engine and its Phase 2 worker."""

    settings: Settings
    engine: Engine | None = None
    worker: Phase2Worker | None = None
    external_engine: bool = False
    # API keys, when served over HTTP with keys; None: no keys (stdio).
    keyring: KeyRing | None = None
    # Set once the engine is open, or failed to open (`open_error`).
    opened: threading.Event = field(default_factory=threading.Event)
    # Set when something needs the engine now (a tool call, or the server stopping).
    wanted: threading.Event = field(default_factory=threading.Event)
    open_error: BaseException | None = None

    def actor(self, ctx: Context[ServerState, Any]) -> Owner | None:
        """Who is calling: the owner of the request's API key over HTTP; None (everything) over
        stdio, where the person who started the server is the only one there."""
        if self.keyring is None or not self.keyring.enabled:
            return None
        from viking_mcp.auth import key_from_headers

        headers = ctx.headers
        if headers is None:  # keys are only given to a server that listens on HTTP: fail closed
            raise ToolError("UNAUTHENTICATED: this request carried no API key")
        try:
            return self.keyring.authenticate(key_from_headers(headers))
        except VikingError as exc:
            raise ToolError(str(exc)) from exc

    def open_engine(self, delay: float = 0.0) -> None:
        """Open the data directory and start the Phase 2 worker: on a thread of its own, `delay`
        seconds after start or as soon as something wants the engine, so that the server
        answers `initialize` and `tools/list` meanwhile."""
        self.wanted.wait(delay)
        try:
            from viking_mcp.engine import Engine, Phase2Worker

            engine = Engine(self.settings)
            try:
                worker = Phase2Worker(engine, threads=self.settings.phase2_workers)
                worker.start()
            except BaseException:
                engine.close()
                raise
            self.engine, self.worker = engine, worker
            logger.info("viking-mcp %s serving data in %s", __version__, self.settings.store_label)
        except BaseException as exc:
            self.open_error = exc
        finally:
            self.opened.set()

    def require_engine(self) -> Engine:
        if self.engine is None:
            self.wanted.set()
            self.opened.wait(OPEN_WAIT_SECONDS)  # a call that arrives while the engine opens
            if self.open_error is not None:
                raise ToolError(f"UNAVAILABLE: {describe_open_error(self.open_error, self.settings)}")
            if self.engine is None:
                raise ToolError("UNAVAILABLE: the server is starting or stopping; retry in a moment")
        return self.engine

    async def engine_async(self) -> Engine:
        """require_engine for a tool running on the event loop: waits (if at all) on a thread."""
        if self.engine is not None:
            return self.engine
        return await anyio.to_thread.run_sync(self.require_engine)


def describe_open_error(exc: BaseException, settings: Settings) -> str:
    """One line saying why the data directory could not be opened, and what to do."""
    if isinstance(exc, VikingError):
        return str(exc)
    if settings.store is not None:
        return f"cannot open the store {settings.store_label}: {type(exc).__name__}: {exc}; check VIKING_MCP_STORE"
    if isinstance(exc, OSError):
        return f"cannot use the data directory {settings.home}: {exc}; set VIKING_MCP_HOME or --home"
    return f"cannot open the data directory {settings.home}: {type(exc).__name__}: {exc}"


# What `tools/list` answers before the tools are registered: see `cached_tool_listing`.
LISTING_PATH = Path(__file__).with_name("mcp_tools.json")
# The same, written into the data directory when the shipped file does not fit this
# installation (another SDK or pydantic release than it was written with).
LISTING_CACHE_NAME = ".mcp_tools.json"
# The files whose code the listing is built from (the tools' signatures and result models).
LISTED_SOURCES = ("faces/mcp_tools.py", "models.py")


def listing_key(token_budget_default: int) -> dict[str, Any]:
    """What the tool listing depends on: our sources, the SDK's and pydantic's versions,
    Python's -O level (-OO drops the docstrings that describe the tools), and the one
    setting that appears in it (get_context's default budget)."""
    import pydantic
    import pydantic_core

    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in LISTED_SOURCES:
        digest.update((package / name).read_bytes())
    versions = {"pydantic": pydantic.VERSION, "pydantic_core": pydantic_core.__version__}
    # The SDK has no __version__, and importlib.metadata costs 30 ms to import: read the
    # versions off the dist-info directories beside the package (a source checkout of
    # the SDK has none, so its listing is never taken from the file).
    import mcp

    site = Path(mcp.__file__).resolve().parent.parent
    for entry in sorted(os.listdir(site)):
        for dist in ("mcp", "mcp_types"):
            if entry.startswith(f"{dist}-") and entry.endswith(".dist-info"):
                versions[dist] = entry[len(dist) + 1 : -len(".dist-info")]
    return {
        "sources": digest.hexdigest(),
        "versions": versions,
        "optimize": sys.flags.optimize,
        "token_budget_default": token_budget_default,
    }


def cached_tool_listing(settings: Settings) -> list[MCPTool] | None:
    """The tools as `tools/list` lists them, from `mcp_tools.json` (shipped) or from the
    data directory's `.mcp_tools.json` (written by `remember_tool_listing`), whichever was
    written from this code, this SDK and these settings; None if neither (then the tools
    are registered, and listed, at the first `tools/list`). Nothing but start time depends
    on it: the tools are always called through their registrations. The tests check that
    the shipped file is current and lists exactly what the registrations do."""
    key: dict[str, Any] | None = None
    for path in (LISTING_PATH, settings.home / LISTING_CACHE_NAME):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            key = key or listing_key(settings.mcp_default_token_budget)
            if document.get("key") == key:
                return [MCPTool.model_validate(tool) for tool in document["tools"]]
            logger.debug("%s is out of date", path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.debug("cannot use %s: %s", path, exc)
    return None


def write_tool_listing(path: Path, settings: Settings, tools: list[MCPTool]) -> None:
    """Write a tool listing with its key, atomically (a reader sees the old file or the new)."""
    from viking_mcp.engine.transfer import atomic_file

    document = {
        "key": listing_key(settings.mcp_default_token_budget),
        "tools": [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools],
    }
    with atomic_file(path) as file:
        file.write(json.dumps(document, indent=1, ensure_ascii=False) + "\n")


async def remember_tool_listing(server: VikingMCPServer, settings: Settings) -> None:
    """After the tools are registered, if they were not listed from a file: write their
    listing into the data directory, so that the next start need not register them first."""
    if server.listed_from_file or not settings.home.is_dir():
        return
    try:
        write_tool_listing(settings.home / LISTING_CACHE_NAME, settings, await server.list_tools())
    except OSError as exc:  # a read-only directory: the next start is only slower
        logger.debug("cannot write the tool listing: %s", exc)


class Later:
    """Work put off until something first needs it, then done once, from whichever thread
    asks first (the others wait for it)."""

    def __init__(self) -> None:
        self._work: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self.done = True

    def put_off(self, work: Callable[[], None]) -> None:
        self._work, self.done = work, False

    def now(self) -> None:
        if self.done:
            return
        with self._lock:
            if self._work is not None:
                self._work()
                self._work = None
            self.done = True


class VikingMCPServer(MCPServer[ServerState]):
    """MCPServer whose argument-validation errors carry the INVALID_ARGUMENT code too, and
    whose tools, resource templates and prompt are registered when first needed, not as it
    starts.

    Registering the 15 tools (the SDK builds a pydantic model and JSON schemas for each)
    and the 25 resource templates was most of what the server did before it could answer
    `tools/list`. The tools are registered at the first tool call or when the server has
    settled (`ensure_tools`), and until then `tools/list` is answered from the listing
    they produce (`cached_tool_listing`); resource templates and the prompt when resources
    or prompts are first asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tools_later = Later()
        self._resources_later = Later()
        self._prompts_later = Later()
        self._tool_listing: list[MCPTool] | None = None

    def add_tools_later(self, add: Callable[[], None], listing: list[MCPTool] | None = None) -> None:
        """`add` registers the tools; `listing`, if given, is what they list as."""
        self._tools_later.put_off(add)
        self._tool_listing = listing

    def add_resources_later(self, add: Callable[[], None]) -> None:
        self._resources_later.put_off(add)

    def add_prompts_later(self, add: Callable[[], None]) -> None:
        self._prompts_later.put_off(add)

    @property
    def listed_from_file(self) -> bool:
        return self._tool_listing is not None

    def ensure_tools(self) -> None:
        """Register the tools now, if they are not yet (blocks for tens of milliseconds)."""
        self._tools_later.now()

    async def list_tools(self) -> list[MCPTool]:
        if not self._tools_later.done and self._tool_listing is not None:
            return list(self._tool_listing)
        self.ensure_tools()
        return await super().list_tools()

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        self.ensure_tools()
        return super()._tool_input_schema(name)

    async def list_resources(self, *args: Any, **kwargs: Any) -> Any:
        self._resources_later.now()
        return await super().list_resources(*args, **kwargs)

    async def list_resource_templates(self, *args: Any, **kwargs: Any) -> Any:
        self._resources_later.now()
        return await super().list_resource_templates(*args, **kwargs)

    async def read_resource(self, *args: Any, **kwargs: Any) -> Any:
        self._resources_later.now()
        return await super().read_resource(*args, **kwargs)

    async def list_prompts(self, *args: Any, **kwargs: Any) -> Any:
        self._prompts_later.now()
        return await super().list_prompts(*args, **kwargs)

    async def get_prompt(self, *args: Any, **kwargs: Any) -> Any:
        self._prompts_later.now()
        return await super().get_prompt(*args, **kwargs)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[ServerState, Any] | None = None
    ) -> Any:
        if not self._tools_later.done:
            await anyio.to_thread.run_sync(self.ensure_tools)
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                from viking_mcp.engine.messages import describe_validation_error

                message = describe_validation_error(cause, "arguments")
                raise ToolError(f"Error executing tool {name}: INVALID_ARGUMENT: {message}") from cause
            raise

    async def run_stdio_async(self) -> None:
        """The SDK's stdio transport, answering the request lines its reader would drop."""
        async with stdio_server() as (read_stream, write_stream):
            lowlevel = self._lowlevel_server
            await lowlevel.run(
                AnsweringReadStream(read_stream, write_stream),
                write_stream,
                lowlevel.create_initialization_options(),
            )


def build_server(
    settings: Settings | None = None,
    engine: Engine | None = None,
    keyring: KeyRing | None = None,
    on_open_error: Callable[[BaseException], None] | None = None,
) -> VikingMCPServer:
    """The MCP server. Give `engine` to serve an engine you own (tests, the HTTP app), and
    `keyring` when it is served over HTTP with API keys.

    Without `engine`, the server opens one on `settings` as it starts, on a thread of its
    own: tools are listed meanwhile, and a tool call waits for it. If it cannot be opened,
    `on_open_error` is called with the error on that thread (the CLI prints it and exits);
    without it, tool calls answer UNAVAILABLE with the reason, and the server's run raises
    the error when it ends."""
    state = ServerState(settings=settings or (engine.settings if engine else settings_from_env()), keyring=keyring)

    def open_engine() -> None:
        state.open_engine(delay=OPEN_DELAY_SECONDS)
        if state.open_error is not None and on_open_error is not None:
            on_open_error(state.open_error)
        server.ensure_tools()  # settled: register the tools now rather than at the first call
        if state.open_error is None:
            anyio.run(remember_tool_listing, server, state.settings)

    @asynccontextmanager
    async def lifespan(_: MCPServer[ServerState]) -> AsyncIterator[ServerState]:
        opener: threading.Thread | None = None
        if engine is not None:
            from viking_mcp.engine import Phase2Worker

            state.engine, state.external_engine = engine, True
            state.worker = Phase2Worker(engine, threads=state.settings.phase2_workers)
            state.worker.start()
            state.opened.set()
        else:
            opener = threading.Thread(target=open_engine, name="viking-open", daemon=True)
            opener.start()
        try:
            yield state
        finally:
            if opener is not None:
                state.wanted.set()  # stopping before the delay: open now, to report what fails
                # Bounded: a store that cannot be reached must not keep the server from leaving.
                await anyio.to_thread.run_sync(lambda: opener.join(OPEN_WAIT_SECONDS))
            worker, current = state.worker, state.engine
            state.worker = None
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)
            if not state.external_engine and current is not None:
                state.engine = None
                await anyio.to_thread.run_sync(current.close)
            if state.open_error is not None:
                raise state.open_error

    server = VikingMCPServer(
        "viking-mcp",
        title="viking-mcp: conversation memory",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
    )
    budget_default = state.settings.mcp_default_token_budget

    def register_tools() -> None:
        from viking_mcp.faces.mcp_tools import add_tools

        add_tools(server, state)

    server.add_tools_later(register_tools, cached_tool_listing(state.settings))

    # --- resources ------------------------------------------------------------------------------

    def read(uri: str, ctx: Context[ServerState, Any]) -> str:
        from viking_mcp.engine.tree import read_node

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

    def add_resources() -> None:
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

    server.add_resources_later(add_resources)

    # --- prompts --------------------------------------------------------------------------------

    def add_prompts() -> None:
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
            from viking_mcp.engine.context import render_context_text

            text = render_context_text(session_id, context)
            return [
                UserMessage(
                    "Continue our conversation. Here is what viking-mcp kept of it "
                    f"(session {session_id}, within {budget} tokens):\n\n{text}"
                )
            ]

    server.add_prompts_later(add_prompts)

    return server


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
