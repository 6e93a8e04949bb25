"""What the CLI prints for people: short, aligned, and saying what to do next.

`--json` prints the result model instead; these functions are only for eyes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from viking_mcp import models
from viking_mcp.engine.export_import import TransferResult

# --- pieces -------------------------------------------------------------------------------------


def when(timestamp: str | None, seconds: bool = True) -> str:
    """2026-11-22T10:00:05.123456Z -> 2026-11-22 10:00:05 UTC (or without seconds)."""
    if not timestamp:
        return "-"
    return timestamp[: 19 if seconds else 16].replace("T", " ") + " UTC"


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def fields(rows: Sequence[tuple[str, str]], indent: str = "  ") -> str:
    """label  value, with the values aligned."""
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{indent}{label.ljust(width)}  {value}" for label, value in rows)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [headers, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def indented(text: str, indent: str = "  ") -> str:
    return "\n".join(indent + line if line else line for line in text.splitlines())


def message_line(message: models.Message) -> str:
    text = models.message_text(message).replace("\n", "\n    ")  # later lines indented under the first
    return f"[{when(message.created_at, seconds=False)}] {message.role}: {text}"


def memory_counts(counts: dict[str, int]) -> str:
    """{"total": 3, "events": 2, "preferences": 1} -> 3 (events 2, preferences 1)"""
    by_category = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "total" and v)
    return f"{counts.get('total', 0)}" + (f" ({by_category})" if by_category else "")


def user(ref: models.UserRef) -> str:
    return f"{ref.user_id} (account {ref.account_id}, agent {ref.agent_id})"


# --- sessions -----------------------------------------------------------------------------------


def session_created(result: models.SessionCreated) -> str:
    rows = [("uri", result.uri), ("created", when(result.created_at)), ("user", user(result.user))]
    if result.metadata:
        rows.append(("metadata", compact(result.metadata)))
    return f"Created session {result.session_id}.\n" + fields(rows)


def session_page(result: models.SessionPage) -> str:
    if not result.sessions:
        return "No sessions. Start one with: viking-mcp session new"
    rows = [
        [s.session_id, str(s.message_count), when(s.updated_at, seconds=False), short(compact(s.metadata), 40)]
        for s in result.sessions
    ]
    text = table(["SESSION", "LIVE MESSAGES", "UPDATED", "METADATA"], rows)
    if result.next_cursor:
        text += f"\nMore: viking-mcp session list --cursor {result.next_cursor}"
    return text


def session_info(result: models.SessionInfo) -> str:
    usage = result.llm_token_usage
    commits = str(result.commit_count)
    if result.last_commit_at:
        commits += f", last {when(result.last_commit_at)}"
    rows = [
        ("uri", result.uri),
        ("created", when(result.created_at)),
        ("updated", when(result.updated_at)),
        ("messages", f"{result.message_count} live, {result.total_message_count} in all"),
        ("pending tokens", str(result.pending_tokens)),
        ("commits", commits),
        ("memories", memory_counts(result.memories_extracted)),
        ("LLM tokens", f"{usage.total} (prompt {usage.prompt}, completion {usage.completion})"),
        ("usage", f"{models.plural(result.contexts_used, 'context')}, {models.plural(result.skills_used, 'skill')}"),
        ("user", user(result.user)),
        ("metadata", compact(result.metadata)),
    ]
    return f"Session {result.session_id}\n" + fields(rows)


def session_deleted(result: models.SessionDeleted) -> str:
    return f"Deleted session {result.session_id} (its messages, archives and tool records; extracted memories stay)."


# --- messages, commit, context ------------------------------------------------------------------


def message_added(result: models.MessageAdded) -> str:
    if result.duplicate:
        return f"Already stored: {result.message_id} in session {result.session_id}; nothing added."
    created = " (new session)" if result.session_created else ""
    return (
        f"Added {result.message_id} to session {result.session_id}{created}: "
        f"{models.plural(result.message_count, 'live message')}."
    )


def commit_result(result: models.CommitResult) -> str:
    if result.status == "skipped":
        return f"Nothing to commit in session {result.session_id}: it has no live messages."
    count = models.plural(result.archived_messages, "message")
    text = f"Committed {count} of session {result.session_id} to {result.archive_id}."
    task = result.task_id or "-"
    if result.task_status == "completed":
        return text + f"\n  Summarised (task {task})."
    if result.task_status == "failed":
        return text + f"\n  Phase 2 failed: see `viking-mcp task get {task}`."
    if result.task_status is not None:
        return text + f"\n  Phase 2 is still {result.task_status}: see `viking-mcp task get {task}`."
    return (
        text + f"\n  Summaries and memories follow in the background (task {task}): a server on this data "
        "directory does it, or commit with --wait."
    )


def context(result: models.SessionContext) -> str:
    stats = result.stats
    head = (
        f"Context: {result.estimatedTokens} tokens "
        f"({stats.activeTokens} in messages, {stats.archiveTokens} in archive summaries)\n"
        f"Archives: {stats.totalArchives} in all, {stats.includedArchives} abstracts included, "
        f"{stats.droppedArchives} left out, {stats.failedArchives} failed"
    )
    blocks = [head]
    if result.latest_archive_overview:
        blocks.append(
            f"Latest archive overview ({result.latest_archive_id}):\n{indented(result.latest_archive_overview)}"
        )
    if result.pre_archive_abstracts:
        rows = [(a.archive_id, a.abstract) for a in result.pre_archive_abstracts]
        blocks.append("Earlier archives, newest first:\n" + fields(rows))
    if result.relevant_passages:
        lines = "\n".join(f"{indented(p.text)}" for p in result.relevant_passages)
        blocks.append(f"Archived messages relevant to the query ({len(result.relevant_passages)}):\n{lines}")
    if result.messages:
        lines = "\n".join(indented(message_line(m)) for m in result.messages)
        blocks.append(f"Messages ({len(result.messages)}):\n{lines}")
    else:
        blocks.append("No messages since the latest summary.")
    return "\n\n".join(blocks)


def archive(result: models.ArchiveDetail) -> str:
    blocks = [
        f"{result.archive_id} of session {result.session_id}: {result.status}, "
        f"{models.plural(result.message_count, 'message')}"
    ]
    if result.error:
        blocks.append(f"Error: {result.error}")
    if result.abstract:
        blocks.append(f"Abstract:\n{indented(result.abstract)}")
    if result.overview:
        blocks.append(f"Overview:\n{indented(result.overview)}")
    if result.messages:
        blocks.append("Messages:\n" + "\n".join(indented(message_line(m)) for m in result.messages))
    return "\n\n".join(blocks)


# --- tasks, memories --------------------------------------------------------------------------------


def task(result: models.TaskRecord) -> str:
    rows = [
        ("type", result.task_type),
        ("status", result.status),
        ("session", result.resource_id),
        ("created", when(result.created_at)),
        ("updated", when(result.updated_at)),
    ]
    if result.result is not None:
        if result.result.archive_id:
            rows.append(("archive", result.result.archive_id))
        rows.append(("memories", memory_counts(result.result.memories_extracted)))
    if result.error:
        rows.append(("error", result.error))
    return f"Task {result.task_id}\n" + fields(rows)


def task_list(result: models.TaskList) -> str:
    if not result.tasks:
        return "No tasks."
    rows = [[t.task_id, t.task_type, t.status, t.resource_id, when(t.created_at, seconds=False)] for t in result.tasks]
    return table(["TASK", "TYPE", "STATUS", "SESSION", "CREATED"], rows)


def search(result: models.MemorySearchResult | models.SearchResult) -> str:
    if isinstance(result, models.SearchResult):
        return found(result)
    if not result.memories:
        return f"No memories match {result.query!r}."
    rows = [[f"{m.score:.2f}", m.category, short(m.abstract, 80)] for m in result.memories]
    lines = table(["SCORE", "CATEGORY", "MEMORY"], rows).split("\n")
    indent = len(lines[0]) - len("MEMORY")
    out = [lines[0]]
    for line, memory in zip(lines[1:], result.memories, strict=True):
        out += [line, " " * indent + memory.uri]
    return "\n".join(out)


def found(result: models.SearchResult) -> str:
    if not result.results:
        return f"Nothing matches {result.query!r}."
    count = models.plural(len(result.results), "result")
    blocks = [f"{count} for {result.query!r}, best first ({result.estimatedTokens} tokens):"]
    for hit in result.results:
        where = hit.session_id if hit.session_id is not None else "memory"
        blocks.append(f"{hit.score:.2f}  {where}  {hit.uri}\n{indented(hit.text)}")
    return "\n\n".join(blocks)


# --- export, import -------------------------------------------------------------------------------


def _inventory(result: TransferResult) -> str:
    return (
        f"{models.plural(result.sessions, 'session')} ({models.plural(result.messages, 'message')}, "
        f"{models.plural(result.archives, 'archive')}, {models.plural(result.tool_records, 'tool record')}), "
        f"{models.plural(result.tasks, 'task')} and {models.plural(result.memories, 'memory', 'memories')}"
    )


def exported(result: TransferResult) -> str:
    return f"Exported {_inventory(result)} to {result.directory}."


def imported(result: TransferResult) -> str:
    return f"Imported {_inventory(result)} from {result.directory}."
