"""What the store's operations take and return. The store itself, and the guarantees it
keeps, are in store/sql.py."""

from __future__ import annotations

from collections.abc import Iterator
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
class RecallRow:
    """A document recall's full-text index matched: a message or an archive's summaries."""

    session_id: str
    kind: str  # "message" or "archive"
    number: int  # the message's seq, or the archive's number
    rank: float  # the database's relevance (BM25 on SQLite, ts_rank on PostgreSQL): higher is better
    text: str  # the text indexed (memory.search.indexed_message / indexed_archive)


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
    # Every stored rendering of the overview, longest first; `overview` is one of them (the
    # first, unless the agent or an LLM wrote it: then the longer ones show it after the
    # earlier archives' sections).
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
    archived_messages: int
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
    # The archive's `.overview.md`: the overview as the agent or an LLM wrote it, or the
    # longest of the extractive summariser's renderings. It is one of the renderings.
    overview: str
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
class PreviousOverview:
    """What Phase 2 carries forward from the latest completed archive before another."""

    number: int  # 0: there is none
    overview: str  # its `.overview.md`, as written
    longest: str  # its longest rendering


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


@dataclass
class TransferCounts:
    sessions: int = 0
    messages: int = 0
    archives: int = 0
    tool_records: int = 0
    tasks: int = 0
    memories: int = 0
    context_usage: int = 0
