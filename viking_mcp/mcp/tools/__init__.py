"""The MCP tools: the engine's operations, one tool each, registered on the server.

Thin by design: each tool validates its arguments through its typed signature, calls
one engine method, and returns the engine's pydantic model as structured output. The
tools are plain functions, which the SDK runs on worker threads, so no engine call
(a write least of all) ever runs on the event loop. Two are async: `add_message` hands
its append to the engine's batch thread (`engine/batching.py`), and `commit` waits for
Phase 2 on the loop without holding a thread. Engine errors become `ToolError`s whose
text starts with the code (`NOT_FOUND: session a1b2 not found`), the one kind of error
whose message reaches the model.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, TypeVar

import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidatorFunctionWrapHandler, WrapValidator

from viking_mcp.auth import KeyRing, key_from_headers
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.engine.waiting import wait_for_task
from viking_mcp.errors import VikingError
from viking_mcp.models import (
    ArchiveDetail,
    CommitResult,
    ExtractResult,
    MemoryCategory,
    MemoryInput,
    MemorySearchResult,
    MessageAdded,
    MetadataUpdated,
    Owner,
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

P = ParamSpec("P")
R = TypeVar("R")


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


def add_tools(server: MCPServer[ServerState], state: ServerState) -> None:
    """Register every tool on `server`, each calling the engine `state` holds."""
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
        content: Annotated[OptionalText, Field(description="The message text. Give this or parts, not both.")] = None,
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
        engine, actor = state.require_engine(), state.actor(ctx)
        try:
            # On the engine's batch thread, with other appends (engine/batching.py).
            return await engine.batched_writes.run(
                lambda: engine.prepare_message(session_id, role, content, parts, created_at, message_id),
                lambda prepared: engine.write_message(prepared, actor=actor),
            )
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
            OptionalText, Field(description="Your one- or two-sentence summary of the messages being archived.")
        ] = None,
        overview: Annotated[
            OptionalText,
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
        engine = state.require_engine()
        actor = state.actor(ctx)
        try:
            result = await anyio.to_thread.run_sync(
                lambda: engine.commit(
                    session_id, abstract, overview, keep_recent_count, False, None, memories, actor=actor
                )
            )
            if wait and result.task_id is not None:
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
