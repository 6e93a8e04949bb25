"""The PostgreSQL store: many server instances, on many machines, on one database.

Same tables, same answers as the embedded SQLite store (store/sqlite.py); what changes
is how concurrency is made safe when the writers are other machines:

- Every write that touches a session takes that session's row lock first
  (`SELECT ... FOR UPDATE`), so appends to one session are numbered in one order and
  never lost, and archive numbers are handed out one at a time.
- The Phase 2 queue is claimed with `FOR UPDATE SKIP LOCKED`: instances polling at once
  each take a different task, and none waits for another's claim.
- A claim is a lease on the database's clock, renewed by a heartbeat while this process
  works on the task. A process id means nothing on another machine; a lease that nobody
  renews does: when an instance dies, its lease runs out and another instance takes the
  task over. The old owner, should it come back, finds it no longer owns the task and its
  late result is dropped (every Phase 2 write is compare-and-set on the owner).
- Search is PostgreSQL full-text search: a weighted `tsvector` with a GIN index.

Everything else is the shared SQL store (store/sql.py), written with `?` placeholders,
which a transaction here takes as psycopg's `%s`.

Connections come from a psycopg pool (autocommit, with explicit BEGIN/COMMIT, as in the
SQLite store). psycopg is imported only when a `postgresql://` store is configured.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from viking_mcp.config import redacted
from viking_mcp.errors import Conflict, Internal, InvalidArgument, ResourceExhausted, Unavailable, VikingError
from viking_mcp.memory.search import Term, folded, indexed_archive, indexed_message
from viking_mcp.models import Message
from viking_mcp.store.base import RecallRow, TaskRow
from viking_mcp.store.pg_migrations import MIGRATIONS, SCHEMA_VERSION
from viking_mcp.store.sql import (
    MEMORY_COLUMNS,
    MEMORY_FROM,
    MESSAGE_INSERT,
    QUEUED_TENANTS,
    RUNNABLE,
    TASK_COLUMNS,
    MaybeText,
    SQLStore,
    Tx,
    message_row,
    task_row,
    tenant_head,
)

logger = logging.getLogger(__name__)

Cursor = psycopg.Cursor[DictRow]

# Seconds since the epoch, on the database's clock.
_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
_MIGRATION_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('viking-mcp migrate ' || current_schema())) AS got"
# Search weights for name, abstract, overview and content (ts_rank's order is D, C, B, A).
_RANK_WEIGHTS = "'{0.25, 0.375, 0.75, 1.0}'"
# Recall's tsvector of a text; a message's is written by the INSERT that stores it.
_VECTOR = "to_tsvector('english'::regconfig, ?)"
_MESSAGE_INSERT_INDEXED = MESSAGE_INSERT.replace(") VALUES (", ", search) VALUES (").replace("?)", f"?, {_VECTOR})")


@lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class _Tx:
    """A transaction's cursor, taking the shared SQL's `?` placeholders."""

    __slots__ = ("cur",)

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self.cur.execute(_placeholders(sql), parameters or None)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        self.cur.executemany(_placeholders(sql), parameters)


def _translate(exc: Exception) -> VikingError:
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


class PostgresStore(SQLStore):
    """The `Store` interface over one PostgreSQL database (or one schema of it)."""

    _LOCK = " FOR UPDATE"
    _IS = "IS NOT DISTINCT FROM"
    _GREATEST = "GREATEST"
    _TASK_ORDER = "seq"
    # ts_rank, name and abstract weighing most; `match` is also websearch_to_tsquery syntax.
    _SEARCH = (
        f"SELECT {MEMORY_COLUMNS}, ts_rank({_RANK_WEIGHTS}, m.search, q.query) AS score "
        f"FROM {MEMORY_FROM}, websearch_to_tsquery('english', ?) AS q(query) "
        "WHERE m.search @@ q.query"
    )

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
    def _transaction(self, begin: str) -> Iterator[_Tx]:
        if self._closed:
            raise Unavailable("the store is closed")
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                cur.execute(begin)
                try:
                    yield _Tx(cur)
                    cur.execute("COMMIT")
                except BaseException:
                    with suppress(psycopg.Error):
                        conn.rollback()
                    raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise _translate(exc) from exc

    def _write(self) -> AbstractContextManager[_Tx]:
        """One read-committed write transaction: row locks, not snapshots, keep it correct."""
        return self._transaction("BEGIN")

    def _read(self) -> AbstractContextManager[_Tx]:
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
            version = int(row["version"]) if row else 0
            if self._upgrade(cur, version, MIGRATIONS, redacted(self.url)):
                cur.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

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
            for task_id, (owner, hard_until) in claimed.items():
                try:  # one short transaction per task: a renewal never waits on two row locks
                    with self._write() as cur:
                        cur.execute(
                            f"UPDATE tasks SET lease_until = LEAST({_DB_NOW} + ?, ?) "
                            "WHERE task_id = ? AND status = 'running' AND owner = ?",
                            (self._lease_seconds, hard_until, task_id, owner),
                        )
                except Exception:
                    logger.warning("could not renew the lease of Phase 2 task %s; retrying", task_id, exc_info=True)

    def _forget_claim(self, task_id: str) -> None:
        with self._claimed_lock:
            self._claimed.pop(task_id, None)

    def _text(self, value: MaybeText) -> MaybeText:
        """PostgreSQL text cannot hold NUL, which a message may (messages themselves are stored
        as JSON, where it is escaped and kept): in summaries, memories and tool outputs derived
        from them it becomes U+FFFD instead of failing the write."""
        return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value

    def _listing(self, tx: Tx, sql: str, params: Sequence[Any]) -> Iterable[Sequence[Any]]:
        return [tuple(row.values()) for row in tx.execute(sql, params)]

    # --- recall: a tsvector column of messages and archives, written with the row ---------------

    def _indexed(self, text: str) -> str:
        """Text as recall's tsvector is made of it: accents dropped, as SQLite's FTS5 drops them
        (the English configuration keeps them: "cafe" would not find "café"), and no NUL."""
        return str(self._text(folded(text)))

    def _insert_messages(self, tx: Tx, session: Any, rows: list[tuple[Any, ...]], messages: list[Message]) -> None:
        tx.executemany(
            _MESSAGE_INSERT_INDEXED,
            [(*row, self._indexed(indexed_message(m))) for row, m in zip(rows, messages, strict=True)],
        )

    def _index_messages(self, tx: Tx, session_id: str, session: Any, texts: list[tuple[int, str]]) -> None:
        tx.executemany(
            f"UPDATE messages SET search = {_VECTOR} WHERE session_id = ? AND seq = ?",
            [(self._indexed(text), session_id, seq) for seq, text in texts],
        )

    def _index_archive(self, tx: Tx, session_id: str, session: Any, number: int, text: str) -> None:
        tx.execute(
            f"UPDATE archives SET search = {_VECTOR} WHERE session_id = ? AND archive_no = ?",
            (self._indexed(text), session_id, number),
        )

    def search_recall(
        self,
        match: str,
        owner: tuple[str, str] | None,
        session_id: str | None,
        kinds: tuple[str, ...],
        limit: int,
        *,
        ranked: bool = True,
    ) -> list[RecallRow]:
        # Always ranked: the GIN index finds the rows either way, and ts_rank of them is cheap.
        where = " AND s.account_id = ? AND s.user_id = ?" if owner else ""
        where += " AND s.session_id = ?" if session_id else ""
        scope = [*(owner or ()), *((session_id,) if session_id else ())]
        parts, params = [], []
        if "message" in kinds:
            parts.append(
                "SELECT m.session_id, 'message' AS kind, m.seq, ts_rank(m.search, q.query) AS rank, m.message_id, "
                "m.role, m.parts, m.created_at, m.tokens, NULL AS abstract, NULL AS overview "
                "FROM messages m JOIN sessions s ON s.session_id = m.session_id, "
                "websearch_to_tsquery('english', ?) q(query) "
                f"WHERE m.search @@ q.query{where}"
            )
            params += [match, *scope]
        if "archive" in kinds:
            parts.append(
                "SELECT a.session_id, 'archive' AS kind, a.archive_no AS seq, ts_rank(a.search, q.query) AS rank, "
                "NULL, NULL, NULL, NULL, NULL, a.abstract, a.overview "
                "FROM archives a JOIN sessions s ON s.session_id = a.session_id, "
                "websearch_to_tsquery('english', ?) q(query) "
                f"WHERE a.search @@ q.query AND a.status = 'completed'{where}"
            )
            params += [match, *scope]
        if not parts:
            return []
        sql = f"SELECT * FROM ({' UNION ALL '.join(parts)}) d ORDER BY rank DESC, session_id, seq LIMIT ?"
        found = []
        with self._read() as tx:
            for row in tx.execute(sql, (*params, limit)).fetchall():
                if row["kind"] == "message":
                    text = indexed_message(message_row(row).message)
                else:
                    text = indexed_archive(row["seq"], row["abstract"], row["overview"])
                found.append(RecallRow(row["session_id"], row["kind"], row["seq"], float(row["rank"]), text))
        return found

    def recall_counts(
        self, terms: list[Term], owner: tuple[str, str] | None, session_id: str | None
    ) -> dict[str, int | None]:
        where = " AND s.session_id = ?" if session_id is not None else ""
        where += " AND s.account_id = ? AND s.user_id = ?" if owner is not None and session_id is None else ""
        scope = (session_id,) if session_id is not None else owner or ()
        counts: dict[str, int | None] = {}
        with self._read() as tx:
            for term in terms:
                row = tx.execute(
                    "SELECT numnode(q.query) AS nodes, (SELECT count(*) FROM messages m JOIN sessions s "
                    f"ON s.session_id = m.session_id WHERE m.search @@ q.query{where}) + (SELECT count(*) "
                    "FROM archives a JOIN sessions s ON s.session_id = a.session_id "
                    f"WHERE a.search @@ q.query{where}) AS n FROM plainto_tsquery('english', ?) q(query)",
                    (*scope, *scope, term.word),
                ).fetchall()[0]
                counts[term.stem] = int(row["n"]) if row["nodes"] else None  # no node: a stopword
        return counts

    def claim_phase2(
        self, owner: str, now: str, lease_until: float, owner_is_gone: Callable[[str | None, float], bool]
    ) -> TaskRow | None:
        """Take a task running for an owner whose lease ran out on the database's clock, else the
        oldest runnable task of the tenant served least recently (store/sql.py, "The Phase 2 queue").

        Only the lease tells whether an owner is gone: `owner_is_gone` is not consulted, since
        a host name and a process id can name two live processes (containers sharing a host
        name, each its own pid 1), and a live lease renewed by its heartbeat must never be
        taken over. A dead instance's task is taken over once its lease runs out.

        Only the one row claimed is locked; rows another instance is claiming right now are
        skipped, not waited for (that instance's tenant may then be served twice in a row).
        """
        del owner_is_gone  # see above: on a shared database the lease alone decides
        with self._write() as cur:
            chosen = cur.execute(
                f"SELECT t.task_id FROM tasks t WHERE t.status = 'running' AND t.task_type = 'session_commit' "
                f"AND COALESCE(t.lease_until, 0) < {_DB_NOW} AND {RUNNABLE} "
                "ORDER BY t.created_at, t.seq LIMIT 1 FOR UPDATE OF t SKIP LOCKED"
            ).fetchone()
            if chosen is None:
                for tenant in [row["tenant"] for row in cur.execute(QUEUED_TENANTS).fetchall()]:
                    head = tenant_head("t.task_id", "?", "seq") + " FOR UPDATE OF t SKIP LOCKED"
                    chosen = cur.execute(head, (tenant,)).fetchone()
                    if chosen is not None:
                        break
            if chosen is None:
                return None
            clock = cur.execute(f"SELECT {_DB_NOW} AS db_now").fetchone()
            assert clock is not None
            db_now = clock["db_now"]
            # The engine's lease bounds how long the heartbeat may keep renewing this claim.
            hard_until = db_now + max(0.0, lease_until - time.time())
            claimed = cur.execute(
                "UPDATE tasks SET status = 'running', owner = ?, lease_until = ?, updated_at = ?, "
                f"attempts = attempts + 1 WHERE task_id = ? RETURNING {TASK_COLUMNS}",
                (owner, min(db_now + self._lease_seconds, hard_until), now, chosen["task_id"]),
            ).fetchone()
            self._take_turn(cur, chosen["task_id"])
        assert claimed is not None
        with self._claimed_lock:
            self._claimed[claimed["task_id"]] = (owner, hard_until)
        return task_row(claimed)
