"""The embedded store: one SQLite database (standard library `sqlite3`, WAL mode).

Why SQLite and not files: a transaction makes commit Phase 1 atomic, lets two server
processes share one directory (Claude Desktop and an IDE at once) without losing or
duplicating a message, and gives Phase 2 a durable queue, with no hand-rolled file
locking or torn-write repair. `viking-mcp export` writes the same tree as plain files.

Concurrency: every write is `BEGIN IMMEDIATE`, so a writer takes the lock up front and
waits for another process's writer through SQLite's busy timeout, never by polling.
Readers never block writers (WAL). Each thread has its own connection.

Durability: with `synchronous=NORMAL` in WAL mode a committed transaction survives the
process being killed; `synchronous=FULL` (durability "full") also survives power loss.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from viking_mcp.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    NotFound,
    Unavailable,
    VikingError,
)
from viking_mcp.models import MEMORY_CATEGORIES, Message, archive_id
from viking_mcp.store.base import (
    AppendOutcome,
    ArchiveRow,
    ContextSnapshot,
    OverviewRendering,
    Owner,
    Phase1Outcome,
    Phase2Output,
    SessionRow,
    StoredMessage,
    TaskRow,
    ToolRecord,
    UsageRecord,
)
from viking_mcp.store.migrations import MIGRATIONS, SCHEMA_VERSION

_SESSION_COLUMNS = (
    "session_id, account_id, user_id, agent_id, created_at, updated_at, metadata, next_seq, "
    "archived_through, total_tokens, archived_tokens, commit_count, last_commit_at, "
    "llm_prompt_tokens, llm_completion_tokens, memories_extracted, contexts_used, skills_used"
)
_ARCHIVE_COLUMNS = (
    "session_id, archive_no, first_seq, last_seq, message_count, tokens, status, created_at, done_at, "
    "abstract, abstract_tokens, overview, overview_renderings, memory_diff, supplied, error, task_id"
)
# The same, without the renderings: get_context reads them for one archive only.
_ARCHIVE_LIGHT_COLUMNS = _ARCHIVE_COLUMNS.replace("overview, overview_renderings", "'' AS overview, '[]'")
_TASK_COLUMNS = "task_id, task_type, status, session_id, archive_no, created_at, updated_at, result, error, owner"
_MESSAGE_COLUMNS = "seq, message_id, role, parts, created_at, tokens"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _session_row(row: sqlite3.Row) -> SessionRow:
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


def _message_row(row: sqlite3.Row) -> StoredMessage:
    message = Message.model_validate(
        {
            "id": row["message_id"],
            "role": row["role"],
            "parts": json.loads(row["parts"]),
            "created_at": row["created_at"],
        }
    )
    return StoredMessage(seq=row["seq"], message=message, tokens=row["tokens"])


def _archive_row(row: sqlite3.Row) -> ArchiveRow:
    renderings = [OverviewRendering(tokens=t, text=s) for t, s in json.loads(row[12])]
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
        overview=row[11],
        overview_renderings=renderings,
        memory_diff=json.loads(row["memory_diff"]) if row["memory_diff"] else None,
        supplied=json.loads(row["supplied"]),
        error=row["error"],
        task_id=row["task_id"],
    )


def _task_row(row: sqlite3.Row) -> TaskRow:
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
    )


def _translate(exc: sqlite3.Error) -> VikingError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return Unavailable(
            "the data directory's database is locked by another process past the busy timeout; "
            "retry, or raise VIKING_MCP_BUSY_TIMEOUT_MS"
        )
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in text:
        return Unavailable("the data directory is read-only; make VIKING_MCP_HOME writable")
    if isinstance(exc, sqlite3.OperationalError) and ("full" in text or "disk I/O" in text):
        return Unavailable(f"the data directory cannot be written ({text}); free disk space and retry")
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return Internal(
            f"the database file is damaged ({text}); move it aside to start afresh, or restore it from a backup"
        )
    return Internal(f"storage error: {text}")


class SQLiteStore:
    """The `Store` interface over one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5_000, durability: str = "normal") -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # --- connections and transactions ------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise Unavailable("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_ms / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            self._ensure_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        self._local.conn = conn
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _ensure_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the database to WAL once; later connections find it already set.

        Switching needs an exclusive lock, and SQLite answers SQLITE_BUSY to it at once,
        without its busy handler, while another process holds the database (two servers
        opening a fresh directory together). Only this one-time switch is retried here,
        within the busy timeout; every other wait is SQLite's own.
        """
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() == "wal":
                    return
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the lock is taken at BEGIN so it can never deadlock on upgrade."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc) from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every SELECT inside sees one snapshot."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        finally:
            with suppress(sqlite3.Error):
                conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"{self.path} has schema version {version}, newer than this viking-mcp understands "
                    f"({SCHEMA_VERSION}); upgrade viking-mcp"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                with suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()

    # --- sessions -------------------------------------------------------------------------

    def _insert_session(
        self, conn: sqlite3.Connection, session_id: str, owner: Owner, metadata: dict[str, Any], now: str
    ) -> None:
        conn.execute(
            "INSERT INTO sessions (session_id, account_id, user_id, agent_id, created_at, updated_at, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, owner.account_id, owner.user_id, owner.agent_id, now, now, _dumps(metadata)),
        )

    def _session(self, conn: sqlite3.Connection, session_id: str) -> SessionRow | None:
        row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return _session_row(row) if row else None

    def create_session(self, session_id: str, owner: Owner, metadata: dict[str, Any], now: str) -> SessionRow:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone():
                raise AlreadyExists(f"session {session_id} already exists; use another session_id or omit it")
            self._insert_session(conn, session_id, owner, metadata, now)
            row = self._session(conn, session_id)
        assert row is not None
        return row

    def get_session(self, session_id: str) -> SessionRow | None:
        with self._read() as conn:
            return self._session(conn, session_id)

    def list_sessions(self, limit: int, after: tuple[str, str] | None) -> list[SessionRow]:
        with self._read() as conn:
            if after is None:
                rows = conn.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY created_at DESC, session_id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE (created_at, session_id) < (?, ?) "
                    "ORDER BY created_at DESC, session_id DESC LIMIT ?",
                    (after[0], after[1], limit),
                ).fetchall()
        return [_session_row(r) for r in rows]

    def merge_metadata(self, session_id: str, patch: dict[str, Any], now: str) -> dict[str, Any]:
        with self._write() as conn:
            row = conn.execute("SELECT metadata FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            if row is None:
                raise NotFound(f"session {session_id} not found")
            merged: dict[str, Any] = json.loads(row["metadata"])
            for key, value in patch.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            conn.execute(
                "UPDATE sessions SET metadata = ?, updated_at = ? WHERE session_id = ?",
                (_dumps(merged), now, session_id),
            )
        return merged

    def delete_session(self, session_id: str, now: str) -> bool:
        with self._write() as conn:
            found = conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,)).rowcount > 0
            if not found:
                return False
            for table in ("messages", "archives", "tool_calls", "usage"):
                conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            conn.execute(
                "UPDATE tasks SET status = 'failed', error = 'session deleted before the task finished', "
                "updated_at = ?, owner = NULL WHERE session_id = ? AND status IN ('pending', 'running')",
                (now, session_id),
            )
        return True

    # --- messages ---------------------------------------------------------------------------

    def append_message(
        self, session_id: str, message: Message, tokens: int, now: str, create_as: Owner | None
    ) -> AppendOutcome:
        parts_json = _dumps([p.model_dump(mode="json") for p in message.parts])
        with self._write() as conn:
            row = conn.execute(
                "SELECT next_seq, archived_through, total_tokens FROM sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            created = False
            if row is None:
                if create_as is None:
                    raise NotFound(f"session {session_id} not found")
                self._insert_session(conn, session_id, create_as, {}, now)
                next_seq, archived_through, total_tokens = 1, 0, 0
                created = True
            else:
                next_seq, archived_through, total_tokens = row
            duplicate = conn.execute(
                "SELECT 1 FROM messages WHERE session_id = ? AND message_id = ?", (session_id, message.id)
            ).fetchone()
            if duplicate:
                return AppendOutcome(message.id, next_seq - 1 - archived_through, created, True)
            conn.execute(
                "INSERT INTO messages (session_id, seq, message_id, role, parts, created_at, tokens, cum_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    next_seq,
                    message.id,
                    message.role,
                    parts_json,
                    message.created_at,
                    tokens,
                    total_tokens + tokens,
                ),
            )
            conn.execute(
                "UPDATE sessions SET next_seq = ?, total_tokens = ?, updated_at = ? WHERE session_id = ?",
                (next_seq + 1, total_tokens + tokens, now, session_id),
            )
            for part in message.parts:
                if part.type == "tool":
                    conn.execute(
                        "INSERT INTO tool_calls (session_id, tool_id, tool_name, skill_uri, tool_input, "
                        "tool_output, tool_status, message_id, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (session_id, tool_id) DO UPDATE SET tool_name = excluded.tool_name, "
                        "skill_uri = excluded.skill_uri, tool_input = excluded.tool_input, "
                        "tool_output = excluded.tool_output, tool_status = excluded.tool_status, "
                        "message_id = excluded.message_id, updated_at = excluded.updated_at",
                        (
                            session_id,
                            part.tool_id,
                            part.tool_name,
                            part.skill_uri,
                            _dumps(part.tool_input),
                            part.tool_output,
                            part.tool_status,
                            message.id,
                            now,
                            now,
                        ),
                    )
        return AppendOutcome(message.id, next_seq - archived_through, created, False)

    def read_messages(
        self, session_id: str, after_seq: int, through_seq: int | None, offset: int, limit: int | None
    ) -> list[StoredMessage]:
        upper = through_seq if through_seq is not None else 2**62
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ? OFFSET ?",
                (session_id, after_seq, upper, -1 if limit is None else limit, offset),
            ).fetchall()
        return [_message_row(r) for r in rows]

    def live_messages(self, session_id: str) -> list[StoredMessage]:
        with self._read() as conn:
            row = conn.execute("SELECT archived_through FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            if row is None:
                raise NotFound(f"session {session_id} not found")
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq",
                (session_id, row[0]),
            ).fetchall()
        return [_message_row(r) for r in rows]

    # --- usage and tool records ----------------------------------------------------------------

    def record_usage(
        self, session_id: str, contexts: list[str], skill: dict[str, Any] | None, now: str
    ) -> tuple[int, int]:
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone():
                raise NotFound(f"session {session_id} not found")
            for uri in contexts:
                conn.execute(
                    "INSERT INTO usage (session_id, kind, uri, created_at) VALUES (?, 'context', ?, ?)",
                    (session_id, uri, now),
                )
            if skill is not None:
                conn.execute(
                    "INSERT INTO usage (session_id, kind, uri, payload, created_at) VALUES (?, 'skill', ?, ?, ?)",
                    (session_id, skill["uri"], _dumps(skill), now),
                )
            conn.execute(
                "UPDATE sessions SET contexts_used = contexts_used + ?, skills_used = skills_used + ?, "
                "updated_at = ? WHERE session_id = ?",
                (len(contexts), 1 if skill else 0, now, session_id),
            )
            row = conn.execute(
                "SELECT contexts_used, skills_used FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return int(row[0]), int(row[1])

    def usage(self, session_id: str) -> UsageRecord:
        record = UsageRecord()
        with self._read() as conn:
            for row in conn.execute(
                "SELECT kind, uri, payload FROM usage WHERE session_id = ? ORDER BY id", (session_id,)
            ):
                if row["kind"] == "context":
                    record.contexts.append(row["uri"])
                else:
                    record.skills.append(json.loads(row["payload"]))
        return record

    def tool_records(self, session_id: str) -> list[ToolRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT tool_id, tool_name, skill_uri, tool_input, tool_output, tool_status, message_id, "
                "created_at, updated_at FROM tool_calls WHERE session_id = ? ORDER BY created_at, tool_id",
                (session_id,),
            ).fetchall()
        return [
            ToolRecord(
                tool_id=r["tool_id"],
                tool_name=r["tool_name"],
                skill_uri=r["skill_uri"],
                tool_input=json.loads(r["tool_input"]),
                tool_output=r["tool_output"],
                tool_status=r["tool_status"],
                message_id=r["message_id"],
                created_at=r["created_at"],
                updated_at=r["updated_at"],
            )
            for r in rows
        ]

    # --- commit and archives ----------------------------------------------------------------------

    def commit_phase1(
        self, session_id: str, keep_recent: int, supplied: dict[str, Any], task_id: str, now: str
    ) -> Phase1Outcome:
        with self._write() as conn:
            row = conn.execute(
                "SELECT next_seq, archived_through, archived_tokens, commit_count FROM sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"session {session_id} not found")
            next_seq, archived_through, archived_tokens, commit_count = row
            failed = conn.execute(
                "SELECT archive_no, error FROM archives WHERE session_id = ? AND status = 'failed' "
                "ORDER BY archive_no LIMIT 1",
                (session_id,),
            ).fetchone()
            if failed:
                name = archive_id(failed[0])
                raise FailedPrecondition(
                    f"{name} of session {session_id} failed Phase 2 ({failed[1]}); call retry_archive "
                    f"(session_id={session_id}, archive_id={name}) to retry it or skip it, then commit again"
                )
            last_seq = next_seq - 1 - keep_recent
            if last_seq <= archived_through:
                return Phase1Outcome(archive_number=None, archived=0, task_id=None)
            cum = conn.execute(
                "SELECT cum_tokens FROM messages WHERE session_id = ? AND seq = ?", (session_id, last_seq)
            ).fetchone()[0]
            number = commit_count + 1
            conn.execute(
                "INSERT INTO archives (session_id, archive_no, first_seq, last_seq, message_count, tokens, "
                "status, created_at, supplied, task_id) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (
                    session_id,
                    number,
                    archived_through + 1,
                    last_seq,
                    last_seq - archived_through,
                    cum - archived_tokens,
                    now,
                    _dumps(supplied),
                    task_id,
                ),
            )
            conn.execute(
                "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, updated_at) "
                "VALUES (?, 'session_commit', 'pending', ?, ?, ?, ?)",
                (task_id, session_id, number, now, now),
            )
            conn.execute(
                "UPDATE sessions SET archived_through = ?, archived_tokens = ?, commit_count = ?, "
                "last_commit_at = ?, updated_at = ? WHERE session_id = ?",
                (last_seq, cum, number, now, now, session_id),
            )
        return Phase1Outcome(archive_number=number, archived=last_seq - archived_through, task_id=task_id)

    def list_archives(self, session_id: str) -> list[ArchiveRow]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE session_id = ? ORDER BY archive_no",
                (session_id,),
            ).fetchall()
        return [_archive_row(r) for r in rows]

    def get_archive(self, session_id: str, number: int) -> ArchiveRow | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE session_id = ? AND archive_no = ?",
                (session_id, number),
            ).fetchone()
        return _archive_row(row) if row else None

    def context_snapshot(self, session_id: str) -> ContextSnapshot | None:
        with self._read() as conn:
            if not conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone():
                return None
            archives = [
                _archive_row(r)
                for r in conn.execute(
                    f"SELECT {_ARCHIVE_LIGHT_COLUMNS} FROM archives WHERE session_id = ? ORDER BY archive_no",
                    (session_id,),
                )
            ]
            latest = next((a for a in reversed(archives) if a.status == "completed"), None)
            after_seq = 0
            if latest is not None:
                full = conn.execute(
                    f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE session_id = ? AND archive_no = ?",
                    (session_id, latest.number),
                ).fetchone()
                archives[archives.index(latest)] = _archive_row(full)
                after_seq = latest.last_seq
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq",
                (session_id, after_seq),
            ).fetchall()
        return ContextSnapshot(archives=archives, messages=[_message_row(r) for r in rows])

    # --- tasks and Phase 2 ------------------------------------------------------------------------

    def get_task(self, task_id: str) -> TaskRow | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _task_row(row) if row else None

    def list_tasks(
        self, task_type: str | None, status: str | None, session_id: str | None, limit: int
    ) -> list[TaskRow]:
        clauses, params = [], []
        for column, value in (("task_type", task_type), ("status", status), ("session_id", session_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_task_row(r) for r in rows]

    def claim_phase2(
        self, owner: str, now: str, lease_until: float, owner_is_gone: Callable[[str | None, float], bool]
    ) -> TaskRow | None:
        """Take the oldest runnable Phase 2 task: pending, or running for an owner that is gone.

        A task is runnable only when every earlier archive of its session is done, so that
        Phase 2 of archive N+1 never finishes before archive N's.
        """
        with self._write() as conn:
            candidates = conn.execute(
                "SELECT task_id, status, session_id, archive_no, owner, lease_until FROM tasks "
                "WHERE task_type = 'session_commit' AND status IN ('pending', 'running') "
                "ORDER BY created_at, rowid LIMIT 200"
            ).fetchall()
            for task_id, status, session_id, number, current_owner, lease in candidates:
                if status == "running" and not owner_is_gone(current_owner, lease or 0.0):
                    continue
                blocked = conn.execute(
                    "SELECT 1 FROM archives WHERE session_id = ? AND archive_no < ? "
                    "AND status NOT IN ('completed', 'skipped') LIMIT 1",
                    (session_id, number),
                ).fetchone()
                if blocked:
                    continue
                conn.execute(
                    "UPDATE tasks SET status = 'running', owner = ?, lease_until = ?, updated_at = ?, "
                    "attempts = attempts + 1 WHERE task_id = ?",
                    (owner, lease_until, now, task_id),
                )
                row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
                return _task_row(row)
        return None

    def previous_overview(self, session_id: str, number: int) -> str:
        """The overview of the latest completed archive before archive `number`."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT overview FROM archives WHERE session_id = ? AND archive_no < ? AND status = 'completed' "
                "ORDER BY archive_no DESC LIMIT 1",
                (session_id, number),
            ).fetchone()
        return str(row[0]) if row else ""

    def release_phase2(self, task: TaskRow, now: str) -> None:
        """Give a claimed task back to the queue (its owner could not finish it)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE tasks SET status = 'pending', owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE task_id = ? AND status = 'running' AND owner = ?",
                (now, task.task_id, task.owner),
            )

    def finish_phase2(self, task: TaskRow, output: Phase2Output, now: str) -> bool:
        """Write the summaries, the memory diff and the `.done` marker at once. False if the
        task lost its claim meanwhile (the session was deleted, or another owner took over)."""
        renderings = _dumps([[r.tokens, r.text] for r in output.overview_renderings])
        overview = output.overview_renderings[0].text if output.overview_renderings else ""
        with self._write() as conn:
            current = conn.execute("SELECT status, owner FROM tasks WHERE task_id = ?", (task.task_id,)).fetchone()
            if current is None or current[0] != "running" or current[1] != task.owner:
                return False
            updated = conn.execute(
                "UPDATE archives SET status = 'completed', done_at = ?, abstract = ?, abstract_tokens = ?, "
                "overview = ?, overview_renderings = ?, memory_diff = ?, error = NULL "
                "WHERE session_id = ? AND archive_no = ? AND status = 'pending'",
                (
                    now,
                    output.abstract,
                    output.abstract_tokens,
                    overview,
                    renderings,
                    _dumps(output.memory_diff),
                    task.session_id,
                    task.archive_number,
                ),
            ).rowcount
            if not updated:
                conn.execute(
                    "UPDATE tasks SET status = 'failed', error = 'archive no longer pending', updated_at = ?, "
                    "owner = NULL WHERE task_id = ?",
                    (now, task.task_id),
                )
                return False
            row = conn.execute(
                "SELECT memories_extracted FROM sessions WHERE session_id = ?", (task.session_id,)
            ).fetchone()
            totals: dict[str, int] = json.loads(row[0]) if row else {}
            for category in MEMORY_CATEGORIES:
                totals[category] = totals.get(category, 0) + output.memories_extracted.get(category, 0)
            conn.execute(
                "UPDATE sessions SET memories_extracted = ?, llm_prompt_tokens = llm_prompt_tokens + ?, "
                "llm_completion_tokens = llm_completion_tokens + ? WHERE session_id = ?",
                (_dumps(totals), output.llm_prompt_tokens, output.llm_completion_tokens, task.session_id),
            )
            conn.execute(
                "UPDATE tasks SET status = 'completed', result = ?, error = NULL, updated_at = ?, owner = NULL "
                "WHERE task_id = ?",
                (_dumps(output.result), now, task.task_id),
            )
        return True

    def fail_phase2(self, task: TaskRow, error: str, now: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE tasks SET status = 'failed', error = ?, updated_at = ?, owner = NULL "
                "WHERE task_id = ? AND status = 'running'",
                (error, now, task.task_id),
            )
            conn.execute(
                "UPDATE archives SET status = 'failed', error = ? "
                "WHERE session_id = ? AND archive_no = ? AND status = 'pending' AND task_id = ?",
                (error, task.session_id, task.archive_number, task.task_id),
            )

    def _failed_archive(self, conn: sqlite3.Connection, session_id: str, number: int) -> None:
        row = conn.execute(
            "SELECT status FROM archives WHERE session_id = ? AND archive_no = ?", (session_id, number)
        ).fetchone()
        if row is None:
            raise NotFound(f"{archive_id(number)} of session {session_id} not found")
        if row[0] != "failed":
            raise FailedPrecondition(
                f"{archive_id(number)} of session {session_id} is {row[0]}, not failed; only a failed "
                "archive can be retried or skipped"
            )

    def retry_archive(self, session_id: str, number: int, task_id: str, now: str) -> None:
        with self._write() as conn:
            self._failed_archive(conn, session_id, number)
            conn.execute(
                "UPDATE archives SET status = 'pending', error = NULL, task_id = ? "
                "WHERE session_id = ? AND archive_no = ?",
                (task_id, session_id, number),
            )
            conn.execute(
                "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, updated_at) "
                "VALUES (?, 'session_commit', 'pending', ?, ?, ?, ?)",
                (task_id, session_id, number, now, now),
            )

    def skip_archive(self, session_id: str, number: int, now: str) -> None:
        with self._write() as conn:
            self._failed_archive(conn, session_id, number)
            conn.execute(
                "UPDATE archives SET status = 'skipped', done_at = ? WHERE session_id = ? AND archive_no = ?",
                (now, session_id, number),
            )

    def unfinished_phase2_count(self) -> int:
        with self._read() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE task_type = 'session_commit' AND status IN ('pending', 'running')"
            ).fetchone()
        return int(row[0])
