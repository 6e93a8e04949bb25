"""The files of an export: what each one holds, as pydantic models.

`viking-mcp export DIR` writes the viking:// tree as plain files, and `viking-mcp import
DIR` reads them back. A file that the tree already has (a session's `.meta.json`, a
`messages.jsonl`, an archive's `.abstract.md`) has the tree's content; what the store
keeps beyond the tree (token counts, an overview's other renderings, the summaries an
agent supplied for a pending archive, the order of usage records) is added where it
belongs, so the round trip loses nothing:

    DIR/
      .viking-export.json               what this is: format version, counts; written last
      session/{session_id}/
        .meta.json                      the session as get_session shows it: owner, times,
                                        metadata, counters
        messages.jsonl                  live messages, one a line, each with its token count
        .abstract.md  .overview.md      the latest completed archive's (as in the tree)
        .relations.json                 contexts and skills used (record_usage), in order
        tools/{tool_id}/tool.json       each tool call's latest state
        history/archive_NNN/
          .meta.json                    status, times, error, task, token counts, the
                                        overview's other renderings, the summaries the
                                        agent supplied
          messages.jsonl  .abstract.md  .overview.md  memory_diff.json  .done
      user/{user_id}/memories/          profile.md  preferences/ entities/ events/ ({key}.md)
      agent/{agent_id}/memories/        cases/ patterns/ tools/ skills/ ({key}.md)
      accounts/{account_id}/user/...    the same, for accounts other than "default"
      tasks.jsonl                       every task, oldest first
      context_usage.jsonl               how often each context was used (active_count)

A memory file is markdown with a front matter of `field: <JSON>` lines; the front matter
is the memory (the body below it is a rendering for people, and import ignores it).

Ids are case-sensitive, most filesystems people copy an export to are not (macOS's and
Windows' default): of two ids that differ only in case, the second one written is named
`{id}~2` (`~3`...; `~` is in no id), as `session/trip~2/` beside `session/Trip/`, so that
no filesystem merges them. Import takes every id from inside its files.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# Every count, token count and version in an export is a Count: never negative, never past
# models.MAX_COUNT (2**53), so that what the store adds up from them stays far inside its integers.
from viking_mcp.models import ArchiveStatus, Count, MemoryCategory, Message, Scope, TaskStatus, TaskType

FORMAT_VERSION = 1

MANIFEST = ".viking-export.json"
SESSIONS = "session"
ACCOUNTS = "accounts"
TASKS = "tasks.jsonl"
CONTEXT_USAGE = "context_usage.jsonl"
META = ".meta.json"
MESSAGES = "messages.jsonl"
ABSTRACT = ".abstract.md"
OVERVIEW = ".overview.md"
RELATIONS = ".relations.json"
TOOLS = "tools"
TOOL = "tool.json"
HISTORY = "history"
MEMORY_DIFF = "memory_diff.json"
DONE = ".done"
DEFAULT_ACCOUNT = "default"


class Manifest(BaseModel):
    format: Literal["viking-mcp-export"] = "viking-mcp-export"
    format_version: Count = FORMAT_VERSION
    viking_mcp_version: str
    exported_at: str
    encoding: str = Field(description="The tokenizer the token counts were made with.")
    counts: dict[str, Count]


class MessageLine(Message):
    """A line of messages.jsonl: the message, and its token count as stored (counted again
    on import when absent)."""

    tokens: Count | None = None


class UsageLine(BaseModel):
    kind: Literal["context", "skill"]
    uri: str
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    archive_id: str | None = Field(default=None, description="The archive that took this usage in, once committed.")


class RelationsFile(BaseModel):
    """.relations.json: the tree's `contexts` and `skills`, and the usage records behind them."""

    contexts: list[str] = Field(default_factory=list)
    skills: list[dict[str, Any]] = Field(default_factory=list)
    records: list[UsageLine] = Field(default_factory=list)


class ToolFile(BaseModel):
    tool_id: str
    tool_name: str
    skill_uri: str | None = None
    tool_input: dict[str, Any] = Field(default_factory=dict)
    tool_output: str = ""
    tool_status: str
    message_id: str
    created_at: str
    updated_at: str


class Rendering(BaseModel):
    tokens: Count | None = None
    text: str


class ArchiveMeta(BaseModel):
    """An archive's .meta.json. Its abstract and (longest) overview are the .md files beside it."""

    archive_id: str
    uri: str = ""
    status: ArchiveStatus
    created_at: str
    done_at: str | None = None
    message_count: Count
    error: str | None = None
    task_id: str | None = None
    abstract_tokens: Count | None = None
    overview_tokens: Count | None = Field(
        default=None, description="Tokens of .overview.md; null with an empty .overview.md means no overview at all."
    )
    longer_overviews: list[Rendering] = Field(
        default_factory=list,
        description="Renderings longer than .overview.md, longest first: an overview the agent or an LLM wrote, "
        "after the earlier archives' sections.",
    )
    shorter_overviews: list[Rendering] = Field(
        default_factory=list, description="The overview's shorter renderings, longest first (get_context fits one)."
    )
    supplied: dict[str, Any] = Field(
        default_factory=dict, description="The abstract, overview and memories the agent passed to commit."
    )


class TaskLine(BaseModel):
    task_id: str
    task_type: TaskType
    status: TaskStatus
    resource_id: str
    archive_id: str | None = None
    created_at: str
    updated_at: str
    result: dict[str, Any] | None = None
    error: str | None = None
    account_id: str | None = None
    user_id: str | None = None
    attempts: Count = 0
    owner: str | None = Field(default=None, description="Who was running it; an import lets anyone take it over.")


class MemoryFile(BaseModel):
    """A memory file's front matter."""

    uri: str
    account_id: str = DEFAULT_ACCOUNT
    scope: Scope
    owner_id: str
    category: MemoryCategory
    key: str
    name: str | None = None
    abstract: str
    overview: str = ""
    content: str = ""
    stats: dict[str, Count] = Field(default_factory=dict)
    version: Count = 1
    created_at: str
    updated_at: str
    source: dict[str, Any] = Field(default_factory=dict)
    active_count: Count = Field(default=0, description="For reading only: context_usage.jsonl holds the count.")


class ContextUsageLine(BaseModel):
    account_id: str = DEFAULT_ACCOUNT
    uri: str
    active_count: Count
    last_used_at: str | None = None
