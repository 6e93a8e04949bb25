"""Stored rows as the store's records: the same mapping for every backend.

Both stores keep the same columns (JSON as text), and both rows answer `row["column"]`
(sqlite3.Row, psycopg's dict rows), so one function per record serves both.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from viking_mcp.models import Message, Owner, StoredMemory
from viking_mcp.store.base import (
    ArchiveRow,
    OverviewRendering,
    SessionRow,
    StoredMessage,
    TaskRow,
    ToolRecord,
    UsageEntry,
)


class Row(Protocol):
    """A fetched row, read by column name."""

    def __getitem__(self, key: str) -> Any: ...


def memory_row(row: Row) -> StoredMemory:
    return StoredMemory(
        uri=row["uri"],
        scope=row["scope"],
        owner_id=row["owner_id"],
        category=row["category"],
        key=row["key"],
        name=row["name"],
        abstract=row["abstract"],
        overview=row["overview"],
        content=row["content"],
        stats=json.loads(row["stats"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        active_count=row["active_count"],
    )


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def session_row(row: Row) -> SessionRow:
    return SessionRow(
        session_id=row["session_id"],
        owner=Owner(row["account_id"], row["user_id"], row["agent_id"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        metadata=json.loads(row["metadata"]),
        total_message_count=row["next_seq"] - 1,
        live_message_count=row["next_seq"] - 1 - row["archived_through"],
        pending_tokens=row["total_tokens"] - row["archived_tokens"],
        commit_count=row["commit_count"],
        last_commit_at=row["last_commit_at"],
        llm_prompt_tokens=row["llm_prompt_tokens"],
        llm_completion_tokens=row["llm_completion_tokens"],
        memories_extracted=json.loads(row["memories_extracted"]),
        contexts_used=row["contexts_used"],
        skills_used=row["skills_used"],
    )


def message_row(row: Row) -> StoredMessage:
    message = Message.model_validate(
        {
            "id": row["message_id"],
            "role": row["role"],
            "parts": json.loads(row["parts"]),
            "created_at": row["created_at"],
        }
    )
    return StoredMessage(seq=row["seq"], message=message, tokens=row["tokens"])


def archive_row(row: Row) -> ArchiveRow:
    renderings = [OverviewRendering(tokens=t, text=s) for t, s in json.loads(row["overview_renderings"])]
    return ArchiveRow(
        session_id=row["session_id"],
        number=row["archive_no"],
        first_seq=row["first_seq"],
        last_seq=row["last_seq"],
        message_count=row["message_count"],
        tokens=row["tokens"],
        status=row["status"],
        created_at=row["created_at"],
        done_at=row["done_at"],
        abstract=row["abstract"],
        abstract_tokens=row["abstract_tokens"],
        overview=row["overview"],
        overview_renderings=renderings,
        memory_diff=json.loads(row["memory_diff"]) if row["memory_diff"] else None,
        supplied=json.loads(row["supplied"]),
        error=row["error"],
        task_id=row["task_id"],
    )


def task_row(row: Row) -> TaskRow:
    return TaskRow(
        task_id=row["task_id"],
        task_type=row["task_type"],
        status=row["status"],
        session_id=row["session_id"],
        archive_number=row["archive_no"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        owner=row["owner"],
        attempts=row["attempts"],
        account_id=row["account_id"],
        user_id=row["user_id"],
    )


def tool_record(row: Row) -> ToolRecord:
    return ToolRecord(
        tool_id=row["tool_id"],
        tool_name=row["tool_name"],
        skill_uri=row["skill_uri"],
        tool_input=json.loads(row["tool_input"]),
        tool_output=row["tool_output"],
        tool_status=row["tool_status"],
        message_id=row["message_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def usage_entry(row: Row) -> UsageEntry:
    return UsageEntry(
        kind=row["kind"],
        uri=row["uri"],
        payload=json.loads(row["payload"]),
        created_at=row["created_at"],
        archive_number=row["archive_no"],
    )
