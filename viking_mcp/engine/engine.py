"""The session engine: every operation the product offers, as a plain Python library.

The MCP server, the HTTP API, the CLI and the embedded `Client` are thin adapters over
this class. Validation, naming and behaviour live here, once. Methods are synchronous
and thread-safe (each thread gets its own store connection); async callers (MCP, HTTP) call them on
worker threads.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import TypeAdapter

from viking_mcp.config import Settings
from viking_mcp.engine.batching import WriteBatcher
from viking_mcp.engine.context import active_messages, assemble_context
from viking_mcp.engine.messages import build_message, check_encodable, validated
from viking_mcp.engine.phase2 import candidates_from, llm_output, owners_of, plan_memories, run_phase2
from viking_mcp.engine.reading import ReadContext, read_context
from viking_mcp.engine.recall import CANDIDATES, CANDIDATES_IN_RANGE, Passage, Recall, fit, parse_moment
from viking_mcp.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    VikingError,
)
from viking_mcp.memory import MEMORY_CATEGORIES
from viking_mcp.memory.offline import extract_offline
from viking_mcp.memory.search import fts_query, search_terms
from viking_mcp.models import (
    MAX_ARCHIVE_PAGE,
    MAX_PAGE,
    MAX_QUERY_CHARS,
    MAX_SEARCH_RESULTS,
    SEARCH_KINDS,
    ArchiveDetail,
    CommitResult,
    CommitTaskResult,
    ExtractResult,
    LlmTokenUsage,
    MemoryHit,
    MemoryInput,
    MemorySearchResult,
    MemoryWriteResult,
    Message,
    MessageAdded,
    MetadataUpdated,
    Owner,
    RetryResult,
    SearchHit,
    SearchResult,
    SessionContext,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionPage,
    SessionSummary,
    SkillUse,
    TaskList,
    TaskRecord,
    TaskStatus,
    TaskType,
    UsageRecorded,
    UserRef,
    archive_id,
    archive_uri,
    check_limit,
    check_whole,
    message_text,
    parse_archive_id,
    session_uri,
    utc_now,
    validate_id,
)
from viking_mcp.store import Store, open_store
from viking_mcp.store.base import ContextSnapshot, SessionRow, TaskRow
from viking_mcp.summarize.base import ArchiveInput, Summariser
from viking_mcp.summarize.extractive import ExtractiveSummariser
from viking_mcp.tokens import MESSAGE_OVERHEAD_TOKENS, TokenCounter

if TYPE_CHECKING:
    from viking_mcp.memory.llm import LlmPhase2

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float, str], None]

_HOST = socket.gethostname()
# Owners (one per Engine) alive in this process; a task claimed by an owner of this
# process that is not in the set was claimed by an engine that is gone.
_LIVE_OWNERS: set[str] = set()
_LIVE_OWNERS_LOCK = threading.Lock()
# A claim lasts this long without its owner finishing before anyone may take it over,
# even when the owner's process cannot be checked (another host).
PHASE2_LEASE_SECONDS = 600.0
# Tries of one Phase 2 task that breaks outside the summariser before it is marked failed.
MAX_PHASE2_ATTEMPTS = 3
# A context URI is a key of the usage counters (in PostgreSQL, of a b-tree index, which
# holds at most about 2.7 kB): a URI longer than any real one is refused, not stored.
MAX_CONTEXT_URI_BYTES = 2_000


def owner_is_gone(owner: str | None, lease_until: float) -> bool:
    """Whether a running task's owner can no longer finish it."""
    if owner is None or lease_until < time.time():
        return True
    host, _, rest = owner.partition("|")
    pid_text, _, _ = rest.partition("|")
    if host != _HOST or not pid_text.isdigit():
        return False  # another machine: only its lease tells
    pid = int(pid_text)
    if pid == os.getpid():
        with _LIVE_OWNERS_LOCK:
            return owner not in _LIVE_OWNERS
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it does, as another user's
        pass
    return False


_CURSOR = TypeAdapter(tuple[str, str])  # a page's last (created_at, session_id)


def session_cursor(created_at: str, session_id: str) -> str:
    """The cursor of the page of sessions after this one (list_sessions' next_cursor)."""
    raw = json.dumps([created_at, session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:  # bad base64, bad JSON and another shape are all ValueErrors
        return _CURSOR.validate_json(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise InvalidArgument("cursor is not one this server gave out; pass next_cursor unchanged") from None


def _task_record(row: TaskRow) -> TaskRecord:
    return TaskRecord(
        task_id=row.task_id,
        task_type=row.task_type,
        status=row.status,
        resource_id=row.session_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        result=CommitTaskResult.model_validate(row.result) if row.result else None,
        error=row.error,
    )


# get_context with a query reads at most this many passages (the budget takes fewer).
MAX_CONTEXT_PASSAGES = 60


@dataclass(frozen=True)
class PreparedMessage:
    """A message ready to be appended (`Engine.prepare_message`)."""

    session_id: str
    message: Message
    tokens: int
    now: str


class Engine:
    """Sessions, messages, commits, tasks and context over one store."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        summariser: Summariser | None = None,
        llm: LlmPhase2 | None = None,
        owner: Owner | None = None,
    ) -> None:
        self.settings = settings
        self.store: Store = store if store is not None else open_store(settings)
        self.tokens = TokenCounter(settings.encoding)
        self.summariser = summariser or ExtractiveSummariser(
            self.tokens,
            overview_max_tokens=settings.overview_max_tokens,
            abstract_max_tokens=settings.abstract_max_tokens,
        )
        if llm is None and settings.llm is not None:
            from viking_mcp.memory.llm import LlmPhase2

            llm = LlmPhase2(settings.llm, self.tokens)
        # The LLM endpoint for Phase 2, when one is configured; None means offline.
        self.llm = llm
        self.owner = owner or Owner()
        self.worker_id = f"{_HOST}|{os.getpid()}|{uuid.uuid4().hex[:12]}"
        with _LIVE_OWNERS_LOCK:
            _LIVE_OWNERS.add(self.worker_id)
        # Signalled whenever this process finishes a Phase 2 task or queues one.
        self._task_changed = threading.Condition()
        self.has_worker = False
        # Set by a Phase2Worker so that a commit wakes it at once.
        self.on_task_queued: Callable[[], None] | None = None
        # Appends for async callers (the servers): on a thread of their own, many to a transaction.
        self.batched_writes = WriteBatcher(self.store)
        self.recall = Recall(self.store, self.tokens)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with _LIVE_OWNERS_LOCK:
            _LIVE_OWNERS.discard(self.worker_id)
        self.batched_writes.close()
        self.store.close()

    # --- sessions ---------------------------------------------------------------------------

    def session_info(self, row: SessionRow) -> SessionInfo:
        """A stored session as the tools show it."""
        memories = {c: row.memories_extracted.get(c, 0) for c in MEMORY_CATEGORIES}
        memories["total"] = sum(memories.values())
        return SessionInfo(
            session_id=row.session_id,
            uri=session_uri(row.session_id),
            created_at=row.created_at,
            updated_at=row.updated_at,
            message_count=row.live_message_count,
            total_message_count=row.total_message_count,
            commit_count=row.commit_count,
            memories_extracted=memories,
            last_commit_at=row.last_commit_at,
            llm_token_usage=LlmTokenUsage(
                prompt=row.llm_prompt_tokens,
                completion=row.llm_completion_tokens,
                total=row.llm_prompt_tokens + row.llm_completion_tokens,
            ),
            pending_tokens=row.pending_tokens,
            contexts_used=row.contexts_used,
            skills_used=row.skills_used,
            metadata=row.metadata,
            user=UserRef(**vars(row.owner)),
        )

    def _check_metadata(self, metadata: object) -> dict[str, Any]:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
            raise InvalidArgument("metadata must be an object with string keys")
        limits = self.settings.limits
        check_encodable(metadata, limits.max_metadata_bytes, "metadata", limits.max_json_depth)
        return metadata

    @staticmethod
    def _visible(row: SessionRow | None, actor: Owner | None) -> SessionRow | None:
        """The session if `actor` may see it: its own account and user (None: everyone's)."""
        if row is None or actor is None:
            return row
        if (row.owner.account_id, row.owner.user_id) != (actor.account_id, actor.user_id):
            return None
        return row

    def _owner_for(self, user_id: str | None, actor: Owner | None, refused: str) -> Owner:
        """Whose data a call is about: the caller's, or another user's when no API key says who calls."""
        owner = actor or self.owner
        if user_id is None or user_id == owner.user_id:
            return owner
        if actor is not None:
            raise PermissionDenied(f"an API key for user {actor.user_id} cannot {refused}")
        return replace(owner, user_id=validate_id(user_id, "user_id"))

    def _require_session(self, session_id: str, actor: Owner | None = None) -> SessionRow:
        """The session, or NOT_FOUND, also for another user's: they never learn more."""
        row = self._visible(self.store.get_session(validate_id(session_id)), actor)
        if row is None:
            raise NotFound(f"session {session_id} not found; create it with create_session or add_message")
        return row

    def create_session(
        self,
        session_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        user_id: str | None = None,
        *,
        actor: Owner | None = None,
    ) -> SessionCreated:
        session_id = validate_id(session_id) if session_id is not None else uuid.uuid4().hex
        owner = self._owner_for(user_id, actor, f"create sessions for {user_id}")
        row = self.store.create_session(session_id, owner, self._check_metadata(metadata or {}), utc_now())
        return SessionCreated(
            session_id=row.session_id,
            uri=session_uri(row.session_id),
            created_at=row.created_at,
            user=UserRef(**vars(row.owner)),
            metadata=row.metadata,
        )

    def list_sessions(self, limit: int = 50, cursor: str | None = None, *, actor: Owner | None = None) -> SessionPage:
        check_limit(limit, MAX_PAGE)
        after = _decode_cursor(cursor) if cursor else None
        rows = self.store.list_sessions(limit + 1, after, actor)
        page = rows[:limit]
        return SessionPage(
            sessions=[
                SessionSummary(
                    session_id=r.session_id,
                    uri=session_uri(r.session_id),
                    created_at=r.created_at,
                    updated_at=r.updated_at,
                    message_count=r.live_message_count,
                    metadata=r.metadata,
                )
                for r in page
            ],
            next_cursor=session_cursor(page[-1].created_at, page[-1].session_id) if len(rows) > limit else None,
        )

    def get_session(self, session_id: str, auto_create: bool = False, *, actor: Owner | None = None) -> SessionInfo:
        validate_id(session_id)
        row = self.store.get_session(session_id)
        if row is None and auto_create:
            try:
                row = self.store.create_session(session_id, actor or self.owner, {}, utc_now())
            except AlreadyExists:  # created meanwhile by another caller: read theirs
                row = self.store.get_session(session_id)
        visible = self._visible(row, actor)
        if visible is None:
            if row is not None and auto_create:
                raise AlreadyExists(f"session id {session_id} is taken; use another session_id")
            raise NotFound(f"session {session_id} not found; pass auto_create=true to create it")
        return self.session_info(visible)

    def update_session(
        self, session_id: str, metadata: dict[str, Any], *, actor: Owner | None = None
    ) -> MetadataUpdated:
        self._require_session(session_id, actor)
        patch = self._check_metadata(metadata)
        merged = self.store.merge_metadata(session_id, patch, utc_now())
        return MetadataUpdated(session_id=session_id, metadata=merged)

    def delete_session(self, session_id: str, *, actor: Owner | None = None) -> SessionDeleted:
        self._require_session(session_id, actor)
        if not self.store.delete_session(session_id, utc_now()):
            raise NotFound(f"session {session_id} not found")
        return SessionDeleted(session_id=session_id)

    # --- messages and usage ---------------------------------------------------------------------

    def add_message(
        self,
        session_id: str,
        role: str,
        content: str | None = None,
        parts: list[Any] | None = None,
        created_at: str | None = None,
        message_id: str | None = None,
        *,
        parts_win: bool = False,
        actor: Owner | None = None,
    ) -> MessageAdded:
        """Append a message, creating the session if it does not exist yet."""
        prepared = self.prepare_message(session_id, role, content, parts, created_at, message_id, parts_win=parts_win)
        return self.write_message(prepared, actor=actor)

    def prepare_message(
        self,
        session_id: str,
        role: str,
        content: str | None = None,
        parts: list[Any] | None = None,
        created_at: str | None = None,
        message_id: str | None = None,
        *,
        parts_win: bool = False,
    ) -> PreparedMessage:
        """The first half of add_message, which reads no store: the message validated and its
        tokens counted. `write_message` stores it."""
        validate_id(session_id)
        now = utc_now()
        message = build_message(role, content, parts, created_at, message_id, self.settings.limits, now, parts_win)
        tokens = self.tokens.count(message_text(message)) + MESSAGE_OVERHEAD_TOKENS
        return PreparedMessage(session_id, message, tokens, now)

    def write_message(self, prepared: PreparedMessage, *, actor: Owner | None = None) -> MessageAdded:
        """The second half of add_message: one write to the store."""
        outcome = self.store.append_message(
            prepared.session_id, prepared.message, prepared.tokens, prepared.now, actor or self.owner, actor
        )
        return MessageAdded(
            session_id=prepared.session_id,
            message_id=outcome.message_id,
            message_count=outcome.live_message_count,
            session_created=outcome.session_created,
            duplicate=outcome.duplicate,
        )

    def record_usage(
        self,
        session_id: str,
        contexts: list[str] | None = None,
        skill: SkillUse | dict[str, Any] | None = None,
        *,
        actor: Owner | None = None,
    ) -> UsageRecorded:
        validate_id(session_id)
        uris = list(contexts or [])
        if not all(isinstance(u, str) and u for u in uris):
            raise InvalidArgument("contexts must be a list of non-empty URI strings")
        for size in (len(uri.encode("utf-8", "surrogatepass")) for uri in uris):
            if size > MAX_CONTEXT_URI_BYTES:
                raise InvalidArgument(
                    f"a context URI is {size:,} bytes long; "
                    f"the most is {MAX_CONTEXT_URI_BYTES:,}: pass the resource's URI, not its content"
                )
        skill_data = None if skill is None else validated(SkillUse, skill, "skill").model_dump()
        check_encodable({"contexts": uris, "skill": skill_data}, self.settings.limits.max_message_bytes, "usage")
        self._require_session(session_id, actor)
        contexts_used, skills_used = self.store.record_usage(session_id, uris, skill_data, utc_now())
        return UsageRecorded(session_id=session_id, contexts_used=contexts_used, skills_used=skills_used)

    # --- commit -----------------------------------------------------------------------------------

    def commit(
        self,
        session_id: str,
        abstract: str | None = None,
        overview: str | None = None,
        keep_recent_count: int = 0,
        wait: bool = False,
        on_progress: ProgressCallback | None = None,
        memories: Sequence[MemoryInput | dict[str, Any]] | None = None,
        *,
        actor: Owner | None = None,
    ) -> CommitResult:
        """Phase 1 now (archive the live messages, atomically); Phase 2 in the background.

        `abstract`, `overview` and `memories` are the calling agent's own; they are stored
        verbatim (memories merged by their category's rule) and need no LLM."""
        validate_id(session_id)
        check_whole(keep_recent_count, "keep_recent_count")
        limits = self.settings.limits
        supplied: dict[str, Any] = {}
        for name, value in (("abstract", abstract), ("overview", overview)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgument(f"{name} must be a string")
            if value and value.strip():
                check_encodable(value, limits.max_summary_bytes, name)
                supplied[name] = value.strip()
        if memories is not None:
            if not isinstance(memories, list | tuple):
                raise InvalidArgument("memories must be a list of memory objects")
            raw = [m.model_dump() if isinstance(m, MemoryInput) else m for m in memories]
            check_encodable(raw, limits.max_summary_bytes, "memories", limits.max_json_depth)
            supplied["memories"] = [validated(MemoryInput, m, "memories").model_dump() for m in raw]
        self._require_session(session_id, actor)
        task_id = uuid.uuid4().hex
        outcome = self.store.commit_phase1(session_id, keep_recent_count, supplied, task_id, utc_now())
        if outcome.archive_number is None:
            return CommitResult(
                session_id=session_id,
                status="skipped",
                task_id=None,
                archive_id=None,
                archive_uri=None,
                archived=False,
                archived_messages=0,
                reason="no_messages",
            )
        self._notify()
        result = CommitResult(
            session_id=session_id,
            status="accepted",
            task_id=outcome.task_id,
            archive_id=archive_id(outcome.archive_number),
            archive_uri=archive_uri(session_id, outcome.archive_number),
            archived=True,
            archived_messages=outcome.archived_messages,
        )
        if wait:
            try:
                task = self.wait_for_task(task_id, self.settings.commit_wait_seconds, on_progress, actor=actor)
                result.task_status = task.status
            except Exception:  # Phase 1 is committed: the caller must still get its task_id
                logger.exception("waiting for task %s failed; it stays queued", task_id)
        return result

    # --- tasks ------------------------------------------------------------------------------------

    def get_task(self, task_id: str, *, actor: Owner | None = None) -> TaskRecord:
        row = self.store.get_task(validate_id(task_id, "task_id"))
        if row is not None and actor is not None and (row.account_id, row.user_id) != (actor.account_id, actor.user_id):
            row = None  # another user's task: as if it did not exist
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return _task_record(row)

    def list_tasks(
        self,
        task_type: str | None = None,
        status: str | None = None,
        resource_id: str | None = None,
        limit: int = 50,
        *,
        offset: int = 0,
        actor: Owner | None = None,
    ) -> TaskList:
        """Tasks, newest first, optionally filtered; `offset` skips that many (MCP pages with it)."""
        if task_type is not None and task_type not in get_args(TaskType):
            raise InvalidArgument(f"task_type {task_type!r}: use session_commit or session_extract")
        if status is not None and status not in get_args(TaskStatus):
            raise InvalidArgument(f"status {status!r}: use pending, running, completed or failed")
        if resource_id is not None:
            validate_id(resource_id, "resource_id")
        check_limit(limit, MAX_PAGE)
        check_whole(offset, "offset")
        rows = self.store.list_tasks(task_type, status, resource_id, limit, actor, offset)
        return TaskList(tasks=[_task_record(r) for r in rows])

    def wait_for_task(
        self,
        task_id: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        *,
        actor: Owner | None = None,
    ) -> TaskRecord:
        """Block until the task completes or fails, or `timeout` seconds pass.

        Without a Phase 2 worker in this process, the waiting thread does the work itself.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            task = self.get_task(task_id, actor=actor)
            if task.status in ("completed", "failed"):
                return task
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return task
            if on_progress is not None:
                elapsed = time.monotonic() - started
                on_progress(elapsed, timeout, f"Phase 2 {task.status}")
            if not self.has_worker and self.run_phase2_once():
                continue
            with self._task_changed:
                self._task_changed.wait(min(0.25, remaining))

    def _notify_waiters(self) -> None:
        with self._task_changed:
            self._task_changed.notify_all()

    def _notify(self) -> None:
        """Work was queued: wake the waiters and this process's Phase 2 worker."""
        self._notify_waiters()
        if self.on_task_queued is not None:
            self.on_task_queued()

    def run_phase2_once(self) -> bool:
        """Claim one runnable Phase 2 task and run it. False when there was none.

        If Phase 2 itself breaks (not the summariser, whose failures fail the archive at
        once, but say the store), the task goes back to the queue for a later try; after
        MAX_PHASE2_ATTEMPTS it fails, visibly and retryably, instead of looping forever.
        The error is re-raised so that the worker backs off.
        """
        task = self.store.claim_phase2(self.worker_id, utc_now(), time.time() + PHASE2_LEASE_SECONDS, owner_is_gone)
        if task is None:
            return False
        try:
            run_phase2(self.store, task, self.summariser, self.tokens, self.llm, utc_now(), self.settings.limits)
        except Exception as exc:
            logger.exception("Phase 2 of task %s broke (attempt %d)", task.task_id, task.attempts)
            try:
                if task.attempts >= MAX_PHASE2_ATTEMPTS:
                    reason = f"gave up after {task.attempts} attempts: {type(exc).__name__}: {exc}"
                    self.store.fail_phase2(task, reason, utc_now())
                else:
                    self.store.release_phase2(task, utc_now())
            except Exception:
                logger.exception("could not give task %s back; its lease will expire", task.task_id)
            raise
        finally:
            self._notify_waiters()
        return True

    def run_pending_phase2(self) -> int:
        """Run every runnable Phase 2 task now, in this thread. Returns how many ran."""
        count = 0
        while self.run_phase2_once():
            count += 1
        return count

    # --- archives ---------------------------------------------------------------------------------

    def retry_archive(
        self,
        session_id: str,
        archive_id_: str,
        action: Literal["retry", "skip"] = "retry",
        *,
        actor: Owner | None = None,
    ) -> RetryResult:
        """Queue a failed archive's Phase 2 again, or mark it skipped so later commits proceed."""
        validate_id(session_id)
        number = parse_archive_id(archive_id_)
        self._require_session(session_id, actor)
        task_id: str | None = None
        if action == "retry":
            task_id = uuid.uuid4().hex
            self.store.retry_archive(session_id, number, task_id, utc_now())
        elif action == "skip":
            self.store.skip_archive(session_id, number, utc_now())
        else:
            raise InvalidArgument(f"action {action!r}: use 'retry' or 'skip'")
        self._notify()
        return RetryResult(
            session_id=session_id, archive_id=archive_id_, status="pending" if task_id else "skipped", task_id=task_id
        )

    def expand_archive(
        self,
        session_id: str,
        archive_id_: str,
        offset: int = 0,
        limit: int | None = None,
        *,
        actor: Owner | None = None,
    ) -> ArchiveDetail:
        """One archive with its status, summaries and raw messages (paged with offset/limit)."""
        validate_id(session_id)
        number = parse_archive_id(archive_id_)
        check_whole(offset, "offset")
        if limit is not None:
            check_limit(limit, MAX_ARCHIVE_PAGE)
        self._require_session(session_id, actor)
        archive = self.store.get_archive(session_id, number)
        if archive is None:
            raise NotFound(f"{archive_id_} of session {session_id} not found; see get_context for archive ids")
        stored = self.store.read_messages(session_id, archive.first_seq - 1, archive.last_seq, offset, limit)
        end = offset + len(stored)
        return ArchiveDetail(
            session_id=session_id,
            archive_id=archive_id(number),
            uri=archive_uri(session_id, number),
            status=archive.status,
            abstract=archive.shown_abstract,
            overview=archive.shown_overview,
            message_count=archive.message_count,
            messages=[m.message for m in stored],
            offset=offset,
            next_offset=end if end < archive.message_count else None,
            error=archive.error,
        )

    # --- context ----------------------------------------------------------------------------------

    def get_context(
        self, session_id: str, token_budget: int, query: str | None = None, *, actor: Owner | None = None
    ) -> SessionContext:
        """Rebuild a context window: archive overview and abstracts within budget, plus messages;
        with a query, part of the budget goes to the archived messages most relevant to it."""
        snapshot = self._context_snapshot(session_id, token_budget, actor)
        passages = self._relevant(session_id, snapshot, query, token_budget)
        return assemble_context(snapshot, token_budget, passages)

    def read_context(
        self, session_id: str, token_budget: int, query: str | None = None, *, actor: Owner | None = None
    ) -> ReadContext:
        """The context as a model reads it (MCP): one text, within the budget, counted whole."""
        snapshot = self._context_snapshot(session_id, token_budget, actor)
        passages = self._relevant(session_id, snapshot, query, token_budget)
        return read_context(snapshot, session_id, token_budget, self.tokens, passages)

    def _relevant(
        self, session_id: str, snapshot: ContextSnapshot, query: str | None, token_budget: int
    ) -> list[Passage]:
        """For get_context's query: the archived messages (not those it shows anyway) recall
        finds for it, best first, passages of about the budget in all, each counted."""
        if query is None:
            return []
        if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS or not query.strip():
            raise InvalidArgument(
                f"query: the task at hand in words (at most {MAX_QUERY_CHARS} characters), or no query at all"
            )
        terms = search_terms(query)
        if not terms:
            return []
        self.store.catch_up_recall()
        shown = {m.seq for m in active_messages(snapshot)}
        found = self.recall.candidates(
            terms, owner=None, session_id=session_id, kinds=("message",), memories=None, many=2 * CANDIDATES
        )
        passages: list[Passage] = []
        total = 0
        for passage in self.recall.passages(found, terms, shown={session_id: shown}):
            passage = replace(passage, tokens=self.tokens.count(passage.text) + 1)  # and its line's end
            passages.append(passage)
            total += passage.tokens
            if total >= token_budget or len(passages) >= MAX_CONTEXT_PASSAGES:
                break
        return passages

    def _context_snapshot(self, session_id: str, token_budget: int, actor: Owner | None) -> ContextSnapshot:
        validate_id(session_id)
        check_whole(token_budget, "token_budget")
        self._require_session(session_id, actor)
        snapshot = self.store.context_snapshot(session_id)
        if snapshot is None:
            raise NotFound(f"session {session_id} not found")
        return snapshot

    # --- long-term memories -----------------------------------------------------------------------

    def extract(self, session_id: str, *, actor: Owner | None = None) -> ExtractResult:
        """Extract memories from the live messages now, without a commit.

        Uses the LLM endpoint if one is configured, else the offline rules; the memories
        merge like Phase 2's (so extracting again, or committing later, adds no duplicates).
        Tool and skill usage is counted once, by the commit that archives it, not here.
        """
        row = self._require_session(session_id, actor)
        messages = [m.message for m in self.store.live_messages(session_id)]
        archive = ArchiveInput(session_id=session_id, archive_id="live", messages=messages, previous_overview="")
        task_id = uuid.uuid4().hex
        started = utc_now()
        prompt_tokens = completion_tokens = 0
        try:
            if self.llm is not None and messages:
                result = llm_output(self.llm, archive, self.settings.limits)
                candidates = candidates_from(result.memories)
                prompt_tokens, completion_tokens = result.prompt_tokens, result.completion_tokens
            else:
                candidates = extract_offline(messages)
            for attempt in range(3):  # another writer may merge into the same memories meanwhile
                plan = plan_memories(self.store, row.owner, candidates)
                counts = plan.counts()
                try:
                    self.store.finish_extract(
                        session_id, row.owner.account_id, task_id, plan.writes, counts, started, utc_now(),
                        llm_tokens=(prompt_tokens, completion_tokens),
                    )  # fmt: skip
                    break
                except Conflict:
                    if attempt == 2:
                        raise
        except VikingError:
            raise
        except Exception as exc:
            self.store.fail_extract(session_id, task_id, f"{type(exc).__name__}: {exc}", started, utc_now())
            raise Unavailable(
                f"extraction failed: {type(exc).__name__}: {exc}; task {task_id} has the details"
            ) from exc
        return ExtractResult(
            session_id=session_id,
            task_id=task_id,
            memories=[
                MemoryWriteResult(
                    uri=w.memory.uri,
                    category=w.memory.category,
                    abstract=w.memory.abstract,
                    action=w.action,
                )
                for w in plan.writes
            ],
            memories_extracted={**counts, "total": sum(counts.values())},
        )

    def search(
        self,
        query: str,
        session_id: str | None = None,
        kinds: Sequence[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 10,
        token_budget: int | None = None,
        *,
        actor: Owner | None = None,
    ) -> SearchResult:
        """Search everything remembered: messages (live and archived), archives' summaries and
        long-term memories; best first, scores 0..1, passages cut to `token_budget` tokens.

        Without `session_id`, every session the caller may see (an API key's own; with no key,
        every session) and the caller's memories; with one, that session only (memories only
        when `kinds` names them). `since`/`until`: ISO 8601, on when it was said."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgument("query is empty; give some words to look for")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"query is {len(query)} characters; at most {MAX_QUERY_CHARS}")
        check_limit(limit, MAX_SEARCH_RESULTS)
        if token_budget is not None:
            check_whole(token_budget, "token_budget")
        chosen = self._search_kinds(kinds, session_id is None)
        start = self._moment(since, "since") if since is not None else None
        end = self._moment(until, "until", through_the_day=True) if until is not None else None
        if start is not None and end is not None and start > end:
            raise InvalidArgument(f"since ({since}) is after until ({until}); swap them")
        scope: tuple[str, str] | None = None
        if session_id is not None:
            self._require_session(session_id, actor)  # another user's session is not found
        elif actor is not None:
            scope = (actor.account_id, actor.user_id)
        terms = search_terms(query)
        if not terms:
            return SearchResult(query=query, results=[], estimatedTokens=0)
        self.store.catch_up_recall()
        owner = actor or self.owner
        owners = {str(scope): space for scope, space in owners_of(owner).items()}
        found = self.recall.candidates(
            terms,
            owner=scope,
            session_id=session_id,
            kinds=chosen,
            memories=lambda match, many: self.store.search_memories(owner.account_id, owners, match, None, many),
            many=CANDIDATES_IN_RANGE if start or end else max(CANDIDATES, 2 * limit),
        )
        passages, used = fit(
            self.recall.passages(found, terms, since=start, until=end), limit, token_budget, self.tokens
        )
        return SearchResult(
            query=query,
            results=[
                SearchHit(
                    uri=p.uri,
                    kind=p.kind,  # type: ignore[arg-type]
                    session_id=p.session_id,
                    archive_id=archive_id(p.archive_number) if p.archive_number is not None else None,
                    created_at=p.created_at,
                    score=round(p.score, 4),
                    text=p.text,
                )
                for p in passages
            ],
            estimatedTokens=used,
        )

    @staticmethod
    def _search_kinds(kinds: Sequence[str] | None, everywhere: bool) -> tuple[str, ...]:
        if kinds is None:
            return SEARCH_KINDS if everywhere else ("message", "archive")
        if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
            raise InvalidArgument(f"kinds: a non-empty list of {', '.join(SEARCH_KINDS)}")
        unknown = [k for k in kinds if k not in SEARCH_KINDS]
        if unknown:
            raise InvalidArgument(f"kinds: {unknown[0]!r} is not one of {', '.join(SEARCH_KINDS)}")
        return tuple(k for k in SEARCH_KINDS if k in kinds)

    @staticmethod
    def _moment(value: object, what: str, *, through_the_day: bool = False) -> datetime:
        """A time from an ISO 8601 date or time; `through_the_day`: a date alone is its last moment
        (until 2023-05-08 takes in what was said that day)."""
        if not isinstance(value, str):
            raise InvalidArgument(f"{what}: an ISO 8601 date or time, e.g. 2023-05-08 or 2023-05-08T13:00:00Z")
        try:
            moment = parse_moment(value, what)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if through_the_day and len(value.strip()) == len("2023-05-08"):
            moment += timedelta(days=1, microseconds=-1)
        return moment

    def search_memories(
        self,
        query: str,
        category: str | None = None,
        limit: int = 10,
        user_id: str | None = None,
        *,
        actor: Owner | None = None,
    ) -> MemorySearchResult:
        """Ranked full-text search (BM25) over this user's and agent's memories; works offline."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgument("query is empty; give some words to look for")
        if category is not None and category not in MEMORY_CATEGORIES:
            raise InvalidArgument(f"category {category!r}: use one of {', '.join(MEMORY_CATEGORIES)}")
        check_limit(limit, MAX_SEARCH_RESULTS)
        owner = self._owner_for(user_id, actor, f"search {user_id}'s memories")
        match = fts_query(query)
        if match is None:
            return MemorySearchResult(query=query, memories=[])
        owners = {str(scope): space for scope, space in owners_of(owner).items()}
        hits = self.store.search_memories(owner.account_id, owners, match, category, limit)
        # Scores as fractions of the best hit's (which scores 1.0): the same scale on every
        # store, whatever the database's own rank (see README, "Search"). Rows come best first.
        best = hits[0][1] if hits else 0.0
        rows = [(memory, score / best if best > 0 else 1.0) for memory, score in hits]
        return MemorySearchResult(
            query=query,
            memories=[
                MemoryHit(
                    uri=m.uri,
                    category=m.category,
                    abstract=m.abstract,
                    score=round(score, 6),
                    active_count=m.active_count,
                )
                for m, score in rows
            ],
        )
