"""The shapes that cross a boundary: parts, messages, sessions, archives, tasks, context.

Pydantic models here are the single definition of each shape: the MCP tools' input and
output schemas, the embedded API's return values and (later) the HTTP bodies all come
from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Field, model_validator

from viking_mcp.errors import InvalidArgument

# --- identifiers -------------------------------------------------------------------

ID_MAX_LENGTH = 128
# A safe alphabet that is never a path: no separators, no "..", no NUL, no spaces.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ARCHIVE_RE = re.compile(r"archive_([0-9]{3,9})")  # ASCII digits only, no look-alikes

Role = Literal["user", "assistant"]


def validate_id(value: object, what: str = "session_id") -> str:
    """Return `value` if it is a safe id, else raise INVALID_ARGUMENT saying what is allowed."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{what} is empty; use 1-{ID_MAX_LENGTH} characters from A-Z a-z 0-9 . _ -")
    if len(value) > ID_MAX_LENGTH:
        raise InvalidArgument(f"{what} is {len(value)} characters long; the limit is {ID_MAX_LENGTH}")
    if not _ID_RE.fullmatch(value) or ".." in value:
        raise InvalidArgument(
            f"{what} {value[:40]!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no '/', '..', spaces or control characters)"
        )
    return value


def archive_id(number: int) -> str:
    """archive_001, archive_002, ... (wider past 999)."""
    return f"archive_{number:03d}"


def parse_archive_id(value: object) -> int:
    if not isinstance(value, str) or not (match := _ARCHIVE_RE.fullmatch(value)):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise InvalidArgument(f"archive_id {shown!r} is not an archive id; they look like 'archive_001'")
    number = int(match.group(1))
    if number < 1:
        raise InvalidArgument("archive ids are numbered from archive_001")
    if archive_id(number) != value:  # one spelling per archive: archive_0001 is not archive_001
        raise InvalidArgument(f"archive_id {value!r} is not canonical; it is spelt {archive_id(number)!r}")
    return number


def session_uri(session_id: str) -> str:
    return f"viking://session/{session_id}"


def archive_uri(session_id: str, number: int) -> str:
    return f"viking://session/{session_id}/history/{archive_id(number)}"


# --- request bounds and defaults, defined once ---------------------------------------
# The engine checks them (the embedded API calls it directly); the MCP tools, the HTTP
# routes and the CLI declare them from here.

MAX_PAGE = 500  # sessions or tasks in one listing
MAX_SEARCH_RESULTS = 100
MAX_ARCHIVE_PAGE = 100_000  # messages in one page of an archive (MCP's expand_archive pages by 1,000 at most)
# The largest count a caller may give (a token budget, an offset, messages to keep live) and
# an export may hold (a token count, a counter): 2**53, the largest whole number every JSON
# reader keeps exact. Far past any real session, and far inside the stores' 64-bit integers,
# so that no sum the store makes of them can overflow.
MAX_COUNT = 2**53
PageLimit = Annotated[int, Ge(1), Le(MAX_PAGE)]
SearchLimit = Annotated[int, Ge(1), Le(MAX_SEARCH_RESULTS)]
Count = Annotated[int, Ge(0), Le(MAX_COUNT)]
MAX_QUERY_CHARS = 2000
SearchQuery = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
# OpenViking's default budget for get_session_context: the HTTP API, the embedded Client
# and the CLI keep it, so that OpenViking's clients see the same context. MCP's default is
# a setting (config.py, VIKING_MCP_DEFAULT_TOKEN_BUDGET, 20,000): a model's window is
# smaller than what OpenViking's SDK assumes.
OPENVIKING_TOKEN_BUDGET = 128_000


def check_limit(limit: object, most: int) -> int:
    """`limit` if it is a whole number in 1..most, else INVALID_ARGUMENT."""
    return check_whole(limit, "limit", 1, most)


def check_whole(value: object, what: str, least: int = 0, most: int = MAX_COUNT) -> int:
    """`value` if it is a whole number in least..most, else INVALID_ARGUMENT naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be a whole number from {least} to {most}, got {type(value).__name__}")
    if not least <= value <= most:
        # A number of thousands of digits cannot even be printed (Python refuses): show its size.
        shown = f"a {value.bit_length()}-bit number" if abs(value) > 10**30 else str(value)
        raise InvalidArgument(f"{what} {shown} is out of range; use {least}..{most}")
    return value


# --- time ----------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a fixed width, so that strings sort like times."""
    utc = moment.astimezone(UTC)
    # The year is padded by hand: strftime writes year 1 as "1", which is not ISO 8601.
    return f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def normalize_time(value: str) -> str:
    """Accept any ISO 8601 timestamp (naive means UTC) and return it in our UTC form."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise InvalidArgument(
            f"created_at {str(value)[:40]!r} is not an ISO 8601 timestamp; e.g. '2026-11-22T10:00:00Z'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return format_time(moment)
    except (OverflowError, ValueError):  # e.g. year 1 at UTC+1 falls before the calendar starts
        raise InvalidArgument(f"created_at {value[:40]!r} is out of range; use a year between 1 and 9999") from None


# --- parts and messages ----------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid")


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"] = "text"
    text: str = Field(description="The text of the message.")


class ContextPart(BaseModel):
    """A resource, memory or skill the message used, by URI."""

    model_config = _STRICT
    type: Literal["context"] = "context"
    uri: str = Field(description="viking:// URI (or any URI) of the context that was used.")
    context_type: Literal["resource", "memory", "skill"] = Field(
        default="resource", description="What kind of context it is."
    )
    abstract: str = Field(default="", description="One-line summary of that context.")


class ToolPart(BaseModel):
    """A tool call and (once known) its output."""

    model_config = _STRICT
    type: Literal["tool"] = "tool"
    tool_id: str = Field(
        description="Id of this tool call, unique in the session; the same id updates it.",
        min_length=1,
        max_length=ID_MAX_LENGTH,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    tool_name: str = Field(description="Name of the tool that was called.")
    skill_uri: str | None = Field(default=None, description="URI of the skill the tool belongs to, if any.")
    tool_input: dict[str, Any] = Field(default_factory=dict, description="Arguments the tool was called with.")
    tool_output: str = Field(default="", description="What the tool returned, as text.")
    tool_status: Literal["pending", "running", "completed", "error"] = Field(
        default="pending", description="Where the call is: pending, running, completed or error."
    )


Part = Annotated[TextPart | ContextPart | ToolPart, Field(discriminator="type")]


class Message(BaseModel):
    id: str
    role: Role
    parts: list[Part]
    created_at: str


def message_text(message: Message) -> str:
    """The text a model would read for this message; what its token count measures."""
    lines: list[str] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            lines.append(part.text)
        elif isinstance(part, ContextPart):
            lines.append(f"[{part.context_type}: {part.uri}] {part.abstract}".rstrip())
        else:
            lines.append(f"[tool {part.tool_name} ({part.tool_status})] {part.tool_input} -> {part.tool_output}")
    return "\n".join(lines)


def message_line(message: Message, when: str) -> str:
    """A message as one line a model reads: `[when] role: text`, its own lines indented under it."""
    return f"[{when}] {message.role}: " + message_text(message).replace("\n", "\n  ")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 message`, `2 messages` (`nouns` when the plural is not `noun` + s)."""
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


# --- sessions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Who a session belongs to."""

    account_id: str = "default"
    user_id: str = "default"
    agent_id: str = "default"


class UserRef(BaseModel):
    account_id: str
    user_id: str
    agent_id: str


class LlmTokenUsage(BaseModel):
    prompt: int = 0
    completion: int = 0
    total: int = 0


class SessionCreated(BaseModel):
    session_id: str
    uri: str
    created_at: str
    user: UserRef
    metadata: dict[str, Any]


class SessionSummary(BaseModel):
    session_id: str
    uri: str
    created_at: str
    updated_at: str
    message_count: int = Field(description="Live (not yet committed) messages.")
    metadata: dict[str, Any]


class SessionPage(BaseModel):
    sessions: list[SessionSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class SessionInfo(BaseModel):
    session_id: str
    uri: str
    created_at: str
    updated_at: str
    message_count: int = Field(description="Live messages, not yet committed.")
    total_message_count: int = Field(description="Every message ever added, live or archived.")
    commit_count: int
    memories_extracted: dict[str, int] = Field(description="Per memory category, plus 'total'.")
    last_commit_at: str | None
    llm_token_usage: LlmTokenUsage
    pending_tokens: int = Field(description="Tokens of the live messages: how full the window is.")
    contexts_used: int
    skills_used: int
    metadata: dict[str, Any]
    user: UserRef


class MetadataUpdated(BaseModel):
    session_id: str
    metadata: dict[str, Any]


class SessionDeleted(BaseModel):
    session_id: str
    deleted: bool = True


class MessageAdded(BaseModel):
    session_id: str
    message_id: str
    message_count: int = Field(description="Live messages after this one.")
    session_created: bool = Field(description="True when this call created the session.")
    duplicate: bool = Field(default=False, description="True when message_id was already stored.")


class UsageRecorded(BaseModel):
    session_id: str
    contexts_used: int
    skills_used: int


class SkillUse(BaseModel):
    model_config = _STRICT
    uri: str = Field(description="URI of the skill that was used.")
    input: str = Field(default="", description="What the skill was given.")
    output: str = Field(default="", description="What it produced.")
    success: bool = Field(default=True, description="Whether it worked.")


# --- memories ------------------------------------------------------------------------------

Scope = Literal["user", "agent"]  # whose memory space: the user's or the agent's


@dataclass(frozen=True)
class StoredMemory:
    uri: str
    scope: Scope
    owner_id: str
    category: MemoryCategory
    key: str
    name: str | None
    abstract: str
    overview: str
    content: str
    stats: dict[str, int]
    version: int = 0
    created_at: str = ""
    updated_at: str = ""
    active_count: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"abstract": self.abstract, "overview": self.overview, "content": self.content, "stats": self.stats}


@dataclass(frozen=True)
class MemoryWrite:
    action: Literal["add", "update"]
    memory: StoredMemory
    # The version the update was planned against; the store refuses the write if it moved.
    expected_version: int | None
    before: StoredMemory | None


MemoryCategory = Literal["profile", "preferences", "entities", "events", "cases", "patterns", "tools", "skills"]


class MemoryInput(BaseModel):
    """A long-term memory as a caller (or an LLM) states it; merged by its category's rule."""

    model_config = _STRICT
    category: MemoryCategory = Field(
        description="profile (about the user, one memory), preferences (by topic), entities (people, places, "
        "things, by name), events (dated, never merged), cases (problem and solution), patterns (recurring "
        "ways of working), tools and skills (by name)."
    )
    abstract: str = Field(min_length=1, max_length=1000, description="One line: the memory itself (L0).")
    overview: str = Field(default="", max_length=20_000, description="A short paragraph of detail (L1).")
    content: str = Field(default="", max_length=200_000, description="The full text (L2).")
    name: str | None = Field(
        default=None,
        max_length=200,
        description="What it is about: the topic of a preference, the entity's name, the tool's or skill's "
        "name, the pattern's name. Memories with the same category and name are merged.",
    )
    when: str | None = Field(default=None, max_length=40, description="For events: when it happened (ISO date).")


class MemoryWriteResult(BaseModel):
    uri: str
    category: MemoryCategory
    abstract: str
    action: Literal["add", "update"]


class ExtractResult(BaseModel):
    session_id: str
    task_id: str
    memories: list[MemoryWriteResult] = Field(description="Memories added or updated (unchanged ones are left out).")
    memories_extracted: dict[str, int] = Field(description="Per memory category, plus 'total'.")


class MemoryHit(BaseModel):
    uri: str = Field(description="Read the whole memory as an MCP resource at this URI.")
    category: MemoryCategory
    abstract: str
    score: float = Field(description="Relevance (BM25); higher is better.")
    active_count: int = Field(description="How often the memory was used (record_usage).")


class MemorySearchResult(BaseModel):
    query: str
    memories: list[MemoryHit]


# --- recall: search over everything remembered ----------------------------------------------

SearchKind = Literal["message", "archive", "memory"]
SEARCH_KINDS: tuple[SearchKind, ...] = ("message", "archive", "memory")


class SearchHit(BaseModel):
    uri: str = Field(description="Where the passage is: a message (#its id in the messages.jsonl it is in), an "
                     "archive, or a memory; read it as an MCP resource (without the #fragment).")  # fmt: skip
    kind: SearchKind
    session_id: str | None = Field(description="The session it is from (null for a memory).")
    archive_id: str | None = Field(description="The archive holding it (null for a live message or a memory).")
    created_at: str = Field(description="When it was said (a message), the last message it summarises (an archive), "
                            "or the memory's last update.")  # fmt: skip
    score: float = Field(description="0..1: the share of the query's words (weighed by rarity) it holds, a little "
                         "more for many; the same scale for every kind and every query.")  # fmt: skip
    text: str = Field(description="A readable passage: the message with its speaker and date (relative dates "
                      "resolved) and the neighbouring question or answer; an archive's summary; a memory's "
                      "abstract.")  # fmt: skip


class SearchResult(BaseModel):
    query: str
    results: list[SearchHit]
    estimatedTokens: int = Field(description="The passages' tokens (cl100k), within token_budget when one was given.")


# --- commit, archives, tasks -------------------------------------------------------------

ArchiveStatus = Literal["pending", "completed", "failed", "skipped"]
TaskStatus = Literal["pending", "running", "completed", "failed"]
TaskType = Literal["session_commit", "session_extract"]


class CommitResult(BaseModel):
    session_id: str
    status: Literal["accepted", "skipped"]
    task_id: str | None
    archive_id: str | None
    archive_uri: str | None
    archived: bool = Field(description="Whether an archive was made (as in OpenViking); false when skipped.")
    archived_messages: int = Field(description="How many messages moved into the archive.")
    reason: str | None = Field(default=None, description="Why nothing was archived, when skipped.")
    task_status: TaskStatus | None = Field(
        default=None, description="With wait=true: the task's status when the call returned."
    )

    @model_validator(mode="before")
    @classmethod
    def _count_in_archived(cls, data: Any) -> Any:
        """Read a result from an older server, whose `archived` was the count of messages
        (the CLI's --url talks to whatever version is running there)."""
        if isinstance(data, dict) and type(data.get("archived")) is int and "archived_messages" not in data:
            count = data["archived"]
            return {**data, "archived": count > 0, "archived_messages": count}
        return data


class CommitTaskResult(BaseModel):
    """A task's result: a commit's archive (session_commit) or an extraction (session_extract)."""

    session_id: str
    archive_id: str | None = None
    archive_uri: str | None = None
    memories_extracted: dict[str, int]
    active_count_updated: int = 0


class TaskRecord(BaseModel):
    task_id: str
    task_type: TaskType
    status: TaskStatus
    resource_id: str = Field(description="The session id the task works on.")
    created_at: str
    updated_at: str
    result: CommitTaskResult | None = None
    error: str | None = None


class TaskList(BaseModel):
    tasks: list[TaskRecord]


class ArchiveDetail(BaseModel):
    session_id: str
    archive_id: str
    uri: str
    status: ArchiveStatus
    abstract: str
    overview: str
    message_count: int
    messages: list[Message]
    offset: int = 0
    next_offset: int | None = Field(default=None, description="Pass as `offset` for more messages; null at the end.")
    error: str | None = None


class RetryResult(BaseModel):
    session_id: str
    archive_id: str
    status: ArchiveStatus
    task_id: str | None


# --- context -------------------------------------------------------------------------------


class ArchiveAbstract(BaseModel):
    archive_id: str
    abstract: str


class ContextStats(BaseModel):
    totalArchives: int = Field(description="Completed and failed archives (pending ones appear as messages).")
    includedArchives: int = Field(description="Archives whose abstract was returned.")
    droppedArchives: int = Field(description="Completed archives left out for lack of budget.")
    failedArchives: int = Field(description="Archives whose Phase 2 failed; retry them with retry_archive.")
    activeTokens: int = Field(description="Tokens of the returned messages.")
    archiveTokens: int = Field(description="Tokens of the returned overview, abstracts and relevant passages.")


class RelevantPassage(BaseModel):
    """An archived message the query asked for (get_context with `query`), with its neighbours."""

    archive_id: str
    uri: str
    created_at: str
    score: float
    text: str


class SessionContext(BaseModel):
    latest_archive_id: str | None
    latest_archive_overview: str
    pre_archive_abstracts: list[ArchiveAbstract]
    relevant_passages: list[RelevantPassage] = Field(
        default_factory=list,
        description="With a query: the archived messages most relevant to it, best first (counted in estimatedTokens).",
    )
    messages: list[Message]
    estimatedTokens: int
    stats: ContextStats
