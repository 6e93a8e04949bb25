"""The embedded Python API, in the shape of OpenViking's SDK:

    client = Client(path="./memory")
    session = client.session()                 # or client.session("my-id")
    session.add_message("user", [TextPart(text="I moved to Lisbon in May.")])
    commit = session.commit()
    client.wait_for_task(commit.task_id)
    context = client.get_session_context(session.session_id, token_budget=4000)
    client.close()

It runs the engine in-process, with a background thread for commit Phase 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viking_mcp import models
from viking_mcp.config import Settings, settings_from_env
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.engine.engine import ProgressCallback
from viking_mcp.models import OPENVIKING_TOKEN_BUDGET


@dataclass
class Session:
    """A handle on one session: `client.session(...)` returns it."""

    client: Client
    session_id: str

    def add_message(
        self,
        role: str,
        parts: list[Any] | None = None,
        *,
        content: str | None = None,
        created_at: str | None = None,
        message_id: str | None = None,
    ) -> models.MessageAdded:
        return self.client.add_message(
            self.session_id, role, parts=parts, content=content, created_at=created_at, message_id=message_id
        )

    def used(self, contexts: list[str] | None = None, skill: dict[str, Any] | None = None) -> models.UsageRecorded:
        return self.client.engine.record_usage(self.session_id, contexts, skill)

    def commit(
        self,
        *,
        keep_recent_count: int = 0,
        wait: bool = False,
        abstract: str | None = None,
        overview: str | None = None,
    ) -> models.CommitResult:
        return self.client.commit_session(
            self.session_id, abstract=abstract, overview=overview, keep_recent_count=keep_recent_count, wait=wait
        )

    def get_context(self, token_budget: int = OPENVIKING_TOKEN_BUDGET) -> models.SessionContext:
        return self.client.get_session_context(self.session_id, token_budget=token_budget)

    def get_archive(self, archive_id: str) -> models.ArchiveDetail:
        return self.client.get_session_archive(self.session_id, archive_id)

    def info(self) -> models.SessionInfo:
        return self.client.get_session(self.session_id)

    def delete(self) -> models.SessionDeleted:
        return self.client.delete_session(self.session_id)


class Client:
    """viking-mcp embedded: the engine on a local data directory, no server needed."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, settings: Settings | None = None, background: bool = True
    ) -> None:
        settings = settings or settings_from_env()
        if path is not None:
            settings = settings.with_home(Path(path))
        self.engine = Engine(settings)
        self._worker = Phase2Worker(self.engine, threads=settings.phase2_workers if background else 0)
        self._worker.start()

    def close(self) -> None:
        self._worker.stop()
        self.engine.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # sessions
    def session(self, session_id: str | None = None, *, must_exist: bool = False) -> Session:
        """A handle on `session_id` (created if needed, unless must_exist), or on a new session."""
        if session_id is None:
            return Session(self, self.engine.create_session().session_id)
        self.engine.get_session(session_id, auto_create=not must_exist)
        return Session(self, session_id)

    def create_session(
        self, session_id: str | None = None, metadata: dict[str, Any] | None = None, user_id: str | None = None
    ) -> models.SessionCreated:
        return self.engine.create_session(session_id, metadata, user_id)

    def list_sessions(self, limit: int = 50, cursor: str | None = None) -> models.SessionPage:
        return self.engine.list_sessions(limit, cursor)

    def get_session(self, session_id: str, auto_create: bool = False) -> models.SessionInfo:
        return self.engine.get_session(session_id, auto_create)

    def update_session(self, session_id: str, metadata: dict[str, Any]) -> models.MetadataUpdated:
        return self.engine.update_session(session_id, metadata)

    def delete_session(self, session_id: str) -> models.SessionDeleted:
        return self.engine.delete_session(session_id)

    # messages, commit, context
    def add_message(
        self,
        session_id: str,
        role: str,
        parts: list[Any] | None = None,
        *,
        content: str | None = None,
        created_at: str | None = None,
        message_id: str | None = None,
    ) -> models.MessageAdded:
        return self.engine.add_message(session_id, role, content, parts, created_at, message_id)

    def commit_session(
        self,
        session_id: str,
        *,
        abstract: str | None = None,
        overview: str | None = None,
        keep_recent_count: int = 0,
        wait: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> models.CommitResult:
        return self.engine.commit(session_id, abstract, overview, keep_recent_count, wait, on_progress)

    def get_session_context(
        self, session_id: str, token_budget: int = OPENVIKING_TOKEN_BUDGET, query: str | None = None
    ) -> models.SessionContext:
        return self.engine.get_context(session_id, token_budget, query)

    def get_session_archive(
        self, session_id: str, archive_id: str, offset: int = 0, limit: int | None = None
    ) -> models.ArchiveDetail:
        return self.engine.expand_archive(session_id, archive_id, offset, limit)

    def retry_archive(self, session_id: str, archive_id: str, action: str = "retry") -> models.RetryResult:
        return self.engine.retry_archive(session_id, archive_id, action)  # type: ignore[arg-type]

    # recall and long-term memories
    def search(
        self,
        query: str,
        session_id: str | None = None,
        kinds: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 10,
        token_budget: int | None = None,
    ) -> models.SearchResult:
        return self.engine.search(query, session_id, kinds, since, until, limit, token_budget)

    def search_memories(self, query: str, category: str | None = None, limit: int = 10) -> models.MemorySearchResult:
        return self.engine.search_memories(query, category, limit)

    # tasks
    def get_task(self, task_id: str) -> models.TaskRecord:
        return self.engine.get_task(task_id)

    def list_tasks(
        self, task_type: str | None = None, status: str | None = None, resource_id: str | None = None, limit: int = 50
    ) -> models.TaskList:
        return self.engine.list_tasks(task_type, status, resource_id, limit)

    def wait_for_task(self, task_id: str, timeout: float = 60.0) -> models.TaskRecord:
        return self.engine.wait_for_task(task_id, timeout)
