"""What the CLI asks of whatever answers it: the engine on a data directory (embedded) or
a running server over its HTTP API (`--url`).

Each method is one engine method or one HTTP endpoint, and returns the engine's own
result model, so the CLI renders the same thing whichever side answered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

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

if TYPE_CHECKING:
    from viking_mcp.engine.engine import ProgressCallback
    from viking_mcp.engine.transfer import TransferResult


class Backend(Protocol):
    def close(self) -> None: ...

    # sessions
    def create_session(self, session_id: str | None, metadata: dict[str, Any] | None) -> SessionCreated: ...
    def list_sessions(self, limit: int, cursor: str | None) -> SessionPage: ...
    def get_session(self, session_id: str) -> SessionInfo: ...
    def delete_session(self, session_id: str) -> SessionDeleted: ...

    # messages, commit, context
    def add_message(
        self,
        session_id: str,
        role: str,
        content: str | None,
        parts: list[Any] | None,
        created_at: str | None,
        message_id: str | None,
    ) -> MessageAdded: ...
    def commit(
        self,
        session_id: str,
        keep_recent_count: int,
        wait: bool,
        abstract: str | None,
        overview: str | None,
        on_progress: ProgressCallback | None,
    ) -> CommitResult: ...
    def get_context(self, session_id: str, token_budget: int | None) -> SessionContext: ...
    def get_archive(self, session_id: str, archive_id: str) -> ArchiveDetail: ...

    # tasks, memories
    def get_task(self, task_id: str) -> TaskRecord: ...
    def list_tasks(
        self, task_type: str | None, status: str | None, resource_id: str | None, limit: int
    ) -> TaskList: ...
    def search_memories(self, query: str, category: str | None, limit: int) -> MemorySearchResult: ...

    # the data directory as files
    def export_tree(self, directory: str) -> TransferResult: ...
    def import_tree(self, directory: str, replace: bool) -> TransferResult: ...
