"""The PostgreSQL store: many server instances, on many machines, on one database.

Same tables, same answers as the embedded SQLite store (store/sqlite.py); what changes
is how concurrency is made safe when the writers are other machines:

- Every write that touches a session takes that session's row lock first
  (`SELECT ... FOR UPDATE`), so appends to one session are numbered in one order and
  never lost, and archive numbers are handed out one at a time. Taking the session lock
  first in every transaction is also what keeps two transactions from deadlocking.
- The Phase 2 queue is claimed with `FOR UPDATE SKIP LOCKED`: instances polling at once
  each take a different task, and none waits for another's claim.
- A claim is a lease on the database's clock, renewed by a heartbeat while this process
  works on the task. A process id means nothing on another machine; a lease that nobody
  renews does: when an instance dies, its lease runs out and another instance takes the
  task over. The old owner, should it come back, finds it no longer owns the task and its
  late result is dropped (every Phase 2 write is compare-and-set on the owner).
- Search is PostgreSQL full-text search: a weighted `tsvector` with a GIN index.

Connections come from a psycopg pool (autocommit, with explicit BEGIN/COMMIT, as in the
SQLite store). psycopg is imported only when a `postgresql://` store is configured.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from viking_mcp.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
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
from viking_mcp.store.pg_migrations import MIGRATIONS, SCHEMA_VERSION
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
from viking_mcp.store.urls import redacted

logger = logging.getLogger(__name__)

Cursor = psycopg.Cursor[DictRow]

_SESSION_COLUMNS = (
    "session_id, account_id, user_id, agent_id, created_at, updated_at, metadata, next_seq, "
    "archived_through, total_tokens, archived_tokens, commit_count, last_commit_at, "
    "llm_prompt_tokens, llm_completion_tokens, memories_extracted, contexts_used, skills_used"
)
_ARCHIVE_COLUMNS = (
    "session_id, archive_no, first_seq, last_seq, message_count, tokens, status, created_at, done_at, "
    "abstract, abstract_tokens, overview, overview_renderings, memory_diff, supplied, error, task_id"
)
# The same, for get_context's list of every archive of a session (as the SQLite store reads
# it): none of the large columns, and a failed archive's error only.
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
_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
# Seconds since the epoch, on the database's clock.
_MIGRATION_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('viking-mcp migrate ' || current_schema())) AS got"
# Search weights for name, abstract, overview and content (ts_rank's order is D, C, B, A).
_RANK_WEIGHTS = "'{0.25, 0.375, 0.75, 1.0}'"


def _text(value: str) -> str:
    """Free text for a text column. PostgreSQL text cannot hold NUL, which a message may
    (messages themselves are stored as JSON, where it is escaped and kept): in summaries,
    memories and tool outputs derived from them it becomes U+FFFD instead of failing the write."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _text_or_none(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _translate(exc: Exception) -> VikingError:
    if isinstance(exc, VikingError):
        return exc
    if isinstance(exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure):
        return Conflict(f"a concurrent write got in the way ({type(exc).__name__}); retry")
    if isinstance(exc, PoolTimeout):
        return Unavailable(
            "no PostgreSQL connection was free in time; retry, or raise VIKING_MCP_PG_POOL_SIZE "
            "(and the server's max_connections)"
        )
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return Unavailable("the PostgreSQL server is read-only (a standby?); point VIKING_MCP_STORE at the primary")
    if isinstance(exc, pg_errors.DiskFull):
        return Unavailable("the PostgreSQL server's disk is full; free space and retry")
    if isinstance(exc, pg_errors.UntranslatableCharacter | pg_errors.CharacterNotInRepertoire) or (
        isinstance(exc, psycopg.DataError) and "NUL" in str(exc)
    ):
        return InvalidArgument(f"text the database cannot store ({exc}); remove NUL characters")
    if isinstance(exc, pg_errors.ProgramLimitExceeded):
        # SQLSTATE class 54 (a value too large for an index row, too many columns, ...): the
        # same write fails the same way every time, so retrying is no answer.
        return ResourceExhausted(f"a value is too large for the database to store ({exc}); make it smaller")
    if isinstance(exc, psycopg.OperationalError):
        return Unavailable(f"the PostgreSQL server cannot be reached or refused the work ({exc}); retry")
    return Internal(f"storage error: {type(exc).__name__}: {exc}")


class PostgresStore:
    """The `Store` interface over one PostgreSQL database (or one schema of it)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        lease_seconds: float = 30.0,
        connect_timeout: float = 10.0,
        migrate_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self._migrate_timeout = migrate_timeout
        self._lease_seconds = lease_seconds
        # Tasks this process has claimed and not yet finished: task id -> (owner, hard deadline
        # on the database clock). The heartbeat renews their leases up to that deadline.
        self._claimed: dict[str, tuple[str, float]] = {}
        self._claimed_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        # One plain connection first: a wrong URL, password or host fails here, at once and
        # with libpq's reason, instead of as a pool retrying in the background.
        try:
            psycopg.connect(url, connect_timeout=max(1, round(connect_timeout)), autocommit=True).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise Unavailable(
                f"cannot connect to {redacted(url)} ({reason}); check VIKING_MCP_STORE, that the server is up, "
                "and that it accepts this user"
            ) from None
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "row_factory": dict_row},
            connection_class=psycopg.Connection[DictRow],
            timeout=connect_timeout,
            # A pooled connection is checked before it is handed out: after a server restart
            # (or a dropped connection) the pool reconnects instead of failing one request.
            check=ConnectionPool.check_connection,
            open=False,
            name="viking-mcp",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise Unavailable(
                f"cannot connect to {redacted(url)} within {connect_timeout:g} s; check VIKING_MCP_STORE, "
                "that the server is up, and that it accepts this user"
            ) from None
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise
        self._heartbeat = threading.Thread(target=self._renew_leases, name="viking-pg-heartbeat", daemon=True)
        self._heartbeat.start()

    # --- connections and transactions ------------------------------------------------

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Cursor]:
        if self._closed:
            raise Unavailable("the store is closed")
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                cur.execute(begin)
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    with suppress(psycopg.Error):
                        conn.rollback()
                    raise
        except VikingError:
            raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise _translate(exc) from exc

    def _write(self) -> AbstractContextManager[Cursor]:
        """One read-committed write transaction: row locks, not snapshots, keep it correct."""
        return self._transaction("BEGIN")

    def _read(self) -> AbstractContextManager[Cursor]:
        """A read transaction: every SELECT inside sees one snapshot."""
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _migrate(self) -> None:
        with self._write() as cur:
            # Tried, not waited on: an instance stuck while migrating (or a session holding the
            # lock by hand) must not hang every other instance's start forever.
            deadline = time.monotonic() + self._migrate_timeout
            while not (got := cur.execute(_MIGRATION_LOCK).fetchone()) or not got["got"]:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"another instance has been migrating {redacted(self.url)} for over "
                        f"{self._migrate_timeout:g} s (it holds the migration lock); retry"
                    )
                time.sleep(0.1)
            # Checked before creating: an instance whose role may not create tables (the schema
            # migrated by `viking-mcp migrate` under another role) still starts.
            found = cur.execute("SELECT to_regclass('schema_version') IS NOT NULL AS found").fetchone()
            if not (found and found["found"]):
                cur.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            row = cur.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                cur.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row["version"])
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"{redacted(self.url)} has schema version {version}, newer than this viking-mcp understands "
                    f"({SCHEMA_VERSION}); upgrade viking-mcp"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    cur.execute(statement)
            if version != SCHEMA_VERSION:
                cur.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._read() as cur:
            row = cur.execute("SELECT version FROM schema_version").fetchone()
        return int(row["version"]) if row else 0

    def write_batch(self) -> AbstractContextManager[None]:
        """Each write commits on its own: an append holds its session's row lock until it
        commits, and a batch would hold the locks of many sessions at once."""
        return nullcontext()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join(5)
        self._pool.close()

    # --- Phase 2 leases -----------------------------------------------------------------------

    def _renew_leases(self) -> None:
        """Keep the leases of the tasks this process works on from running out."""
        interval = max(0.2, self._lease_seconds / 3)
        while not self._stop.wait(interval):
            with self._claimed_lock:
                claimed = dict(self._claimed)
            if not claimed:
                continue
            for task_id, (owner, hard_until) in claimed.items():
                try:  # one short transaction per task: a renewal never waits on two row locks
                    with self._write() as cur:
                        cur.execute(
                            f"UPDATE tasks SET lease_until = LEAST({_DB_NOW} + %s, %s) "
                            "WHERE task_id = %s AND status = 'running' AND owner = %s",
                            (self._lease_seconds, hard_until, task_id, owner),
                        )
                except Exception:
                    logger.warning("could not renew the lease of Phase 2 task %s; retrying", task_id, exc_info=True)

    def _forget_claim(self, task_id: str) -> None:
        with self._claimed_lock:
            self._claimed.pop(task_id, None)

    # --- sessions -------------------------------------------------------------------------

    def _lock_session(self, cur: Cursor, session_id: str, columns: str = "session_id") -> DictRow | None:
        """Take the session's row lock: every write on a session begins here."""
        return cur.execute(
            f"SELECT {columns} FROM sessions WHERE session_id = %s FOR UPDATE",
            (session_id,),
        ).fetchone()

    def _insert_session(self, cur: Cursor, session_id: str, owner: Owner, metadata: dict[str, Any], now: str) -> bool:
        """Insert the session unless it exists (then False); another instance creating it at the
        same moment makes this wait for that one's commit, then answer False."""
        cur.execute(
            "INSERT INTO sessions (session_id, account_id, user_id, agent_id, created_at, updated_at, metadata) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (session_id) DO NOTHING",
            (session_id, owner.account_id, owner.user_id, owner.agent_id, now, now, _dumps(metadata)),
        )
        return cur.rowcount > 0

    def _session(self, cur: Cursor, session_id: str) -> SessionRow | None:
        row = cur.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = %s", (session_id,)).fetchone()
        return _session_row(row) if row else None

    def create_session(self, session_id: str, owner: Owner, metadata: dict[str, Any], now: str) -> SessionRow:
        with self._write() as cur:
            if not self._insert_session(cur, session_id, owner, metadata, now):
                raise AlreadyExists(f"session {session_id} already exists; use another session_id or omit it")
            row = self._session(cur, session_id)
        assert row is not None
        return row

    def get_session(self, session_id: str) -> SessionRow | None:
        with self._read() as cur:
            return self._session(cur, session_id)

    def list_sessions(self, limit: int, after: tuple[str, str] | None, owner: Owner | None = None) -> list[SessionRow]:
        clauses: list[str] = []
        params: list[Any] = []
        if after is not None:
            clauses.append("(created_at, session_id) < (%s, %s)")
            params += list(after)
        if owner is not None:
            clauses.append("account_id = %s AND user_id = %s")
            params += [owner.account_id, owner.user_id]
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions {where}ORDER BY created_at DESC, session_id DESC LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [_session_row(r) for r in rows]

    def merge_metadata(self, session_id: str, patch: dict[str, Any], now: str) -> dict[str, Any]:
        with self._write() as cur:
            row = self._lock_session(cur, session_id, "metadata")
            if row is None:
                raise NotFound(f"session {session_id} not found")
            merged: dict[str, Any] = json.loads(row["metadata"])
            for key, value in patch.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            cur.execute(
                "UPDATE sessions SET metadata = %s, updated_at = %s WHERE session_id = %s",
                (_dumps(merged), now, session_id),
            )
        return merged

    def delete_session(self, session_id: str, now: str) -> bool:
        with self._write() as cur:
            if self._lock_session(cur, session_id) is None:
                return False
            cur.execute("DELETE FROM sessions WHERE session_id = %s", (session_id,))
            for table in ("messages", "archives", "tool_calls", "usage"):
                cur.execute(f"DELETE FROM {table} WHERE session_id = %s", (session_id,))
            cur.execute(
                "UPDATE tasks SET status = 'failed', error = 'session deleted before the task finished', "
                "updated_at = %s, owner = NULL, lease_until = NULL WHERE session_id = %s "
                "AND status IN ('pending', 'running')",
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
        """Append a message (creating the session as `create_as` if missing), numbered under the
        session's row lock. With `only_for`, a session that belongs to someone else is refused."""
        parts_json = _dumps([p.model_dump(mode="json") for p in message.parts])
        columns = "next_seq, archived_through, total_tokens, account_id, user_id"
        with self._write() as cur:
            created = False
            row = self._lock_session(cur, session_id, columns)
            if row is None:
                if create_as is None:
                    raise NotFound(f"session {session_id} not found")
                created = self._insert_session(cur, session_id, create_as, {}, now)
                row = self._lock_session(cur, session_id, columns)
                if row is None:  # created by another instance and deleted again, in between
                    raise Conflict(f"session {session_id} was deleted while this message was added; retry")
            if only_for is not None and (row["account_id"], row["user_id"]) != (only_for.account_id, only_for.user_id):
                if created:  # cannot be: we just made it as `create_as`
                    raise Internal("session owner mismatch right after creating it")
                raise AlreadyExists(f"session id {session_id} is taken; use another session_id")
            next_seq, archived_through, total_tokens = row["next_seq"], row["archived_through"], row["total_tokens"]
            duplicate = cur.execute(
                "SELECT 1 FROM messages WHERE session_id = %s AND message_id = %s", (session_id, message.id)
            ).fetchone()
            if duplicate:
                return AppendOutcome(message.id, next_seq - 1 - archived_through, created, True)
            cur.execute(
                "INSERT INTO messages (session_id, seq, message_id, role, parts, created_at, tokens, cum_tokens) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
            cur.execute(
                "UPDATE sessions SET next_seq = %s, total_tokens = %s, updated_at = %s WHERE session_id = %s",
                (next_seq + 1, total_tokens + tokens, now, session_id),
            )
            for part in message.parts:
                if part.type == "tool":
                    cur.execute(
                        "INSERT INTO tool_calls (session_id, tool_id, tool_name, skill_uri, tool_input, "
                        "tool_output, tool_status, message_id, created_at, updated_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (session_id, tool_id) DO UPDATE SET tool_name = excluded.tool_name, "
                        "skill_uri = excluded.skill_uri, tool_input = excluded.tool_input, "
                        "tool_output = excluded.tool_output, tool_status = excluded.tool_status, "
                        "message_id = excluded.message_id, updated_at = excluded.updated_at",
                        (
                            session_id,
                            part.tool_id,
                            _text(part.tool_name),
                            _text_or_none(part.skill_uri),
                            _dumps(part.tool_input),
                            _text(part.tool_output),
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
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = %s AND seq > %s AND seq <= %s "
                "ORDER BY seq LIMIT %s OFFSET %s",
                (session_id, after_seq, upper, limit, offset),
            ).fetchall()
        return [_message_row(r) for r in rows]

    def live_messages(self, session_id: str) -> list[StoredMessage]:
        with self._read() as cur:
            row = cur.execute("SELECT archived_through FROM sessions WHERE session_id = %s", (session_id,)).fetchone()
            if row is None:
                raise NotFound(f"session {session_id} not found")
            rows = cur.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = %s AND seq > %s ORDER BY seq",
                (session_id, row["archived_through"]),
            ).fetchall()
        return [_message_row(r) for r in rows]

    # --- usage and tool records ----------------------------------------------------------------

    def record_usage(
        self, session_id: str, contexts: list[str], skill: dict[str, Any] | None, now: str
    ) -> tuple[int, int]:
        with self._write() as cur:
            if self._lock_session(cur, session_id) is None:
                raise NotFound(f"session {session_id} not found")
            for uri in contexts:
                cur.execute(
                    "INSERT INTO usage (session_id, kind, uri, created_at) VALUES (%s, 'context', %s, %s)",
                    (session_id, _text(uri), now),
                )
            if skill is not None:
                cur.execute(
                    "INSERT INTO usage (session_id, kind, uri, payload, created_at) VALUES (%s, 'skill', %s, %s, %s)",
                    (session_id, _text(str(skill["uri"])), _dumps(skill), now),
                )
            row = cur.execute(
                "UPDATE sessions SET contexts_used = contexts_used + %s, skills_used = skills_used + %s, "
                "updated_at = %s WHERE session_id = %s RETURNING contexts_used, skills_used",
                (len(contexts), 1 if skill else 0, now, session_id),
            ).fetchone()
        assert row is not None
        return int(row["contexts_used"]), int(row["skills_used"])

    def _usage_record(self, cur: Cursor, where: str, params: tuple[Any, ...]) -> UsageRecord:
        record = UsageRecord()
        for row in cur.execute(f"SELECT kind, uri, payload FROM usage WHERE {where} ORDER BY id", params):
            if row["kind"] == "context":
                record.contexts.append(row["uri"])
            else:
                record.skills.append(json.loads(row["payload"]))
        return record

    def usage(self, session_id: str) -> UsageRecord:
        with self._read() as cur:
            return self._usage_record(cur, "session_id = %s", (session_id,))

    def tool_records(self, session_id: str) -> list[ToolRecord]:
        with self._read() as cur:
            rows = cur.execute(
                "SELECT tool_id, tool_name, skill_uri, tool_input, tool_output, tool_status, message_id, "
                "created_at, updated_at FROM tool_calls WHERE session_id = %s ORDER BY created_at, tool_id",
                (session_id,),
            ).fetchall()
        return [_tool_record(r) for r in rows]

    # --- commit and archives ----------------------------------------------------------------------

    def commit_phase1(
        self, session_id: str, keep_recent: int, supplied: dict[str, Any], task_id: str, now: str
    ) -> Phase1Outcome:
        with self._write() as cur:
            row = self._lock_session(cur, session_id, "next_seq, archived_through, archived_tokens, commit_count")
            if row is None:
                raise NotFound(f"session {session_id} not found")
            next_seq, archived_through = row["next_seq"], row["archived_through"]
            archived_tokens, commit_count = row["archived_tokens"], row["commit_count"]
            failed = cur.execute(
                "SELECT archive_no, error FROM archives WHERE session_id = %s AND status = 'failed' "
                "ORDER BY archive_no LIMIT 1",
                (session_id,),
            ).fetchone()
            if failed:
                name = archive_id(failed["archive_no"])
                raise FailedPrecondition(
                    f"{name} of session {session_id} failed Phase 2 ({failed['error']}); call retry_archive "
                    f"(session_id={session_id}, archive_id={name}) to retry it or skip it, then commit again"
                )
            last_seq = next_seq - 1 - keep_recent
            if last_seq <= archived_through:
                return Phase1Outcome(archive_number=None, archived=0, task_id=None)
            cum_row = cur.execute(
                "SELECT cum_tokens FROM messages WHERE session_id = %s AND seq = %s", (session_id, last_seq)
            ).fetchone()
            assert cum_row is not None
            cum = cum_row["cum_tokens"]
            number = commit_count + 1
            cur.execute(
                "INSERT INTO archives (session_id, archive_no, first_seq, last_seq, message_count, tokens, "
                "status, created_at, supplied, task_id) VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s, %s)",
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
            self._insert_task(cur, task_id, "session_commit", "pending", session_id, number, now)
            cur.execute(
                "UPDATE usage SET archive_no = %s WHERE session_id = %s AND archive_no IS NULL", (number, session_id)
            )
            cur.execute(
                "UPDATE sessions SET archived_through = %s, archived_tokens = %s, commit_count = %s, "
                "last_commit_at = %s, updated_at = %s WHERE session_id = %s",
                (last_seq, cum, number, now, now, session_id),
            )
        return Phase1Outcome(archive_number=number, archived=last_seq - archived_through, task_id=task_id)

    def list_archives(self, session_id: str) -> list[ArchiveRow]:
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE session_id = %s ORDER BY archive_no",
                (session_id,),
            ).fetchall()
        return [_archive_row(r) for r in rows]

    def get_archive(self, session_id: str, number: int) -> ArchiveRow | None:
        with self._read() as cur:
            row = cur.execute(
                f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE session_id = %s AND archive_no = %s",
                (session_id, number),
            ).fetchone()
        return _archive_row(row) if row else None

    def context_snapshot(self, session_id: str) -> ContextSnapshot | None:
        with self._read() as cur:
            if not cur.execute("SELECT 1 FROM sessions WHERE session_id = %s", (session_id,)).fetchone():
                return None
            archives = [
                _archive_row(r)
                for r in cur.execute(
                    f"SELECT {_ARCHIVE_LIGHT_COLUMNS} FROM archives WHERE session_id = %s ORDER BY archive_no",
                    (session_id,),
                ).fetchall()
            ]
            latest = next((a for a in reversed(archives) if a.status == "completed"), None)
            after_seq = 0
            if latest is not None:
                full = cur.execute(
                    f"SELECT {_ARCHIVE_CONTEXT_COLUMNS} FROM archives WHERE session_id = %s AND archive_no = %s",
                    (session_id, latest.number),
                ).fetchone()
                assert full is not None
                archives[archives.index(latest)] = _archive_row(full)
                after_seq = latest.last_seq
            rows = cur.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = %s AND seq > %s ORDER BY seq",
                (session_id, after_seq),
            ).fetchall()
        return ContextSnapshot(archives=archives, messages=[_message_row(r) for r in rows])

    # --- tasks and Phase 2 ------------------------------------------------------------------------

    def _insert_task(
        self, cur: Cursor, task_id: str, task_type: str, status: str, session_id: str, number: int | None, now: str
    ) -> None:
        """A task row, stamped with its session's owner."""
        cur.execute(
            "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, updated_at, "
            "account_id, user_id) SELECT %s, %s, %s, %s, %s, %s, %s, account_id, user_id FROM sessions "
            "WHERE session_id = %s",
            (task_id, task_type, status, session_id, number, now, now, session_id),
        )

    def get_task(self, task_id: str) -> TaskRow | None:
        with self._read() as cur:
            row = cur.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = %s", (task_id,)).fetchone()
        return _task_row(row) if row else None

    def list_tasks(
        self, task_type: str | None, status: str | None, session_id: str | None, limit: int, owner: Owner | None = None
    ) -> list[TaskRow]:
        clauses: list[str] = []
        params: list[Any] = []
        if owner is not None:
            clauses += ["account_id = %s", "user_id = %s"]
            params += [owner.account_id, owner.user_id]
        for column, value in (("task_type", task_type), ("status", status), ("session_id", session_id)):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks {where} ORDER BY created_at DESC, seq DESC LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [_task_row(r) for r in rows]

    def claim_phase2(
        self, owner: str, now: str, lease_until: float, owner_is_gone: Callable[[str | None, float], bool]
    ) -> TaskRow | None:
        """Take the oldest runnable Phase 2 task: pending, or running for an owner whose lease
        ran out on the database's clock.

        Only the lease tells whether an owner is gone: `owner_is_gone` is not consulted, since
        a host name and a process id can name two live processes (containers sharing a host
        name, each its own pid 1), and a live lease renewed by its heartbeat must never be
        taken over. A dead instance's task is taken over once its lease runs out.

        A task is runnable only when every earlier archive of its session is done, so that
        Phase 2 of archive N+1 never finishes before archive N's. Only the one row claimed is
        locked; rows another instance is claiming right now are skipped, not waited for.
        """
        del owner_is_gone  # see above: on a shared database the lease alone decides
        with self._write() as cur:
            chosen = cur.execute(
                f"SELECT t.task_id, {_DB_NOW} AS db_now FROM tasks t "
                "WHERE t.task_type = 'session_commit' "
                f"AND (t.status = 'pending' OR (t.status = 'running' AND COALESCE(t.lease_until, 0) < {_DB_NOW})) "
                "AND NOT EXISTS (SELECT 1 FROM archives b WHERE b.session_id = t.session_id "
                "AND b.archive_no < t.archive_no AND b.status NOT IN ('completed', 'skipped')) "
                "ORDER BY t.created_at, t.seq LIMIT 1 FOR UPDATE OF t SKIP LOCKED"
            ).fetchone()
            if chosen is None:
                return None
            db_now = chosen["db_now"]
            # The engine's lease bounds how long the heartbeat may keep renewing this claim.
            hard_until = db_now + max(0.0, lease_until - time.time())
            claimed = cur.execute(
                f"UPDATE tasks SET status = 'running', owner = %s, lease_until = %s, updated_at = %s, "
                f"attempts = attempts + 1 WHERE task_id = %s RETURNING {_TASK_COLUMNS}",
                (owner, min(db_now + self._lease_seconds, hard_until), now, chosen["task_id"]),
            ).fetchone()
        assert claimed is not None
        with self._claimed_lock:
            self._claimed[claimed["task_id"]] = (owner, hard_until)
        return _task_row(claimed)

    def previous_overview(self, session_id: str, number: int) -> str:
        """The overview of the latest completed archive before archive `number`."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT overview FROM archives WHERE session_id = %s AND archive_no < %s AND status = 'completed' "
                "ORDER BY archive_no DESC LIMIT 1",
                (session_id, number),
            ).fetchone()
        return str(row["overview"]) if row else ""

    def release_phase2(self, task: TaskRow, now: str) -> None:
        """Give a claimed task back to the queue (its owner could not finish it)."""
        self._forget_claim(task.task_id)
        with self._write() as cur:
            cur.execute(
                "UPDATE tasks SET status = 'pending', owner = NULL, lease_until = NULL, updated_at = %s "
                "WHERE task_id = %s AND status = 'running' AND owner = %s",
                (now, task.task_id, task.owner),
            )

    def _owns(self, cur: Cursor, task: TaskRow) -> bool:
        """Lock the task and say whether `task.owner` still holds its claim."""
        current = cur.execute(
            "SELECT status, owner FROM tasks WHERE task_id = %s FOR UPDATE", (task.task_id,)
        ).fetchone()
        return current is not None and current["status"] == "running" and current["owner"] == task.owner

    def finish_phase2(self, task: TaskRow, output: Phase2Output, now: str) -> bool:
        """Write the summaries, the memory diff and the `.done` marker at once. False if the
        task lost its claim meanwhile (the session was deleted, or another owner took over)."""
        renderings = _dumps([[r.tokens, r.text] for r in output.overview_renderings])
        overview = output.overview_renderings[0].text if output.overview_renderings else ""
        try:
            with self._write() as cur:
                self._lock_session(cur, task.session_id)
                if not self._owns(cur, task):
                    return False
                cur.execute(
                    "UPDATE archives SET status = 'completed', done_at = %s, abstract = %s, abstract_tokens = %s, "
                    "overview = %s, overview_renderings = %s, memory_diff = %s, error = NULL "
                    "WHERE session_id = %s AND archive_no = %s AND status = 'pending'",
                    (
                        now,
                        _text(output.abstract),
                        output.abstract_tokens,
                        _text(overview),
                        renderings,
                        _dumps(output.memory_diff),
                        task.session_id,
                        task.archive_number,
                    ),
                )
                if not cur.rowcount:
                    cur.execute(
                        "UPDATE tasks SET status = 'failed', error = 'archive no longer pending', updated_at = %s, "
                        "owner = NULL WHERE task_id = %s",
                        (now, task.task_id),
                    )
                    return False
                self._apply_memory_writes(
                    cur,
                    output.account_id,
                    output.memory_writes,
                    {"session_id": task.session_id, "archive_id": archive_id(task.archive_number or 0)},
                    now,
                )
                used = {
                    r["uri"]
                    for r in cur.execute(
                        "SELECT uri FROM usage WHERE session_id = %s AND archive_no = %s AND kind = 'context'",
                        (task.session_id, task.archive_number),
                    ).fetchall()
                }
                # Each context counts once per archive, and only if this session's owner may see it.
                used = {uri for uri in used if output.may_use(uri)}
                for uri in sorted(used):
                    cur.execute(
                        "INSERT INTO context_usage (account_id, uri, active_count, last_used_at) "
                        "VALUES (%s, %s, 1, %s) ON CONFLICT (account_id, uri) DO UPDATE SET "
                        "active_count = context_usage.active_count + 1, last_used_at = excluded.last_used_at",
                        (output.account_id, uri, now),
                    )
                result = {**output.result, "active_count_updated": len(used)}
                self._add_memory_counts(cur, task.session_id, output.memories_extracted)
                cur.execute(
                    "UPDATE sessions SET llm_prompt_tokens = llm_prompt_tokens + %s, "
                    "llm_completion_tokens = llm_completion_tokens + %s WHERE session_id = %s",
                    (output.llm_prompt_tokens, output.llm_completion_tokens, task.session_id),
                )
                cur.execute(
                    "UPDATE tasks SET status = 'completed', result = %s, error = NULL, updated_at = %s, "
                    "owner = NULL, lease_until = NULL WHERE task_id = %s",
                    (_dumps(result), now, task.task_id),
                )
            return True
        finally:
            self._forget_claim(task.task_id)

    def _add_memory_counts(self, cur: Cursor, session_id: str, counts: dict[str, int]) -> None:
        row = cur.execute("SELECT memories_extracted FROM sessions WHERE session_id = %s", (session_id,)).fetchone()
        totals: dict[str, int] = json.loads(row["memories_extracted"]) if row else {}
        for category in MEMORY_CATEGORIES:
            totals[category] = totals.get(category, 0) + counts.get(category, 0)
        cur.execute("UPDATE sessions SET memories_extracted = %s WHERE session_id = %s", (_dumps(totals), session_id))

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
        with self._write() as cur:
            self._lock_session(cur, session_id)
            self._apply_memory_writes(cur, account_id, writes, {"session_id": session_id, "task_id": task_id}, now)
            self._add_memory_counts(cur, session_id, counts)
            cur.execute(
                "UPDATE sessions SET llm_prompt_tokens = llm_prompt_tokens + %s, "
                "llm_completion_tokens = llm_completion_tokens + %s WHERE session_id = %s",
                (*llm_tokens, session_id),
            )
            self._insert_task(cur, task_id, "session_extract", "completed", session_id, None, created_at)
            cur.execute(
                "UPDATE tasks SET updated_at = %s, result = %s WHERE task_id = %s", (now, _dumps(result), task_id)
            )

    def fail_extract(self, session_id: str, task_id: str, error: str, created_at: str, now: str) -> None:
        with self._write() as cur:
            self._lock_session(cur, session_id)
            self._insert_task(cur, task_id, "session_extract", "failed", session_id, None, created_at)
            cur.execute("UPDATE tasks SET updated_at = %s, error = %s WHERE task_id = %s", (now, _text(error), task_id))

    def fail_phase2(self, task: TaskRow, error: str, now: str) -> None:
        self._forget_claim(task.task_id)
        with self._write() as cur:
            self._lock_session(cur, task.session_id)
            cur.execute(
                "UPDATE tasks SET status = 'failed', error = %s, updated_at = %s, owner = NULL, lease_until = NULL "
                "WHERE task_id = %s AND status = 'running' AND owner IS NOT DISTINCT FROM %s",
                (_text(error), now, task.task_id, task.owner),
            )
            if not cur.rowcount:
                return  # someone else owns it now; their outcome stands
            cur.execute(
                "UPDATE archives SET status = 'failed', error = %s "
                "WHERE session_id = %s AND archive_no = %s AND status = 'pending' AND task_id = %s",
                (_text(error), task.session_id, task.archive_number, task.task_id),
            )

    def _failed_archive(self, cur: Cursor, session_id: str, number: int) -> None:
        self._lock_session(cur, session_id)
        row = cur.execute(
            "SELECT status FROM archives WHERE session_id = %s AND archive_no = %s", (session_id, number)
        ).fetchone()
        if row is None:
            raise NotFound(f"{archive_id(number)} of session {session_id} not found")
        if row["status"] != "failed":
            raise FailedPrecondition(
                f"{archive_id(number)} of session {session_id} is {row['status']}, not failed; only a failed "
                "archive can be retried or skipped"
            )

    def retry_archive(self, session_id: str, number: int, task_id: str, now: str) -> None:
        with self._write() as cur:
            self._failed_archive(cur, session_id, number)
            cur.execute(
                "UPDATE archives SET status = 'pending', error = NULL, task_id = %s "
                "WHERE session_id = %s AND archive_no = %s",
                (task_id, session_id, number),
            )
            self._insert_task(cur, task_id, "session_commit", "pending", session_id, number, now)

    def skip_archive(self, session_id: str, number: int, now: str) -> None:
        with self._write() as cur:
            self._failed_archive(cur, session_id, number)
            cur.execute(
                "UPDATE archives SET status = 'skipped', done_at = %s WHERE session_id = %s AND archive_no = %s",
                (now, session_id, number),
            )

    def archive_usage(self, session_id: str, number: int) -> UsageRecord:
        with self._read() as cur:
            return self._usage_record(cur, "session_id = %s AND archive_no = %s", (session_id, number))

    # --- long-term memories ------------------------------------------------------------------------

    def memories_by_uri(self, account_id: str, uris: list[str]) -> dict[str, StoredMemory]:
        if not uris:
            return {}
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_MEMORY_COLUMNS} FROM {_MEMORY_FROM} WHERE m.account_id = %s AND m.uri = ANY(%s)",
                (account_id, list(uris)),
            ).fetchall()
        return {row["uri"]: _memory_row(row) for row in rows}

    def memories_in_category(self, account_id: str, scope: str, owner_id: str, category: str) -> list[StoredMemory]:
        return self.list_memories(account_id, scope, owner_id, category, None)

    def list_memories(
        self, account_id: str, scope: str, owner_id: str, category: str | None, limit: int | None
    ) -> list[StoredMemory]:
        clause = " AND m.category = %s" if category else ""
        params: tuple[Any, ...] = (account_id, scope, owner_id, *((category,) if category else ()))
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_MEMORY_COLUMNS} FROM {_MEMORY_FROM} WHERE m.account_id = %s AND m.scope = %s "
                f"AND m.owner_id = %s{clause} ORDER BY m.category, m.key LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [_memory_row(r) for r in rows]

    def _apply_memory_writes(
        self, cur: Cursor, account_id: str, writes: list[MemoryWrite], source: dict[str, Any], now: str
    ) -> None:
        """Apply planned writes; any that was planned against a stale version aborts them all.

        The version check is in the UPDATE itself: a concurrent writer's commit is seen
        after its row lock is released, so two instances never both update from one version.
        Writes go in URI order, so that two transactions lock shared memories in one order.
        """
        for write in sorted(writes, key=lambda w: w.memory.uri):
            memory = write.memory
            values = (
                _text_or_none(memory.name), _text(memory.abstract), _text(memory.overview), _text(memory.content),
                _dumps(memory.stats),
            )  # fmt: skip
            if write.action == "add":
                cur.execute(
                    "INSERT INTO memories (account_id, uri, scope, owner_id, category, key, name, abstract, "
                    "overview, content, stats, created_at, updated_at, source) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (account_id, uri) DO NOTHING",
                    (account_id, memory.uri, memory.scope, memory.owner_id, memory.category, memory.key,
                     *values, now, now, _dumps(source)),
                )  # fmt: skip
                if not cur.rowcount:
                    raise Conflict(f"memory {memory.uri} was created meanwhile")
            else:
                cur.execute(
                    "UPDATE memories SET name = %s, abstract = %s, overview = %s, content = %s, stats = %s, "
                    "version = version + 1, updated_at = %s, source = %s "
                    "WHERE account_id = %s AND uri = %s AND version = %s",
                    (*values, now, _dumps(source), account_id, memory.uri, write.expected_version),
                )
                if not cur.rowcount:
                    raise Conflict(f"memory {memory.uri} changed meanwhile")

    def search_memories(
        self, account_id: str, owners: dict[str, str], match: str, category: str | None, limit: int
    ) -> list[tuple[StoredMemory, float]]:
        """Ranked full-text search (name and abstract weigh most); use breaks ties.

        `match` is the engine's query: quoted words joined by OR, which is also
        `websearch_to_tsquery` syntax, so it means the same here as in FTS5.
        """
        clause = " AND m.category = %s" if category else ""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_MEMORY_COLUMNS}, ts_rank({_RANK_WEIGHTS}, m.search, q.query) AS score "
                f"FROM {_MEMORY_FROM}, websearch_to_tsquery('english', %s) AS q(query) "
                "WHERE m.search @@ q.query AND m.account_id = %s "
                "AND ((m.scope = 'user' AND m.owner_id = %s) OR (m.scope = 'agent' AND m.owner_id = %s))"
                f"{clause} ORDER BY score DESC, active_count DESC, m.uri LIMIT %s",
                (match, account_id, owners["user"], owners["agent"], *((category,) if category else ()), limit),
            ).fetchall()
        return [(_memory_row(r), float(r["score"])) for r in rows]

    # --- export and import ---------------------------------------------------------------------------

    @contextmanager
    def export_tree(self) -> Iterator[TreeRecords]:
        """Everything, read in one snapshot: instances may keep writing meanwhile, and the
        export still shows one moment."""
        with self._read() as cur:
            yield _PostgresTreeRecords(cur)

    def import_tree(self, records: TreeRecords, replace: bool, now: str) -> TransferCounts:
        counts = dict.fromkeys(
            ("sessions", "messages", "archives", "tool_records", "tasks", "memories", "context_usage"), 0
        )
        with self._write() as cur:
            for dump in records.sessions():
                self._import_session(cur, dump, replace, now)
                counts["sessions"] += 1
                counts["messages"] += len(dump.messages)
                counts["archives"] += len(dump.archives)
                counts["tool_records"] += len(dump.tools)
            for task in records.tasks():
                self._import_task(cur, task, replace)
                counts["tasks"] += 1
            for memory in records.memories():
                self._import_memory(cur, memory, replace)
                counts["memories"] += 1
            for usage in records.context_usage():
                # Without replace, counts add up: the contexts were used in both places.
                cur.execute(
                    "INSERT INTO context_usage (account_id, uri, active_count, last_used_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (account_id, uri) DO UPDATE SET "
                    + (
                        "active_count = excluded.active_count, last_used_at = excluded.last_used_at"
                        if replace
                        else "active_count = context_usage.active_count + excluded.active_count, last_used_at = "
                        "GREATEST(COALESCE(context_usage.last_used_at, ''), COALESCE(excluded.last_used_at, ''))"
                    ),
                    (usage.account_id, usage.uri, usage.active_count, usage.last_used_at),
                )
                counts["context_usage"] += 1
        return TransferCounts(**counts)

    def _import_session(self, cur: Cursor, dump: SessionDump, replace: bool, now: str) -> None:
        row = dump.session
        session_id = row.session_id
        if self._lock_session(cur, session_id) is not None:
            if not replace:
                raise AlreadyExists(f"session {session_id} already exists here; import with --replace to overwrite it")
            cur.execute("DELETE FROM sessions WHERE session_id = %s", (session_id,))
            for table in ("messages", "archives", "tool_calls", "usage"):
                cur.execute(f"DELETE FROM {table} WHERE session_id = %s", (session_id,))
            cur.execute(
                "UPDATE tasks SET status = 'failed', error = 'session replaced by an import before the task finished', "
                "updated_at = %s, owner = NULL, lease_until = NULL WHERE session_id = %s "
                "AND status IN ('pending', 'running')",
                (now, session_id),
            )
        cum = 0
        cum_at: dict[int, int] = {0: 0}
        message_rows = []
        for stored in dump.messages:
            cum += stored.tokens
            cum_at[stored.seq] = cum
            message = stored.message
            message_rows.append(
                (
                    session_id, stored.seq, message.id, message.role,
                    _dumps([p.model_dump(mode="json") for p in message.parts]), message.created_at, stored.tokens, cum,
                )
            )  # fmt: skip
        cur.executemany(
            "INSERT INTO messages (session_id, seq, message_id, role, parts, created_at, tokens, cum_tokens) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            message_rows,
        )
        cur.executemany(
            f"INSERT INTO archives ({_ARCHIVE_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})",
            [
                (
                    session_id, archive.number, archive.first_seq, archive.last_seq, archive.message_count,
                    archive.tokens, archive.status, archive.created_at, archive.done_at, _text(archive.abstract),
                    archive.abstract_tokens, _text(archive.overview),
                    _dumps([[r.tokens, r.text] for r in archive.overview_renderings]),
                    _dumps(archive.memory_diff) if archive.memory_diff is not None else None,
                    _dumps(archive.supplied), _text_or_none(archive.error), archive.task_id,
                )
                for archive in dump.archives
            ],
        )  # fmt: skip
        archived_through = dump.archives[-1].last_seq if dump.archives else 0
        cur.execute(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join(['%s'] * 18)})",
            (
                session_id, row.owner.account_id, row.owner.user_id, row.owner.agent_id, row.created_at,
                row.updated_at, _dumps(row.metadata), len(dump.messages) + 1, archived_through, cum,
                cum_at.get(archived_through, 0), row.commit_count, row.last_commit_at, row.llm_prompt_tokens,
                row.llm_completion_tokens, _dumps(row.memories_extracted), row.contexts_used, row.skills_used,
            ),
        )  # fmt: skip
        cur.executemany(
            "INSERT INTO tool_calls (session_id, tool_id, tool_name, skill_uri, tool_input, tool_output, "
            "tool_status, message_id, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    session_id, tool.tool_id, _text(tool.tool_name), _text_or_none(tool.skill_uri),
                    _dumps(tool.tool_input), _text(tool.tool_output), tool.tool_status, tool.message_id,
                    tool.created_at, tool.updated_at,
                )
                for tool in dump.tools
            ],
        )  # fmt: skip
        cur.executemany(
            "INSERT INTO usage (session_id, kind, uri, payload, created_at, archive_no) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (session_id, e.kind, _text(e.uri), _dumps(e.payload), e.created_at, e.archive_number)
                for e in dump.usage
            ],
        )  # fmt: skip

    def _import_task(self, cur: Cursor, task: TaskRow, replace: bool) -> None:
        if cur.execute("SELECT 1 FROM tasks WHERE task_id = %s FOR UPDATE", (task.task_id,)).fetchone():
            if not replace:
                raise AlreadyExists(f"task {task.task_id} already exists here; import with --replace to overwrite it")
            cur.execute("DELETE FROM tasks WHERE task_id = %s", (task.task_id,))
        # No lease: a task that was running when exported is taken over by the next worker.
        cur.execute(
            "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, "
            "updated_at, result, error, owner, lease_until, attempts, account_id, user_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s)",
            (
                task.task_id, task.task_type, task.status, task.session_id, task.archive_number, task.created_at,
                task.updated_at, _dumps(task.result) if task.result is not None else None, _text_or_none(task.error),
                task.owner,
                task.attempts, task.account_id, task.user_id,
            ),
        )  # fmt: skip

    def _import_memory(self, cur: Cursor, dump: MemoryDump, replace: bool) -> None:
        memory = dump.memory
        found = cur.execute(
            "SELECT id FROM memories WHERE account_id = %s AND uri = %s FOR UPDATE", (dump.account_id, memory.uri)
        ).fetchone()
        if found is not None:
            if not replace:
                raise AlreadyExists(f"memory {memory.uri} already exists here; import with --replace to overwrite it")
            cur.execute("DELETE FROM memories WHERE id = %s", (found["id"],))
        cur.execute(
            "INSERT INTO memories (account_id, uri, scope, owner_id, category, key, name, abstract, overview, "
            "content, stats, version, created_at, updated_at, source) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                dump.account_id, memory.uri, memory.scope, memory.owner_id, memory.category, memory.key,
                _text_or_none(memory.name), _text(memory.abstract), _text(memory.overview), _text(memory.content),
                _dumps(memory.stats), memory.version,
                memory.created_at, memory.updated_at, _dumps(dump.source),
            ),
        )  # fmt: skip


class _PostgresTreeRecords:
    """The records of one read transaction (`PostgresStore.export_tree`)."""

    def __init__(self, cur: Cursor) -> None:
        self._cur = cur

    def sessions(self) -> Iterator[SessionDump]:
        cur = self._cur
        ids = [
            r["session_id"]
            for r in cur.execute("SELECT session_id FROM sessions ORDER BY created_at, session_id").fetchall()
        ]
        for session_id in ids:
            row = cur.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = %s", (session_id,)
            ).fetchone()
            assert row is not None
            messages = cur.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = %s ORDER BY seq", (session_id,)
            ).fetchall()
            archives = cur.execute(
                f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE session_id = %s ORDER BY archive_no", (session_id,)
            ).fetchall()
            tools = cur.execute(
                "SELECT tool_id, tool_name, skill_uri, tool_input, tool_output, tool_status, message_id, "
                "created_at, updated_at FROM tool_calls WHERE session_id = %s ORDER BY created_at, tool_id",
                (session_id,),
            ).fetchall()
            usage = cur.execute(
                "SELECT kind, uri, payload, created_at, archive_no FROM usage WHERE session_id = %s ORDER BY id",
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
        for row in self._cur.execute(f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY seq").fetchall():
            yield _task_row(row)

    def memories(self) -> Iterator[MemoryDump]:
        for row in self._cur.execute(
            f"SELECT {_MEMORY_COLUMNS}, m.account_id, m.source FROM {_MEMORY_FROM} ORDER BY m.account_id, m.uri"
        ).fetchall():
            yield MemoryDump(account_id=row["account_id"], memory=_memory_row(row), source=json.loads(row["source"]))

    def context_usage(self) -> Iterator[ContextUsage]:
        for row in self._cur.execute(
            "SELECT account_id, uri, active_count, last_used_at FROM context_usage ORDER BY account_id, uri"
        ).fetchall():
            yield ContextUsage(row["account_id"], row["uri"], row["active_count"], row["last_used_at"])
