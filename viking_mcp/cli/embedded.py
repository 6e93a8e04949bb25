"""The CLI's embedded backend: the engine on the data directory, in this process.

No background worker: `commit --wait` runs Phase 2 in this process while it waits (the
engine does that when no worker is running). Without `--wait`, the task stays queued for
a server on the same data directory, or the next `commit --wait`.
"""

from __future__ import annotations

from typing import Any

from viking_mcp.config import Settings
from viking_mcp.engine.engine import Engine, ProgressCallback
from viking_mcp.engine.transfer import TransferResult, export_tree, import_tree
from viking_mcp.models import (
    ArchiveDetail,
    CommitResult,
    MemorySearchResult,
    MessageAdded,
    SessionContext,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionPage,
    TaskList,
    TaskRecord,
)

# OpenViking's (and our HTTP API's) default: enough for everything a session holds.
DEFAULT_TOKEN_BUDGET = 128_000


class EmbeddedBackend:
    def __init__(self, settings: Settings) -> None:
        self.engine = Engine(settings)

    def close(self) -> None:
        self.engine.close()

    def create_session(self, session_id: str | None, metadata: dict[str, Any] | None) -> SessionCreated:
        return self.engine.create_session(session_id, metadata)

    def list_sessions(self, limit: int, cursor: str | None) -> SessionPage:
        return self.engine.list_sessions(limit, cursor)

    def get_session(self, session_id: str) -> SessionInfo:
        return self.engine.get_session(session_id)

    def delete_session(self, session_id: str) -> SessionDeleted:
        return self.engine.delete_session(session_id)

    def add_message(
        self,
        session_id: str,
        role: str,
        content: str | None,
        parts: list[Any] | None,
        created_at: str | None,
        message_id: str | None,
    ) -> MessageAdded:
        return self.engine.add_message(session_id, role, content, parts, created_at, message_id)

    def commit(
        self,
        session_id: str,
        keep_recent_count: int,
        wait: bool,
        abstract: str | None,
        overview: str | None,
        on_progress: ProgressCallback | None,
    ) -> CommitResult:
        return self.engine.commit(session_id, abstract, overview, keep_recent_count, wait, on_progress)

    def get_context(self, session_id: str, token_budget: int | None) -> SessionContext:
        budget = DEFAULT_TOKEN_BUDGET if token_budget is None else token_budget
        return self.engine.get_context(session_id, budget)

    def get_archive(self, session_id: str, archive_id: str) -> ArchiveDetail:
        return self.engine.expand_archive(session_id, archive_id)

    def get_task(self, task_id: str) -> TaskRecord:
        return self.engine.get_task(task_id)

    def list_tasks(self, task_type: str | None, status: str | None, resource_id: str | None, limit: int) -> TaskList:
        return self.engine.list_tasks(task_type, status, resource_id, limit)

    def search_memories(self, query: str, category: str | None, limit: int) -> MemorySearchResult:
        return self.engine.search_memories(query, category, limit)

    def export_tree(self, directory: str) -> TransferResult:
        return export_tree(self.engine, directory)

    def import_tree(self, directory: str, replace: bool) -> TransferResult:
        return import_tree(self.engine, directory, replace)
