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
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viking_mcp.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    Internal,
    NotFound,
    Unavailable,
    VikingError,
)
from viking_mcp.memory import MEMORY_CATEGORIES
from viking_mcp.models import MemoryWrite, Message, Owner, StoredMemory, archive_id
from viking_mcp.store.base import (
    AppendOutcome,
    ArchiveRow,
    ContextSnapshot,
    ContextUsage,
    MemoryDump,
    Phase1Outcome,
    Phase2Output,
    SessionDump,
    SessionRow,
    StoredMessage,
    TaskRow,
    ToolRecord,
    TransferCounts,
    TreeRecords,
    UsageRecord,
)
from viking_mcp.store.migrations import MIGRATIONS, SCHEMA_VERSION
from viking_mcp.store.rows import (
    archive_row as _archive_row,
    dumps as _dumps,
    memory_row as _memory_row,
    message_row as _message_row,
    session_row as _session_row,
    task_row as _task_row,
    tool_record as _tool_record,
    usage_entry as _usage_entry,
)

_SESSION_COLUMNS = (
    "session_id, account_id, user_id, agent_id, created_at, updated_at, metadata, next_seq, "
    "archived_through, total_tokens, archived_tokens, commit_count, last_commit_at, "
    "llm_prompt_tokens, llm_completion_tokens, memories_extracted, contexts_used, skills_used"
)
_ARCHIVE_COLUMNS = (
    "session_id, archive_no, first_seq, last_seq, message_count, tokens, status, created_at, done_at, "
    "abstract, abstract_tokens, overview, overview_renderings, memory_diff, supplied, error, task_id"
)
# The same, for get_context's list of every archive of a session: none of the large
# columns (it reads the renderings of one archive only), and nothing stored after them
# that it does not need, since reading a column past a large value walks the row's
# overflow pages: a failed archive's error is read, no other's.
_ARCHIVE_LIGHT_COLUMNS = (
    "session_id, archive_no, first_seq, last_seq, message_count, tokens, status, created_at, done_at, "
    "abstract, abstract_tokens, '' AS overview, '[]' AS overview_renderings, NULL AS memory_diff, "
    "'{}' AS supplied, CASE WHEN status = 'failed' THEN error END AS error, NULL AS task_id"
)
# The latest completed archive, for get_context: its overview and renderings as well.
_ARCHIVE_CONTEXT_COLUMNS = _ARCHIVE_LIGHT_COLUMNS.replace(
    "'' AS overview, '[]' AS overview_renderings", "overview, overview_renderings"
)
_TASK_COLUMNS = (
    "task_id, task_type, status, session_id, archive_no, created_at, updated_at, result, error, owner, attempts, "
    "account_id, user_id"
)
_MESSAGE_COLUMNS = "seq, message_id, role, parts, created_at, tokens"
_MEMORY_COLUMNS = (
    "m.id, m.uri, m.scope, m.owner_id, m.category, m.key, m.name, m.abstract, m.overview, m.content, m.stats, "
    "m.version, m.created_at, m.updated_at, COALESCE(u.active_count, 0) AS active_count"
)
_MEMORY_FROM = "memories m LEFT JOIN context_usage u ON u.account_id = m.account_id AND u.uri = m.uri"


# Phase 2 tasks that may run now: pending, or running for an owner that may be gone, and
# every earlier archive of the session done. The NOT EXISTS reads only the archives_listing index.
RUNNABLE_PHASE2 = (
    "SELECT t.task_id, t.status, t.owner, t.lease_until FROM tasks t "
    "WHERE t.task_type = 'session_commit' AND t.status IN ('pending', 'running') "
    "AND NOT EXISTS (SELECT 1 FROM archives b WHERE b.session_id = t.session_id "
    "AND b.archive_no < t.archive_no AND b.status NOT IN ('completed', 'skipped')) "
    "ORDER BY t.created_at, t.rowid LIMIT 64"
)


def _archive_listing_row(row: tuple[Any, ...]) -> ArchiveRow:
    """An archive as `_ARCHIVE_LIGHT_COLUMNS` reads it: no overview, renderings, diff or supplied."""
    # Positional, in ArchiveRow's field order (the columns' order): the fastest way to build one.
    return ArchiveRow(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
        "", [], None, {}, row[15], None,
    )  # fmt: skip


def _is_locked(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused for a lock another connection holds (SQLITE_BUSY/LOCKED)."""
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _translate(exc: sqlite3.Error, path: Path) -> VikingError:
    text = str(exc)
    if _is_locked(exc):
        return Unavailable(
            "the data directory's database is locked by another process past the busy timeout; "
            "retry, or raise VIKING_MCP_BUSY_TIMEOUT_MS"
        )
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in text:
        return Unavailable("the data directory is read-only; make VIKING_MCP_HOME writable")
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in text:
        return Unavailable(
            f"cannot open the database file {path} ({text}); check that it is a file and that this user "
            "may read and write it and its directory (VIKING_MCP_HOME)"
        )
    if isinstance(exc, sqlite3.OperationalError) and ("full" in text or "disk I/O" in text):
        return Unavailable(f"the data directory cannot be written ({text}); free disk space and retry")
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return Internal(
            f"the database file {path} is damaged ({text}); stop every viking-mcp using it, then move it "
            "(with any -wal and -shm files beside it) aside to start afresh, or restore it from a backup"
        )
    return Internal(f"storage error: {text}")


# WAL checkpoints, off the request path. By default SQLite checkpoints inside the commit
# that takes the WAL past 1,000 pages: about one append in 200, which then takes 5-15 ms
# instead of 0.1 (copying the pages back is half a millisecond; with synchronous=NORMAL a
# checkpoint also syncs the WAL and the database file, which is the rest). Here a thread of
# the store's own runs a PASSIVE checkpoint (it never blocks a reader or a writer) after
# every CHECKPOINT_EVERY write transactions, and the connections that serve calls
# checkpoint only once the WAL reaches FALLBACK_AUTOCHECKPOINT pages: when the thread is
# behind, or when writes never pause (the WAL starts over only at a write that finds it all
# copied back; a checkpoint in a pause between writes does that).
CHECKPOINT_EVERY = 400
FALLBACK_AUTOCHECKPOINT = 4_000


@dataclass
class _Batch:
    """A `write_batch` under way on one thread."""

    broken: bool = False


class _Holder:
    """A thread's connection, owned by that thread's `threading.local`."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class SQLiteStore:
    """The `Store` interface over one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5_000, durability: str = "normal") -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._closed = False
        # This process's writers take turns here before BEGIN IMMEDIATE. SQLite has one
        # writer at a time anyway, and threads that meet its lock instead back off in its
        # busy handler (sleeps of 1, 2, 5, 10 ... ms): with 16 HTTP clients appending, most
        # of the time went to those sleeps. Another process's writers still wait in SQLite.
        self._write_turn = threading.Lock()
        self._writes = 0  # write transactions committed, to wake the checkpointer
        self._checkpoint_wanted = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # --- connections and transactions ------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use.

        A connection belongs to its thread's `_Holder`; when the thread ends (worker pools
        retire idle threads) the holder is collected and the connection closed with it.
        """
        if self._closed:
            raise Unavailable("the store is closed")
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is not None:
            return holder.conn
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
            conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_AUTOCHECKPOINT}")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        holder = _Holder(conn)
        weakref.finalize(holder, conn.close)
        self._local.holder = holder
        self._holders.add(holder)
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
    def write_batch(self) -> Iterator[None]:
        """This thread's writes inside, in one transaction: each write a savepoint of it, so
        a write that fails is undone alone. A transaction that SQLite itself rolled back
        (a full disk, say) is not committed: the batch fails, and none of its writes happen."""
        if getattr(self._local, "batch", None) is not None:
            raise RuntimeError("write batches do not nest")
        with self._write() as conn:
            self._local.batch = batch = _Batch()
            try:
                yield
            finally:
                self._local.batch = None
            if batch.broken or not conn.in_transaction:
                raise Unavailable("a write of this batch broke its transaction; nothing of it was stored: retry")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the lock is taken at BEGIN so it can never deadlock on upgrade.
        Inside `write_batch`, a savepoint of the batch's transaction instead."""
        conn = self._connect()
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is not None:
            with self._savepoint(conn, batch):
                yield conn
            return
        if not self._write_turn.acquire(timeout=self._busy_timeout_ms / 1000):
            raise Unavailable(
                f"the database {self.path} stayed busy with this process's other writes for "
                f"{self._busy_timeout_ms} ms (VIKING_MCP_BUSY_TIMEOUT_MS); retry"
            )
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _translate(exc, self.path) from exc
                raise
        finally:
            self._write_turn.release()
        self._writes += 1  # not exact under threads, and need not be
        if self._writes % CHECKPOINT_EVERY == 0:
            self._wake_checkpointer()

    @contextmanager
    def _savepoint(self, conn: sqlite3.Connection, batch: _Batch) -> Iterator[None]:
        if batch.broken or not conn.in_transaction:  # SQLite rolled the batch's transaction back
            batch.broken = True
            raise Unavailable("an earlier write of this batch broke its transaction; retry")
        try:
            conn.execute("SAVEPOINT one_write")
        except sqlite3.Error as exc:
            batch.broken = True
            raise _translate(exc, self.path) from exc
        try:
            yield
            conn.execute("RELEASE one_write")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK TO one_write")
                conn.execute("RELEASE one_write")
            except sqlite3.Error:
                batch.broken = True  # SQLite rolled the whole transaction back
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, self.path) from exc
            raise

    def _wake_checkpointer(self) -> None:
        with self._checkpointer_lock:
            if self._checkpointer is None:
                self._checkpointer = threading.Thread(
                    target=self._checkpoint_loop, name="viking-checkpoint", daemon=True
                )
                self._checkpointer.start()
        self._checkpoint_wanted.set()

    def _checkpoint_loop(self) -> None:
        while True:
            self._checkpoint_wanted.wait()
            self._checkpoint_wanted.clear()
            if self._closed:
                return
            # Failing, it leaves the pages to the next one, or to a call's own checkpoint.
            with suppress(sqlite3.Error, VikingError):
                self._connect().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every SELECT inside sees one snapshot."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        finally:
            with suppress(sqlite3.Error):
                conn.execute("COMMIT")

    def _migrate(self) -> None:
        # Look first without the write lock: a current schema needs none, so a server still
        # starts (and serves reads) while another process holds the lock or the disk is full.
        with self._read() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
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
        with self._checkpointer_lock:
            checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer is not threading.current_thread():
            self._checkpoint_wanted.set()
            checkpointer.join(5.0)  # a checkpoint under way finishes before its connection closes
        for holder in list(self._holders):
            with suppress(sqlite3.Error):
                holder.conn.close()

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

    def list_sessions(self, limit: int, after: tuple[str, str] | None, owner: Owner | None = None) -> list[SessionRow]:
        clauses, params = [], []
        if after is not None:
            clauses.append("(created_at, session_id) < (?, ?)")
            params += list(after)
        if owner is not None:
            clauses.append("account_id = ? AND user_id = ?")
            params += [owner.account_id, owner.user_id]
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions {where}ORDER BY created_at DESC, session_id DESC LIMIT ?",
                (*params, limit),
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
        self,
        session_id: str,
        message: Message,
        tokens: int,
        now: str,
        create_as: Owner | None,
        only_for: Owner | None = None,
    ) -> AppendOutcome:
        """Append a message (creating the session as `create_as` if missing). With `only_for`,
        a session that belongs to someone else is refused inside the same transaction."""
        parts_json = _dumps([p.model_dump(mode="json") for p in message.parts])
        with self._write() as conn:
            row = conn.execute(
                "SELECT next_seq, archived_through, total_tokens, account_id, user_id FROM sessions "
                "WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            created = False
            if row is not None and only_for is not None and (row[3], row[4]) != (only_for.account_id, only_for.user_id):
                raise AlreadyExists(f"session id {session_id} is taken; use another session_id")
            if row is None:
                if create_as is None:
                    raise NotFound(f"session {session_id} not found")
                self._insert_session(conn, session_id, create_as, {}, now)
                next_seq, archived_through, total_tokens = 1, 0, 0
                created = True
            else:
                next_seq, archived_through, total_tokens = row[0], row[1], row[2]
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
        return [_tool_record(r) for r in rows]

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
            self._insert_task(conn, task_id, "session_commit", "pending", session_id, number, now)
            conn.execute(
                "UPDATE usage SET archive_no = ? WHERE session_id = ? AND archive_no IS NULL", (number, session_id)
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
            listing = conn.cursor()
            listing.row_factory = None  # plain tuples: a thousand archives are read on every call
            listing.execute(
                f"SELECT {_ARCHIVE_LIGHT_COLUMNS} FROM archives WHERE session_id = ? ORDER BY archive_no",
                (session_id,),
            )
            archives = [_archive_listing_row(r) for r in listing]
            latest_index = next((i for i in reversed(range(len(archives))) if archives[i].status == "completed"), None)
            after_seq = 0
            if latest_index is not None:
                latest = archives[latest_index]
                full = conn.execute(
                    f"SELECT {_ARCHIVE_CONTEXT_COLUMNS} FROM archives WHERE session_id = ? AND archive_no = ?",
                    (session_id, latest.number),
                ).fetchone()
                archives[latest_index] = _archive_row(full)
                after_seq = latest.last_seq
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq",
                (session_id, after_seq),
            ).fetchall()
        return ContextSnapshot(archives=archives, messages=[_message_row(r) for r in rows])

    # --- tasks and Phase 2 ------------------------------------------------------------------------

    def _insert_task(
        self, conn: sqlite3.Connection, task_id: str, task_type: str, status: str, session_id: str,
        number: int | None, now: str,
    ) -> None:  # fmt: skip
        """A task row, stamped with its session's owner."""
        conn.execute(
            "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, updated_at, "
            "account_id, user_id) SELECT ?, ?, ?, ?, ?, ?, ?, account_id, user_id FROM sessions WHERE session_id = ?",
            (task_id, task_type, status, session_id, number, now, now, session_id),
        )

    def get_task(self, task_id: str) -> TaskRow | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _task_row(row) if row else None

    def list_tasks(
        self, task_type: str | None, status: str | None, session_id: str | None, limit: int, owner: Owner | None = None
    ) -> list[TaskRow]:
        clauses, params = [], []
        if owner is not None:
            clauses += ["account_id = ?", "user_id = ?"]
            params += [owner.account_id, owner.user_id]
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
        # Look first without the write lock: an idle server must not take it every few seconds.
        with self._read() as conn:
            found = [
                (task_id, status, current)
                for task_id, status, current, lease in conn.execute(RUNNABLE_PHASE2)
                if status == "pending" or owner_is_gone(current, lease or 0.0)
            ]
        if not found:
            return None
        with self._write() as conn:
            for task_id, status, current in found:
                claimed = conn.execute(
                    "UPDATE tasks SET status = 'running', owner = ?, lease_until = ?, updated_at = ?, "
                    "attempts = attempts + 1 WHERE task_id = ? AND status = ? AND owner IS ?",
                    (owner, lease_until, now, task_id, status, current),
                ).rowcount
                if claimed:  # nobody took it between the look and the lock
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
            self._apply_memory_writes(
                conn,
                output.account_id,
                output.memory_writes,
                {"session_id": task.session_id, "archive_id": archive_id(task.archive_number or 0)},
                now,
            )
            used = {
                r[0]
                for r in conn.execute(
                    "SELECT uri FROM usage WHERE session_id = ? AND archive_no = ? AND kind = 'context'",
                    (task.session_id, task.archive_number),
                )
            }
            # Each context counts once per archive, and only if this session's owner may see
            # it: another user's memory URI is not theirs to promote.
            used = {uri for uri in used if output.may_use(uri)}
            for uri in sorted(used):
                conn.execute(
                    "INSERT INTO context_usage (account_id, uri, active_count, last_used_at) VALUES (?, ?, 1, ?) "
                    "ON CONFLICT (account_id, uri) DO UPDATE SET active_count = active_count + 1, "
                    "last_used_at = excluded.last_used_at",
                    (output.account_id, uri, now),
                )
            result = {**output.result, "active_count_updated": len(set(used))}
            self._add_memory_counts(conn, task.session_id, output.memories_extracted)
            conn.execute(
                "UPDATE sessions SET llm_prompt_tokens = llm_prompt_tokens + ?, "
                "llm_completion_tokens = llm_completion_tokens + ? WHERE session_id = ?",
                (output.llm_prompt_tokens, output.llm_completion_tokens, task.session_id),
            )
            conn.execute(
                "UPDATE tasks SET status = 'completed', result = ?, error = NULL, updated_at = ?, owner = NULL "
                "WHERE task_id = ?",
                (_dumps(result), now, task.task_id),
            )
        return True

    def _add_memory_counts(self, conn: sqlite3.Connection, session_id: str, counts: dict[str, int]) -> None:
        row = conn.execute("SELECT memories_extracted FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        totals: dict[str, int] = json.loads(row[0]) if row else {}
        for category in MEMORY_CATEGORIES:
            totals[category] = totals.get(category, 0) + counts.get(category, 0)
        conn.execute("UPDATE sessions SET memories_extracted = ? WHERE session_id = ?", (_dumps(totals), session_id))

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
    ) -> None:
        """An immediate extraction: its memories, a completed session_extract task, the counters."""
        result = {"session_id": session_id, "memories_extracted": {**counts, "total": sum(counts.values())}}
        with self._write() as conn:
            self._apply_memory_writes(conn, account_id, writes, {"session_id": session_id, "task_id": task_id}, now)
            self._add_memory_counts(conn, session_id, counts)
            conn.execute(
                "UPDATE sessions SET llm_prompt_tokens = llm_prompt_tokens + ?, "
                "llm_completion_tokens = llm_completion_tokens + ? WHERE session_id = ?",
                (*llm_tokens, session_id),
            )
            self._insert_task(conn, task_id, "session_extract", "completed", session_id, None, created_at)
            conn.execute(
                "UPDATE tasks SET updated_at = ?, result = ? WHERE task_id = ?", (now, _dumps(result), task_id)
            )

    def fail_extract(self, session_id: str, task_id: str, error: str, created_at: str, now: str) -> None:
        with self._write() as conn:
            self._insert_task(conn, task_id, "session_extract", "failed", session_id, None, created_at)
            conn.execute("UPDATE tasks SET updated_at = ?, error = ? WHERE task_id = ?", (now, error, task_id))

    def fail_phase2(self, task: TaskRow, error: str, now: str) -> None:
        with self._write() as conn:
            failed = conn.execute(
                "UPDATE tasks SET status = 'failed', error = ?, updated_at = ?, owner = NULL "
                "WHERE task_id = ? AND status = 'running' AND owner IS ?",
                (error, now, task.task_id, task.owner),
            ).rowcount
            if not failed:
                return  # someone else owns it now; their outcome stands
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
            self._insert_task(conn, task_id, "session_commit", "pending", session_id, number, now)

    def skip_archive(self, session_id: str, number: int, now: str) -> None:
        with self._write() as conn:
            self._failed_archive(conn, session_id, number)
            conn.execute(
                "UPDATE archives SET status = 'skipped', done_at = ? WHERE session_id = ? AND archive_no = ?",
                (now, session_id, number),
            )

    def archive_usage(self, session_id: str, number: int) -> UsageRecord:
        record = UsageRecord()
        with self._read() as conn:
            for row in conn.execute(
                "SELECT kind, uri, payload FROM usage WHERE session_id = ? AND archive_no = ? ORDER BY id",
                (session_id, number),
            ):
                if row["kind"] == "context":
                    record.contexts.append(row["uri"])
                else:
                    record.skills.append(json.loads(row["payload"]))
        return record

    # --- long-term memories ------------------------------------------------------------------------

    def memories_by_uri(self, account_id: str, uris: list[str]) -> dict[str, StoredMemory]:
        if not uris:
            return {}
        marks = ", ".join("?" for _ in uris)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MEMORY_COLUMNS} FROM {_MEMORY_FROM} WHERE m.account_id = ? AND m.uri IN ({marks})",
                (account_id, *uris),
            ).fetchall()
        return {row["uri"]: _memory_row(row) for row in rows}

    def memories_in_category(self, account_id: str, scope: str, owner_id: str, category: str) -> list[StoredMemory]:
        return self.list_memories(account_id, scope, owner_id, category, None)

    def list_memories(
        self, account_id: str, scope: str, owner_id: str, category: str | None, limit: int | None
    ) -> list[StoredMemory]:
        clause = " AND m.category = ?" if category else ""
        params: tuple[Any, ...] = (account_id, scope, owner_id, *((category,) if category else ()))
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MEMORY_COLUMNS} FROM {_MEMORY_FROM} WHERE m.account_id = ? AND m.scope = ? "
                f"AND m.owner_id = ?{clause} ORDER BY m.category, m.key LIMIT ?",
                (*params, -1 if limit is None else limit),
            ).fetchall()
        return [_memory_row(r) for r in rows]

    def _apply_memory_writes(
        self, conn: sqlite3.Connection, account_id: str, writes: list[MemoryWrite], source: dict[str, Any], now: str
    ) -> None:
        """Apply planned writes; any that was planned against a stale version aborts them all."""
        for write in writes:
            memory = write.memory
            values = (
                memory.name, memory.abstract, memory.overview, memory.content, _dumps(memory.stats),
            )  # fmt: skip
            if write.action == "add":
                try:
                    cursor = conn.execute(
                        "INSERT INTO memories (account_id, uri, scope, owner_id, category, key, name, abstract, "
                        "overview, content, stats, created_at, updated_at, source) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (account_id, memory.uri, memory.scope, memory.owner_id, memory.category, memory.key,
                         *values, now, now, _dumps(source)),
                    )  # fmt: skip
                except sqlite3.IntegrityError:
                    raise Conflict(f"memory {memory.uri} was created meanwhile") from None
                rowid = cursor.lastrowid
            else:
                row = conn.execute(
                    "SELECT id FROM memories WHERE account_id = ? AND uri = ? AND version = ?",
                    (account_id, memory.uri, write.expected_version),
                ).fetchone()
                if row is None:
                    raise Conflict(f"memory {memory.uri} changed meanwhile")
                rowid = row[0]
                conn.execute(
                    "UPDATE memories SET name = ?, abstract = ?, overview = ?, content = ?, stats = ?, "
                    "version = version + 1, updated_at = ?, source = ? WHERE id = ?",
                    (*values, now, _dumps(source), rowid),
                )
                conn.execute("DELETE FROM memories_fts WHERE rowid = ?", (rowid,))
            conn.execute(
                "INSERT INTO memories_fts (rowid, name, abstract, overview, content) VALUES (?, ?, ?, ?, ?)",
                (rowid, memory.name or "", memory.abstract, memory.overview, memory.content),
            )

    def search_memories(
        self, account_id: str, owners: dict[str, str], match: str, category: str | None, limit: int
    ) -> list[tuple[StoredMemory, float]]:
        """BM25-ranked full-text search (name and abstract weigh most); use breaks ties."""
        clause = " AND m.category = ?" if category else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MEMORY_COLUMNS}, bm25(memories_fts, 4.0, 3.0, 1.5, 1.0) AS rank "
                "FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid "
                "LEFT JOIN context_usage u ON u.account_id = m.account_id AND u.uri = m.uri "
                "WHERE memories_fts MATCH ? AND m.account_id = ? "
                "AND ((m.scope = 'user' AND m.owner_id = ?) OR (m.scope = 'agent' AND m.owner_id = ?))"
                f"{clause} ORDER BY rank, active_count DESC, m.uri LIMIT ?",
                (match, account_id, owners["user"], owners["agent"], *((category,) if category else ()), limit),
            ).fetchall()
        return [(_memory_row(r), -float(r["rank"])) for r in rows]

    # --- export and import ---------------------------------------------------------------------------

    @contextmanager
    def export_tree(self) -> Iterator[TreeRecords]:
        """Everything, read in one transaction: a live server may keep writing meanwhile, and
        the export still shows one moment (no task completed whose archive is still pending)."""
        with self._read() as conn:
            yield _SQLiteTreeRecords(conn)

    def import_tree(self, records: TreeRecords, replace: bool, now: str) -> TransferCounts:
        counts = dict.fromkeys(
            ("sessions", "messages", "archives", "tool_records", "tasks", "memories", "context_usage"), 0
        )
        with self._write() as conn:
            for dump in records.sessions():
                self._import_session(conn, dump, replace, now)
                counts["sessions"] += 1
                counts["messages"] += len(dump.messages)
                counts["archives"] += len(dump.archives)
                counts["tool_records"] += len(dump.tools)
            for task in records.tasks():
                self._import_task(conn, task, replace)
                counts["tasks"] += 1
            for memory in records.memories():
                self._import_memory(conn, memory, replace)
                counts["memories"] += 1
            for usage in records.context_usage():
                # Without replace, counts add up: the contexts were used in both places.
                conn.execute(
                    "INSERT INTO context_usage (account_id, uri, active_count, last_used_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (account_id, uri) DO UPDATE SET "
                    + (
                        "active_count = excluded.active_count, last_used_at = excluded.last_used_at"
                        if replace
                        else "active_count = active_count + excluded.active_count, "
                        "last_used_at = MAX(COALESCE(last_used_at, ''), COALESCE(excluded.last_used_at, ''))"
                    ),
                    (usage.account_id, usage.uri, usage.active_count, usage.last_used_at),
                )
                counts["context_usage"] += 1
        return TransferCounts(**counts)

    def _import_session(self, conn: sqlite3.Connection, dump: SessionDump, replace: bool, now: str) -> None:
        row = dump.session
        session_id = row.session_id
        if conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone():
            if not replace:
                raise AlreadyExists(f"session {session_id} already exists here; import with --replace to overwrite it")
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            for table in ("messages", "archives", "tool_calls", "usage"):
                conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            conn.execute(
                "UPDATE tasks SET status = 'failed', error = 'session replaced by an import before the task finished', "
                "updated_at = ?, owner = NULL WHERE session_id = ? AND status IN ('pending', 'running')",
                (now, session_id),
            )
        cum = 0
        cum_at: dict[int, int] = {0: 0}
        for stored in dump.messages:
            cum += stored.tokens
            cum_at[stored.seq] = cum
            message = stored.message
            conn.execute(
                "INSERT INTO messages (session_id, seq, message_id, role, parts, created_at, tokens, cum_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id, stored.seq, message.id, message.role,
                    _dumps([p.model_dump(mode="json") for p in message.parts]), message.created_at, stored.tokens, cum,
                ),
            )  # fmt: skip
        for archive in dump.archives:
            conn.execute(
                f"INSERT INTO archives ({_ARCHIVE_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                (
                    session_id, archive.number, archive.first_seq, archive.last_seq, archive.message_count,
                    archive.tokens, archive.status, archive.created_at, archive.done_at, archive.abstract,
                    archive.abstract_tokens, archive.overview,
                    _dumps([[r.tokens, r.text] for r in archive.overview_renderings]),
                    _dumps(archive.memory_diff) if archive.memory_diff is not None else None,
                    _dumps(archive.supplied), archive.error, archive.task_id,
                ),
            )  # fmt: skip
        archived_through = dump.archives[-1].last_seq if dump.archives else 0
        conn.execute(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join('?' * 18)})",
            (
                session_id, row.owner.account_id, row.owner.user_id, row.owner.agent_id, row.created_at,
                row.updated_at, _dumps(row.metadata), len(dump.messages) + 1, archived_through, cum,
                cum_at.get(archived_through, 0), row.commit_count, row.last_commit_at, row.llm_prompt_tokens,
                row.llm_completion_tokens, _dumps(row.memories_extracted), row.contexts_used, row.skills_used,
            ),
        )  # fmt: skip
        for tool in dump.tools:
            conn.execute(
                "INSERT INTO tool_calls (session_id, tool_id, tool_name, skill_uri, tool_input, tool_output, "
                "tool_status, message_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id, tool.tool_id, tool.tool_name, tool.skill_uri, _dumps(tool.tool_input),
                    tool.tool_output, tool.tool_status, tool.message_id, tool.created_at, tool.updated_at,
                ),
            )  # fmt: skip
        for entry in dump.usage:
            conn.execute(
                "INSERT INTO usage (session_id, kind, uri, payload, created_at, archive_no) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, entry.kind, entry.uri, _dumps(entry.payload), entry.created_at, entry.archive_number),
            )

    def _import_task(self, conn: sqlite3.Connection, task: TaskRow, replace: bool) -> None:
        if not replace and conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task.task_id,)).fetchone():
            raise AlreadyExists(f"task {task.task_id} already exists here; import with --replace to overwrite it")
        # No lease: a task that was running when exported is taken over by the next worker.
        conn.execute(
            "INSERT OR REPLACE INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, "
            "updated_at, result, error, owner, lease_until, attempts, account_id, user_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
            (
                task.task_id, task.task_type, task.status, task.session_id, task.archive_number, task.created_at,
                task.updated_at, _dumps(task.result) if task.result is not None else None, task.error, task.owner,
                task.attempts, task.account_id, task.user_id,
            ),
        )  # fmt: skip

    def _import_memory(self, conn: sqlite3.Connection, dump: MemoryDump, replace: bool) -> None:
        memory = dump.memory
        found = conn.execute(
            "SELECT id FROM memories WHERE account_id = ? AND uri = ?", (dump.account_id, memory.uri)
        ).fetchone()
        if found is not None:
            if not replace:
                raise AlreadyExists(f"memory {memory.uri} already exists here; import with --replace to overwrite it")
            conn.execute("DELETE FROM memories WHERE id = ?", (found[0],))
            conn.execute("DELETE FROM memories_fts WHERE rowid = ?", (found[0],))
        cursor = conn.execute(
            "INSERT INTO memories (account_id, uri, scope, owner_id, category, key, name, abstract, overview, "
            "content, stats, version, created_at, updated_at, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                dump.account_id, memory.uri, memory.scope, memory.owner_id, memory.category, memory.key, memory.name,
                memory.abstract, memory.overview, memory.content, _dumps(memory.stats), memory.version,
                memory.created_at, memory.updated_at, _dumps(dump.source),
            ),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO memories_fts (rowid, name, abstract, overview, content) VALUES (?, ?, ?, ?, ?)",
            (cursor.lastrowid, memory.name or "", memory.abstract, memory.overview, memory.content),
        )


class _SQLiteTreeRecords:
    """The records of one read transaction (`SQLiteStore.export_tree`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def sessions(self) -> Iterator[SessionDump]:
        conn = self._conn
        ids = [r[0] for r in conn.execute("SELECT session_id FROM sessions ORDER BY created_at, session_id")]
        for session_id in ids:
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            messages = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
            archives = conn.execute(
                f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE session_id = ? ORDER BY archive_no", (session_id,)
            ).fetchall()
            tools = conn.execute(
                "SELECT tool_id, tool_name, skill_uri, tool_input, tool_output, tool_status, message_id, "
                "created_at, updated_at FROM tool_calls WHERE session_id = ? ORDER BY created_at, tool_id",
                (session_id,),
            ).fetchall()
            usage = conn.execute(
                "SELECT kind, uri, payload, created_at, archive_no FROM usage WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
            yield SessionDump(
                session=_session_row(row),
                messages=[_message_row(r) for r in messages],
                archives=[_archive_row(r) for r in archives],
                tools=[_tool_record(r) for r in tools],
                usage=[_usage_entry(r) for r in usage],
            )

    def tasks(self) -> Iterator[TaskRow]:
        for row in self._conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY rowid"):
            yield _task_row(row)

    def memories(self) -> Iterator[MemoryDump]:
        for row in self._conn.execute(
            f"SELECT {_MEMORY_COLUMNS}, m.account_id, m.source FROM {_MEMORY_FROM} ORDER BY m.account_id, m.uri"
        ):
            yield MemoryDump(account_id=row["account_id"], memory=_memory_row(row), source=json.loads(row["source"]))

    def context_usage(self) -> Iterator[ContextUsage]:
        for row in self._conn.execute(
            "SELECT account_id, uri, active_count, last_used_at FROM context_usage ORDER BY account_id, uri"
        ):
            yield ContextUsage(row["account_id"], row["uri"], row["active_count"], row["last_used_at"])
