"""The store's interface: the logical viking:// tree as transactional operations.

The engine validates, counts tokens and decides; a store only keeps bytes and makes
each operation atomic. The embedded SQLite store (store/sqlite.py) and the PostgreSQL
store for many instances (store/postgres.py) implement the same methods with the same
guarantees:

- every method is one transaction: it happens entirely or not at all;
- appends cost the same however long the session is (no method reads a whole session
  to add to it);
- commit Phase 1 is O(1) in the number of messages: an archive is a range of message
  sequence numbers, so moving the live buffer into an archive rewrites no message.

`write_batch()` groups the methods one thread calls inside it into one transaction (a
group commit): each still happens entirely or not at all, none is durable (or visible to
others) before the batch commits, and if the batch cannot commit, none happens. A store
may also commit each on its own (PostgreSQL does: its appends lock a session's row, and
a batch would hold many).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from viking_mcp.models import ArchiveStatus, MemoryWrite, Message, Owner, StoredMemory, TaskStatus, TaskType


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    owner: Owner
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    total_message_count: int
    live_message_count: int
    pending_tokens: int
    commit_count: int
    last_commit_at: str | None
    llm_prompt_tokens: int
    llm_completion_tokens: int
    memories_extracted: dict[str, int]
    contexts_used: int
    skills_used: int


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    message: Message
    tokens: int


@dataclass(frozen=True)
class AppendOutcome:
    message_id: str
    live_message_count: int
    session_created: bool
    duplicate: bool


@dataclass(frozen=True)
class OverviewRendering:
    tokens: int
    text: str


# Not frozen, but slotted: get_context lists every archive of a session on every call, and a
# frozen dataclass's __init__ (object.__setattr__ per field) costs ten times more: 1.4 ms of
# a 6 ms get_context with 1,000 archives. Nothing assigns to one after it is built.
@dataclass(slots=True)
class ArchiveRow:
    session_id: str
    number: int
    first_seq: int
    last_seq: int
    message_count: int
    tokens: int
    status: ArchiveStatus
    created_at: str
    done_at: str | None
    abstract: str
    abstract_tokens: int
    overview: str
    # Every stored rendering of the overview, longest first (the first is `overview`).
    overview_renderings: list[OverviewRendering]
    memory_diff: dict[str, Any] | None
    supplied: dict[str, Any]
    error: str | None
    task_id: str | None

    @property
    def summarised(self) -> bool:
        """Whether its summaries may be shown: only a completed archive's are final (a
        pending, failed or skipped one shows none, whatever a failed try left behind)."""
        return self.status == "completed"

    @property
    def shown_abstract(self) -> str:
        return self.abstract if self.summarised else ""

    @property
    def shown_overview(self) -> str:
        return self.overview if self.summarised else ""


@dataclass(frozen=True)
class Phase1Outcome:
    archive_number: int | None  # None: nothing to archive
    archived: int
    task_id: str | None


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    task_type: TaskType
    status: TaskStatus
    session_id: str
    archive_number: int | None
    created_at: str
    updated_at: str
    result: dict[str, Any] | None
    error: str | None
    owner: str | None = None
    attempts: int = 0
    # whose session the task worked on (kept after the session is deleted)
    account_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class Phase2Output:
    """Everything Phase 2 writes, in one transaction, ending with the `.done` marker."""

    abstract: str
    abstract_tokens: int
    overview_renderings: list[OverviewRendering]
    memory_diff: dict[str, Any]
    memories_extracted: dict[str, int]
    result: dict[str, Any]
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    account_id: str = "default"
    memory_writes: list[MemoryWrite] = field(default_factory=list)
    # memory spaces of the session's owner: {"user": user_id, "agent": agent space}
    memory_owners: dict[str, str] = field(default_factory=dict)

    def may_use(self, uri: str) -> bool:
        """Whether the session's owner may raise `uri`'s active count (not another's memory)."""
        for scope in ("user", "agent"):
            prefix = f"viking://{scope}/"
            if uri.startswith(prefix):
                return uri[len(prefix) :].split("/", 1)[0] == self.memory_owners.get(scope)
        return True


@dataclass(frozen=True)
class ContextSnapshot:
    """What get_context needs, read in one consistent transaction."""

    archives: list[ArchiveRow]  # without overview renderings, except for the latest completed
    messages: list[StoredMessage]


@dataclass(frozen=True)
class ToolRecord:
    tool_id: str
    tool_name: str
    skill_uri: str | None
    tool_input: dict[str, Any]
    tool_output: str
    tool_status: str
    message_id: str
    created_at: str
    updated_at: str


@dataclass
class UsageRecord:
    contexts: list[str] = field(default_factory=list)
    skills: list[dict[str, Any]] = field(default_factory=list)


class Store(Protocol):
    def close(self) -> None: ...
    def write_batch(self) -> AbstractContextManager[None]:
        """The writes this thread makes inside, committed together (see the module's docstring)."""
        ...

    def schema_version(self) -> int:
        """How far the store's schema has come (migrations run when it opens)."""
        ...

    # sessions
    def create_session(self, session_id: str, owner: Owner, metadata: dict[str, Any], now: str) -> SessionRow: ...
    def get_session(self, session_id: str) -> SessionRow | None: ...
    def list_sessions(
        self, limit: int, after: tuple[str, str] | None, owner: Owner | None = None
    ) -> list[SessionRow]: ...
    def merge_metadata(self, session_id: str, patch: dict[str, Any], now: str) -> dict[str, Any]: ...
    def delete_session(self, session_id: str, now: str) -> bool: ...

    # messages
    def append_message(
        self,
        session_id: str,
        message: Message,
        tokens: int,
        now: str,
        create_as: Owner | None,
        only_for: Owner | None = None,
    ) -> AppendOutcome: ...
    def read_messages(
        self, session_id: str, after_seq: int, through_seq: int | None, offset: int, limit: int | None
    ) -> list[StoredMessage]: ...
    def live_messages(self, session_id: str) -> list[StoredMessage]: ...

    # usage and tool records
    def record_usage(
        self, session_id: str, contexts: list[str], skill: dict[str, Any] | None, now: str
    ) -> tuple[int, int]: ...
    def usage(self, session_id: str) -> UsageRecord: ...
    def tool_records(self, session_id: str) -> list[ToolRecord]: ...

    # commit and archives
    def commit_phase1(
        self, session_id: str, keep_recent: int, supplied: dict[str, Any], task_id: str, now: str
    ) -> Phase1Outcome: ...
    def list_archives(self, session_id: str) -> list[ArchiveRow]: ...
    def get_archive(self, session_id: str, number: int) -> ArchiveRow | None: ...
    def context_snapshot(self, session_id: str) -> ContextSnapshot | None: ...

    # tasks and Phase 2
    def get_task(self, task_id: str) -> TaskRow | None: ...
    def list_tasks(
        self,
        task_type: str | None,
        status: str | None,
        session_id: str | None,
        limit: int,
        owner: Owner | None = None,
    ) -> list[TaskRow]: ...
    def claim_phase2(
        self, owner: str, now: str, lease_until: float, owner_is_gone: Callable[[str | None, float], bool]
    ) -> TaskRow | None: ...
    def previous_overview(self, session_id: str, number: int) -> str: ...
    def finish_phase2(self, task: TaskRow, output: Phase2Output, now: str) -> bool: ...
    def release_phase2(self, task: TaskRow, now: str) -> None: ...
    def fail_phase2(self, task: TaskRow, error: str, now: str) -> None: ...
    def retry_archive(self, session_id: str, number: int, task_id: str, now: str) -> None: ...
    def skip_archive(self, session_id: str, number: int, now: str) -> None: ...
    def archive_usage(self, session_id: str, number: int) -> UsageRecord: ...

    # long-term memories
    def memories_by_uri(self, account_id: str, uris: list[str]) -> dict[str, StoredMemory]: ...
    def memories_in_category(self, account_id: str, scope: str, owner_id: str, category: str) -> list[StoredMemory]: ...
    def list_memories(
        self, account_id: str, scope: str, owner_id: str, category: str | None, limit: int
    ) -> list[StoredMemory]: ...
    def finish_extract(
        self,
        session_id: str,
        account_id: str,
        task_id: str,
        writes: list[MemoryWrite],
        counts: dict[str, int],
        created_at: str,
        now: str,
        llm_tokens: tuple[int, int] = (0, 0),
    ) -> None: ...
    def fail_extract(self, session_id: str, task_id: str, error: str, created_at: str, now: str) -> None: ...
    def search_memories(
        self, account_id: str, owners: dict[str, str], match: str, category: str | None, limit: int
    ) -> list[tuple[StoredMemory, float]]: ...

    # export and import: the whole tree as records (`viking-mcp export` / `import`)
    def export_tree(self) -> AbstractContextManager[TreeRecords]:
        """Every session, task, memory and context-usage count, read in one consistent snapshot
        that lasts while the context is open."""
        ...

    def import_tree(self, records: TreeRecords, replace: bool, now: str) -> TransferCounts:
        """Write what `records` yields in one transaction: all of it or nothing. A session, task
        or memory that already exists is ALREADY_EXISTS, unless `replace` (then the imported one
        replaces it; a replaced session's unfinished tasks fail as if it had been deleted)."""
        ...


# --- export and import ------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageEntry:
    """One record_usage row: a context URI or a skill use, and the archive that took it in."""

    kind: Literal["context", "skill"]
    uri: str
    payload: dict[str, Any]
    created_at: str
    archive_number: int | None


@dataclass(frozen=True)
class SessionDump:
    """One session, everything the store keeps of it. Message sequence numbers run 1..n with
    no gaps, archived messages first; the session's counters follow from the messages and
    archives (an importing store derives them)."""

    session: SessionRow
    messages: list[StoredMessage]
    archives: list[ArchiveRow]
    tools: list[ToolRecord]
    usage: list[UsageEntry]


@dataclass(frozen=True)
class MemoryDump:
    account_id: str
    memory: StoredMemory  # its active_count comes from the context-usage records, not from here
    source: dict[str, Any]


@dataclass(frozen=True)
class ContextUsage:
    """How often a context (memory or resource) was used, per account."""

    account_id: str
    uri: str
    active_count: int
    last_used_at: str | None


class TreeRecords(Protocol):
    """The store's content as records: what export reads out and import writes back. Tasks
    come in creation order (oldest first), so that an import keeps their order."""

    def sessions(self) -> Iterator[SessionDump]: ...
    def tasks(self) -> Iterator[TaskRow]: ...
    def memories(self) -> Iterator[MemoryDump]: ...
    def context_usage(self) -> Iterator[ContextUsage]: ...


@dataclass(frozen=True)
class TransferCounts:
    sessions: int = 0
    messages: int = 0
    archives: int = 0
    tool_records: int = 0
    tasks: int = 0
    memories: int = 0
    context_usage: int = 0
