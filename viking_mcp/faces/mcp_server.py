"""The MCP face: the engine's operations as MCP tools, resources and a prompt.

Thin by design: each tool validates its arguments through its typed signature, calls
one engine method on a worker thread, and returns the engine's pydantic model as
structured output. Engine errors become `ToolError`s whose text starts with the code
(`NOT_FOUND: session a1b2 not found`), the one kind of error whose message reaches the
model.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedToolError
from mcp.server.mcpserver.prompts.base import Message as PromptMessage, UserMessage
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult, ToolAnnotations
from pydantic import Field, ValidationError

from viking_mcp import __version__
from viking_mcp.config import Settings, settings_from_env
from viking_mcp.errors import Unavailable, VikingError
from viking_mcp.faces.stdio import AnsweringReadStream
from viking_mcp.models import (
    ArchiveDetail,
    CommitResult,
    ExtractResult,
    MemoryCategory,
    MemoryInput,
    MemorySearchResult,
    MessageAdded,
    MetadataUpdated,
    Part,
    RetryResult,
    SessionContext,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionPage,
    SkillUse,
    TaskList,
    TaskRecord,
    UsageRecorded,
)

if TYPE_CHECKING:
    # The engine, the store and API keys are imported when first needed, not to list the
    # tools: a host starting the server over stdio waits for that list.
    from viking_mcp.auth import KeyRing
    from viking_mcp.engine import Engine, Phase2Worker
    from viking_mcp.store.base import Owner

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

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

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _writes(*, destructive: bool = False, idempotent: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )


def coded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn engine errors into ToolErrors the model can read (crashes keep their text private)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except VikingError as exc:
            raise ToolError(str(exc)) from exc

    return clean_doc(wrapper)


def clean_doc(fn: Callable[P, R]) -> Callable[P, R]:
    """The docstring is the tool's description for the model: without source indentation."""
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return fn


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


class VikingMCPServer(MCPServer[ServerState]):
    """MCPServer whose argument-validation errors carry the INVALID_ARGUMENT code too, and
    whose resource templates are registered when resources are first asked for: building
    25 templates is a fifth of what the server does before it can list its tools."""

    _add_resources: Callable[[], None] | None = None
    _resources_lock = threading.Lock()

    def add_resources_later(self, add: Callable[[], None]) -> None:
        self._add_resources = add

    def _ensure_resources(self) -> None:
        if self._add_resources is None:
            return
        with self._resources_lock:
            if self._add_resources is not None:
                self._add_resources()
                self._add_resources = None

    async def list_resources(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure_resources()
        return await super().list_resources(*args, **kwargs)

    async def list_resource_templates(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure_resources()
        return await super().list_resource_templates(*args, **kwargs)

    async def read_resource(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure_resources()
        return await super().read_resource(*args, **kwargs)

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

    @asynccontextmanager
    async def lifespan(_: MCPServer[ServerState]) -> AsyncIterator[ServerState]:
        from viking_mcp.engine import Phase2Worker

        opener: threading.Thread | None = None
        if engine is not None:
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

    # --- sessions -------------------------------------------------------------------------

    @server.tool(title="Create session", annotations=_writes())
    @coded
    def create_session(
        ctx: Context[ServerState, Any],
        session_id: Annotated[
            str | None, Field(description="Id to use; omit it to get a fresh random id.", max_length=128)
        ] = None,
        metadata: Annotated[
            dict[str, Any] | None, Field(description="Free-form JSON object stored with the session.")
        ] = None,
        user_id: Annotated[str | None, Field(description="The user this session belongs to.", max_length=128)] = None,
    ) -> SessionCreated:
        """Create a session to record a conversation in. Optional: add_message creates sessions on
        first use. Fails with ALREADY_EXISTS if the id is taken."""
        return state.require_engine().create_session(session_id, metadata, user_id, actor=state.actor(ctx))

    @server.tool(title="List sessions", annotations=READ_ONLY)
    @coded
    def list_sessions(
        ctx: Context[ServerState, Any],
        limit: Annotated[int, Field(description="Sessions per page.", ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
    ) -> SessionPage:
        """List sessions, newest first, a page at a time; pass next_cursor back for the next page."""
        return state.require_engine().list_sessions(limit, cursor, actor=state.actor(ctx))

    @server.tool(title="Get session", annotations=_writes(idempotent=True))
    @coded
    def get_session(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        auto_create: Annotated[bool, Field(description="Create the session if it does not exist.")] = False,
    ) -> SessionInfo:
        """A session's counters: live and total messages, commits, pending_tokens (tokens of
        the live messages: commit when it grows large), extracted memories, metadata."""
        return state.require_engine().get_session(session_id, auto_create, actor=state.actor(ctx))

    @server.tool(title="Update session metadata", annotations=_writes(destructive=True, idempotent=True))
    @coded
    def update_session(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        metadata: Annotated[
            dict[str, Any],
            Field(description="Keys to set; merged into the existing metadata. A null value removes it."),
        ],
    ) -> MetadataUpdated:
        """Merge keys into a session's metadata (other keys are kept) and return the result."""
        return state.require_engine().update_session(session_id, metadata, actor=state.actor(ctx))

    @server.tool(title="Delete session", annotations=_writes(destructive=True, idempotent=True))
    @coded
    def delete_session(ctx: Context[ServerState, Any], session_id: SessionId) -> SessionDeleted:
        """Delete a session: its messages, archives, summaries, tool records and metadata.
        Long-term memories extracted from it stay. This cannot be undone."""
        return state.require_engine().delete_session(session_id, actor=state.actor(ctx))

    # --- messages ---------------------------------------------------------------------------

    @server.tool(title="Add message", annotations=_writes())
    @clean_doc
    async def add_message(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        role: Annotated[Literal["user", "assistant"], Field(description="Who said it: 'user' or 'assistant'.")],
        content: Annotated[str | None, Field(description="The message text. Give this or parts, not both.")] = None,
        parts: Annotated[
            list[Part] | None,
            Field(description="The message as parts (text, context, tool). Give this or content, not both."),
        ] = None,
        created_at: Annotated[str | None, Field(description="When it was said (ISO 8601); default now.")] = None,
        message_id: Annotated[
            str | None,
            Field(
                description="Your id for the message; retrying with the same id stores it once.",
                max_length=128,
            ),
        ] = None,
    ) -> MessageAdded:
        """Record one turn of the conversation. Creates the session if needed (session_created
        tells). Use a message_id to make retries safe."""
        engine = await state.engine_async()
        append = functools.partial(
            engine.add_message, session_id, role, content, parts, created_at, message_id, actor=state.actor(ctx)
        )
        try:
            # The hot path: an append is one short SQLite transaction (a tenth of a
            # millisecond), cheaper here than the hop to a worker thread, which was a
            # quarter of a stdio round trip. Only when it needs no waiting: if another
            # writer holds the lock, it fails at once, writing nothing, and waits off the loop.
            nowait = getattr(engine.store, "without_waiting", None)
            if nowait is not None:
                try:
                    with nowait():
                        return append()
                except Unavailable:
                    pass
            return await anyio.to_thread.run_sync(append)
        except VikingError as exc:
            raise ToolError(str(exc)) from exc

    @server.tool(title="Record usage", annotations=_writes())
    @coded
    def record_usage(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        contexts: Annotated[list[str] | None, Field(description="URIs of resources or memories the turn used.")] = None,
        skill: Annotated[SkillUse | None, Field(description="A skill the turn used, and how it went.")] = None,
    ) -> UsageRecorded:
        """Record which contexts and skills were used, so commit can credit them."""
        return state.require_engine().record_usage(session_id, contexts, skill, actor=state.actor(ctx))

    # --- commit and tasks ------------------------------------------------------------------------

    @server.tool(title="Commit session", annotations=_writes())
    @clean_doc
    async def commit(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        abstract: Annotated[
            str | None, Field(description="Your one- or two-sentence summary of the messages being archived.")
        ] = None,
        overview: Annotated[
            str | None,
            Field(description="Your markdown overview of the conversation so far (carry forward what matters)."),
        ] = None,
        keep_recent_count: Annotated[
            int, Field(description="Leave this many newest messages live (not archived).", ge=0)
        ] = 0,
        wait: Annotated[bool, Field(description="Wait (up to ~40 s) until the archive is summarised.")] = False,
        memories: Annotated[
            list[MemoryInput] | None,
            Field(
                description="Long-term memories you took from these messages (facts about the user, preferences, "
                "people, dated events, solved cases...). Stored verbatim and merged by category; omit to let "
                "the server extract them."
            ),
        ] = None,
    ) -> CommitResult:
        """Archive the live messages now and summarise them in the background (task_id tracks
        it). Call when the window fills. status 'skipped' means there was nothing to archive.
        FAILED_PRECONDITION means an earlier archive failed: retry_archive it first."""
        engine = await state.engine_async()
        actor = state.actor(ctx)
        try:
            result = await anyio.to_thread.run_sync(
                lambda: engine.commit(
                    session_id, abstract, overview, keep_recent_count, False, None, memories, actor=actor
                )
            )
            if wait and result.task_id is not None:
                from viking_mcp.engine.waiting import wait_for_task

                # Waits on the event loop, reporting progress, not on a shared worker thread.
                task = await wait_for_task(
                    engine, result.task_id, engine.settings.commit_wait_seconds, actor, ctx.report_progress
                )
                result.task_status = task.status
            return result
        except VikingError as exc:
            raise ToolError(str(exc)) from exc

    @server.tool(title="Get task", annotations=READ_ONLY)
    @coded
    def get_task(
        ctx: Context[ServerState, Any], task_id: Annotated[str, Field(description="task_id returned by commit.")]
    ) -> TaskRecord:
        """A background task's status (pending, running, completed, failed), result and error."""
        return state.require_engine().get_task(task_id, actor=state.actor(ctx))

    @server.tool(title="List tasks", annotations=READ_ONLY)
    @coded
    def list_tasks(
        ctx: Context[ServerState, Any],
        task_type: Annotated[
            Literal["session_commit", "session_extract"] | None, Field(description="Only tasks of this type.")
        ] = None,
        status: Annotated[
            Literal["pending", "running", "completed", "failed"] | None,
            Field(description="Only tasks in this state."),
        ] = None,
        resource_id: Annotated[str | None, Field(description="Only tasks of this session id.")] = None,
        limit: Annotated[int, Field(description="At most this many tasks.", ge=1, le=500)] = 50,
    ) -> TaskList:
        """Background tasks, newest first, optionally filtered."""
        return state.require_engine().list_tasks(task_type, status, resource_id, limit, actor=state.actor(ctx))

    # --- long-term memory ----------------------------------------------------------------------------

    @server.tool(title="Extract memories now", annotations=_writes())
    @coded
    def extract(ctx: Context[ServerState, Any], session_id: SessionId) -> ExtractResult:
        """Extract long-term memories from the session's live messages now, without committing.
        Memories merge by category, so extracting again or committing later adds no duplicates."""
        return state.require_engine().extract(session_id, actor=state.actor(ctx))

    @server.tool(title="Search memories", annotations=READ_ONLY)
    @coded
    def search_memories(
        ctx: Context[ServerState, Any],
        query: Annotated[str, Field(description="What to look for, in plain words.", min_length=1, max_length=2000)],
        category: Annotated[MemoryCategory | None, Field(description="Only memories of this category.")] = None,
        limit: Annotated[int, Field(description="At most this many results.", ge=1, le=100)] = 10,
    ) -> MemorySearchResult:
        """Search long-term memories (the user's profile, preferences, people, events, and the
        agent's cases, patterns, tools, skills), best match first. Read a whole memory as a
        resource at its uri."""
        return state.require_engine().search_memories(query, category, limit, actor=state.actor(ctx))

    # --- context and archives ---------------------------------------------------------------------

    @server.tool(title="Get context", annotations=READ_ONLY)
    @coded
    def get_context(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        token_budget: Annotated[
            int,
            Field(
                description="Tokens you can spend on this context; the live messages are always returned.",
                ge=0,
            ),
        ] = budget_default,
    ) -> SessionContext:
        """Rebuild your context window: the latest archive's overview and earlier archives'
        abstracts (as many as fit the budget after the messages), plus the messages not yet
        summarised. Use expand_archive for any archive's full text."""
        return state.require_engine().get_context(session_id, token_budget, actor=state.actor(ctx))

    @server.tool(title="Expand archive", annotations=READ_ONLY)
    @coded
    def expand_archive(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        archive_id: ArchiveId,
        offset: Annotated[int, Field(description="Skip this many messages (for paging).", ge=0)] = 0,
        limit: Annotated[int, Field(description="At most this many messages.", ge=1, le=1000)] = 200,
    ) -> ArchiveDetail:
        """An archive's status, abstract, overview and raw messages (paged: pass next_offset back
        as offset). Pending and failed archives have their messages and empty summaries."""
        return state.require_engine().expand_archive(session_id, archive_id, offset, limit, actor=state.actor(ctx))

    # Destructive: skipping gives up an archive's summaries for good.
    @server.tool(title="Retry or skip a failed archive", annotations=_writes(destructive=True))
    @coded
    def retry_archive(
        ctx: Context[ServerState, Any],
        session_id: SessionId,
        archive_id: ArchiveId,
        action: Annotated[
            Literal["retry", "skip"],
            Field(description="'retry' summarises it again; 'skip' gives up on its summary."),
        ] = "retry",
    ) -> RetryResult:
        """Recover an archive whose background summarising failed, so that commits proceed. Its
        messages are kept either way (expand_archive)."""
        return state.require_engine().retry_archive(session_id, archive_id, action, actor=state.actor(ctx))

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

    @server.prompt(title="Rebuild context from a session")
    def rebuild_context(
        ctx: Context[ServerState, Any], session_id: str, token_budget: str = str(budget_default)
    ) -> list[PromptMessage]:
        """Rebuild an agent's context window from a session within a token budget."""
        try:
            budget = int(token_budget)
        except ValueError:
            raise MCPError(
                code=INVALID_PARAMS, message=f"INVALID_ARGUMENT: token_budget {token_budget!r} is not a whole number"
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
