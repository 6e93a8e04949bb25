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

Damage: a database file that was damaged (pages zeroed or overwritten by a disk, a copy
or a sync tool) is refused when the store opens, with a coded error that names the file
and says how to recover, and the file is left as it was: `PRAGMA quick_check` reads every
page of the file through a read-only connection first (it costs about as much as reading
the file once: see `_check_not_damaged`). Damage that check cannot see (a zeroed page at
the end of a long value reads back as NUL bytes) or that appears later is met by a read:
that read answers the same coded error, and from then on the store writes nothing more
to the file, so that what is left of it can still be recovered.
"""

from __future__ import annotations

import atexit
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viking_mcp.errors import Damaged, Internal, Unavailable, VikingError
from viking_mcp.memory.search import Term, indexed_message, tenant_tag
from viking_mcp.store.base import RecallRow, TaskRow
from viking_mcp.store.migrations import MIGRATIONS, SCHEMA_VERSION
from viking_mcp.store.sql import (
    MEMORY_COLUMNS,
    MESSAGES_AFTER,
    QUEUED_TENANTS_CTE,
    RUNNABLE,
    TASK_COLUMNS,
    SQLStore,
    Tx,
    UnreadableValue,
    message_row,
    task_row,
    tenant_head,
)

# What a worker looks at for Phase 2 work (store/sql.py, "The Phase 2 queue"): first, tasks
# running for an owner that may be gone (a few at most: one per live worker, and what dead
# ones left); then each tenant's oldest runnable task (None where a tenant has none runnable),
# least recently served first. The runnable checks read only the archives_listing index.
TAKEOVER_PHASE2 = (
    "SELECT t.task_id, t.owner, t.lease_until FROM tasks t "
    f"WHERE t.status = 'running' AND t.task_type = 'session_commit' AND {RUNNABLE} ORDER BY t.created_at, t.rowid"
)
RUNNABLE_PHASE2 = (
    f"{QUEUED_TENANTS_CTE}SELECT ({tenant_head('t.task_id', 'q.tenant', 'rowid')}) AS task_id, q.tenant "
    "FROM queued q LEFT JOIN phase2_turns p ON p.tenant = q.tenant WHERE q.tenant IS NOT NULL "
    "ORDER BY COALESCE(p.last_turn, 0), q.tenant"
)


# Recall's documents (store/migrations.py, migration 6): a session's are one rowid range.
_ARCHIVE_BIT = 1 << 31
_KIND_TAGS = {"message": "qkind1", "archive": "qkind2"}


def _doc_range(doc_base: int) -> tuple[int, int]:
    return doc_base << 32, (doc_base << 32) + (1 << 32) - 1


# SQLite's primary result codes (extended codes keep them in the low byte).
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


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
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.DatabaseError) and (
        (code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB))
        or "malformed" in text
        or "not a database" in text
    ):
        return damaged(path, text)
    return Internal(f"storage error: {text}")


def damaged(path: Path, what: str) -> Damaged:
    """The error for a damaged database file: what was found, and how to recover."""
    return Damaged(
        f"the database file {path} is damaged ({what}); viking-mcp writes nothing more to it. Stop every "
        "viking-mcp using it, move it aside (with any -wal and -shm files beside it), then restore it from a "
        "backup (a copy of the file, or a tree written by `viking-mcp export`: `viking-mcp import` it) or start "
        "afresh; SQLite's shell can salvage part of a damaged file (https://sqlite.org/recovery.html)"
    )


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
# The same thread indexes the messages stored since it last did, for search, once writes
# pause for RECALL_IDLE_SECONDS (it starts after RECALL_EVERY writes), RECALL_BATCH messages
# to a transaction; a search indexes what is left first.
RECALL_EVERY = 100
RECALL_IDLE_SECONDS = 0.5
RECALL_BATCH = 500
_RECALL_ROUNDS = 10_000  # a bound, never met: each round indexes a batch or finds none left


@dataclass
class _Batch:
    """A `write_batch` under way on one thread."""

    broken: bool = False


class _Holder:
    """A thread's connection, owned by that thread's `threading.local`."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


# Every open store, so that at exit its thread stops before its connections close: a store
# never closed (a script's engine) had its connections closed by their finalizers while its
# thread was indexing for search with one of them (a segmentation fault at exit).
_OPEN: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for store in list(_OPEN):
        store.close()


class SQLiteStore(SQLStore):
    """The `Store` interface over one SQLite file."""

    _SEARCH = (  # BM25, name and abstract weighing most
        f"SELECT {MEMORY_COLUMNS}, -bm25(memories_fts, 4.0, 3.0, 1.5, 1.0) AS score "
        "FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid "
        "LEFT JOIN context_usage u ON u.account_id = m.account_id AND u.uri = m.uri "
        "WHERE memories_fts MATCH ?"
    )

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5_000, durability: str = "normal") -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._closed = False
        _OPEN.add(self)
        # This process's writers take turns here before BEGIN IMMEDIATE. SQLite has one
        # writer at a time anyway, and threads that meet its lock instead back off in its
        # busy handler (sleeps of 1, 2, 5, 10 ... ms): with 16 HTTP clients appending, most
        # of the time went to those sleeps. Another process's writers still wait in SQLite.
        self._write_turn = threading.Lock()
        self._writes = 0  # write transactions committed, to wake the checkpointer
        self._checkpoint_wanted = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_lock = threading.Lock()
        # The first damage a read met: from then on, every write is refused with it.
        self._damage: Damaged | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._check_not_damaged()
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
        with self._translated():
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
        holder = _Holder(conn)
        # Closed when its thread ends; at exit, by `close` once the store's thread has stopped.
        weakref.finalize(holder, conn.close).atexit = False
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
                if not _is_locked(exc) or time.monotonic() >= deadline:
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
        if self._damage is not None:
            raise Damaged(self._damage.message)
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
            with self._translated():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
        finally:
            self._write_turn.release()
        self._writes += 1  # not exact under threads, and need not be
        if self._writes % RECALL_EVERY == 0 or self._writes % CHECKPOINT_EVERY == 0:
            self._wake_checkpointer()

    @contextmanager
    def _savepoint(self, conn: sqlite3.Connection, batch: _Batch) -> Iterator[None]:
        if batch.broken or not conn.in_transaction:  # SQLite rolled the batch's transaction back
            batch.broken = True
            raise Unavailable("an earlier write of this batch broke its transaction; retry")
        with self._translated():
            try:
                conn.execute("SAVEPOINT one_write")
            except sqlite3.Error:
                batch.broken = True
                raise
            try:
                yield
                conn.execute("RELEASE one_write")
            except BaseException:
                try:
                    conn.execute("ROLLBACK TO one_write")
                    conn.execute("RELEASE one_write")
                except sqlite3.Error:
                    batch.broken = True  # SQLite rolled the whole transaction back
                raise

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """SQLite's errors inside, as ours; damage met inside also stops every later write."""
        try:
            yield
        except sqlite3.Error as exc:
            error = _translate(exc, self.path)
            if isinstance(error, Damaged):
                self._damage = self._damage or error
            raise error from exc
        except UnreadableValue as exc:
            error = damaged(self.path, exc.what)
            self._damage = self._damage or error
            raise error from exc

    def _check_not_damaged(self) -> None:
        """Refuse a database file that is damaged, before anything writes to it.

        `PRAGMA quick_check` walks every page of every table and index (not the cross-check
        of indexes against tables that `integrity_check` adds): about as long as reading the
        file once. With the file in the page cache, on a busy 2-core machine: 16 ms for
        10,000 messages (6 MB), 73 ms for 100,000 (62 MB).
        It runs on a read-only connection of its own, which never writes to the file (a
        read-write connection would switch the journal mode or checkpoint a WAL into it),
        unless the file needs SQLite's own crash recovery first, which only a read-write
        connection may run: a process killed while it created the database leaves a hot
        rollback journal, before the database is ever switched to WAL.
        """
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return  # a new database
        with self._translated():
            try:
                found = self._quick_check(f"{self.path.resolve().as_uri()}?mode=ro")
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF != _SQLITE_READONLY:
                    raise
                found = self._quick_check(self.path.resolve().as_uri())
        if found != ["ok"]:
            # One line: SQLite puts a "*** in database main ***" header and newlines in its report.
            problems = [p.strip() for text in found for p in text.splitlines() if p.strip() and "***" not in p]
            self._damage = damaged(self.path, "quick_check: " + "; ".join(problems[:3]))
            raise self._damage

    def _quick_check(self, uri: str) -> list[str]:
        conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout_ms / 1000)
        try:
            return [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
        finally:
            conn.close()

    def _wake_checkpointer(self) -> None:
        with self._checkpointer_lock:
            if self._checkpointer is None:
                self._checkpointer = threading.Thread(
                    target=self._checkpoint_loop, name="viking-checkpoint", daemon=True
                )
                self._checkpointer.start()
        self._checkpoint_wanted.set()

    def _checkpoint_loop(self) -> None:
        checkpointed = indexed = 0
        while True:
            # Woken by writes; when they pause for RECALL_IDLE_SECONDS, the messages they stored
            # are indexed for search (never beside a burst of appends, whose time it would take).
            woke = self._checkpoint_wanted.wait(RECALL_IDLE_SECONDS if self._writes != indexed else None)
            self._checkpoint_wanted.clear()
            if self._closed:
                return
            # Failing, each leaves its work to the next time (to a call's own checkpoint, to a
            # search's own catching up).
            if self._writes - checkpointed >= CHECKPOINT_EVERY:
                checkpointed = self._writes
                with suppress(sqlite3.Error, VikingError):
                    self._connect().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not woke and self._writes != indexed:
                indexed = self._writes
                with suppress(sqlite3.Error, VikingError):
                    self.catch_up_recall(yielding=True)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        with self._translated():
            conn.execute("BEGIN")
            try:
                yield conn
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
            if self._upgrade(conn, conn.execute("PRAGMA user_version").fetchone()[0], MIGRATIONS, str(self.path)):
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
            checkpointer.join(5.0)  # what it is doing in SQLite finishes before its connection closes
        for holder in list(self._holders):
            with suppress(sqlite3.Error):
                holder.conn.close()

    # --- the dialect: listing, full-text index, Phase 2 claim ----------------------------------

    def _listing(self, tx: Tx, sql: str, params: Sequence[Any]) -> Iterable[Sequence[Any]]:
        assert isinstance(tx, sqlite3.Connection)
        listing = tx.cursor()
        listing.row_factory = None  # plain tuples: cheaper than sqlite3.Row
        return listing.execute(sql, params)

    def _index_memory(self, tx: Tx, account_id: str, uri: str, present: bool) -> None:
        """memories_fts is kept by hand, in the memory's transaction (rowid = memories.id)."""
        key = (account_id, uri)
        tx.execute(
            "DELETE FROM memories_fts WHERE rowid IN (SELECT id FROM memories WHERE account_id = ? AND uri = ?)", key
        )
        if present:
            tx.execute(
                "INSERT INTO memories_fts (rowid, name, abstract, overview, content) SELECT id, COALESCE(name, ''), "
                "abstract, overview, content FROM memories WHERE account_id = ? AND uri = ?",
                key,
            )

    _RECALL_KEY = ", doc_base"

    def _index_messages(self, tx: Tx, session_id: str, session: Any, texts: list[tuple[int, str]]) -> None:
        base = session["doc_base"] << 32
        tags = f"{tenant_tag(session['account_id'], session['user_id'])} {_KIND_TAGS['message']}"
        rows = [(base | seq, text, tags) for seq, text in texts]
        tx.executemany("INSERT INTO recall_fts (rowid, body, tags) VALUES (?, ?, ?)", rows)

    def catch_up_recall(self, *, yielding: bool = False) -> None:
        """Index the messages stored since their sessions were last indexed, RECALL_BATCH at a
        time: their text is made outside the write lock, which each batch then holds for
        a few milliseconds. A search runs it before it reads the index; the checkpointer
        thread when writes pause (`yielding`: it stops at the next batch once others write
        again, and goes on at the next pause)."""
        others = self._writes
        batch = RECALL_BATCH // 5 if yielding else RECALL_BATCH  # a burst that resumes waits for less
        for _ in range(_RECALL_ROUNDS):
            if yielding and (self._writes != others or self._closed):
                return
            with self._read() as tx:
                behind = tx.execute(
                    "SELECT session_id, indexed_through, next_seq, doc_base FROM sessions "
                    "WHERE indexed_through < next_seq - 1 LIMIT ?",
                    (batch,),
                ).fetchall()
                # (session, its doc_base, the seq it is indexed through once these are, their texts)
                work: list[tuple[str, int, int, list[tuple[int, str]]]] = []
                left = batch
                for session in behind:
                    if left <= 0:
                        break
                    rows = tx.execute(
                        f"{MESSAGES_AFTER} LIMIT ?", (session["session_id"], session["indexed_through"], left)
                    ).fetchall()
                    texts = [(m.seq, indexed_message(m.message)) for m in map(message_row, rows)]
                    through = texts[-1][0] if len(texts) == left else session["next_seq"] - 1  # all it has
                    work.append((session["session_id"], session["doc_base"], through, texts))
                    left -= len(texts)
            if not work:
                return
            with self._write() as tx:
                for session_id, doc_base, through, texts in work:
                    now = tx.execute(
                        f"SELECT account_id, user_id, indexed_through{self._RECALL_KEY} FROM sessions "
                        "WHERE session_id = ?",
                        (session_id,),
                    ).fetchone()
                    if now is None or now["doc_base"] != doc_base:
                        continue  # deleted (or deleted and made again) meanwhile
                    self._index_messages(tx, session_id, now, [t for t in texts if t[0] > now["indexed_through"]])
                    tx.execute(
                        "UPDATE sessions SET indexed_through = MAX(indexed_through, ?) WHERE session_id = ?",
                        (through, session_id),
                    )
            others = self._writes  # this batch's own write counted
            if len(behind) < batch and left > 0:
                return

    def _index_archive(self, tx: Tx, session_id: str, session: Any, number: int, text: str) -> None:
        rowid = session["doc_base"] << 32 | _ARCHIVE_BIT | number
        tags = f"{tenant_tag(session['account_id'], session['user_id'])} {_KIND_TAGS['archive']}"
        tx.execute("DELETE FROM recall_fts WHERE rowid = ?", (rowid,))
        tx.execute("INSERT INTO recall_fts (rowid, body, tags) VALUES (?, ?, ?)", (rowid, text, tags))

    def _unindex_session(self, tx: Tx, session_id: str) -> None:
        row = tx.execute("SELECT doc_base FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        if row is not None:
            tx.execute("DELETE FROM recall_fts WHERE rowid BETWEEN ? AND ?", _doc_range(row["doc_base"]))

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
        # The owner and the kind are tokens of the `tags` column, which ranking weighs at 0:
        # FTS5 intersects them with the words, and a session is a rowid range it seeks to.
        filters = [f'tags : "{tenant_tag(*owner)}"'] if owner is not None else []
        filters += [f'tags : "{_KIND_TAGS[kind]}"' for kind in kinds] if len(kinds) == 1 else []
        sql = "SELECT rowid, body, bm25(recall_fts, 1.0, 0.0) AS score FROM recall_fts WHERE recall_fts MATCH ?"
        params: list[Any] = [" AND ".join([*filters, f"body : ({match})"])]
        with self._read() as tx:
            if session_id is not None:
                session = tx.execute("SELECT doc_base FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
                if session is None:
                    return []
                sql += " AND rowid BETWEEN ? AND ?"
                params += _doc_range(session["doc_base"])
            # In rowid order FTS5 stops at the limit, and ranks only the rows it returns.
            order = "score" if ranked else "rowid DESC"
            rows = tx.execute(f"{sql} ORDER BY {order} LIMIT ?", (*params, limit)).fetchall()
            bases = sorted({row["rowid"] >> 32 for row in rows})
            sessions = {
                s["doc_base"]: s
                for s in tx.execute(
                    f"SELECT session_id, account_id, user_id, doc_base FROM sessions "
                    f"WHERE doc_base IN ({', '.join('?' * len(bases))})",
                    bases,
                )
            }
        found = []
        for row in rows:
            session = sessions.get(row["rowid"] >> 32)
            if session is None or (owner is not None and (session["account_id"], session["user_id"]) != owner):
                continue  # deleted meanwhile, or (never: the tag says whose) another user's
            low = row["rowid"] & 0xFFFFFFFF
            kind = "archive" if low & _ARCHIVE_BIT else "message"
            found.append(RecallRow(session["session_id"], kind, low & (_ARCHIVE_BIT - 1), -row["score"], row["body"]))
        return found

    def recall_counts(
        self, terms: list[Term], owner: tuple[str, str] | None, session_id: str | None
    ) -> dict[str, int | None]:
        with self._read() as tx:
            if session_id is None and owner is None:
                # fts5vocab reads a term's whole posting list to count it: a rare word costs next
                # to nothing, one in every document a millisecond per 50,000.
                wanted = [t.stem for t in terms]
                counts = dict(
                    tx.execute(
                        f"SELECT term, doc FROM recall_vocab WHERE term IN ({', '.join('?' * len(wanted))})", wanted
                    ).fetchall()
                )
                return {stem: counts.get(stem, 0) for stem in wanted}
            sql = "SELECT count(*) AS n FROM recall_fts WHERE recall_fts MATCH ?"
            scope: tuple[Any, ...] = ()
            if session_id is not None:
                session = tx.execute("SELECT doc_base FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
                if session is None:
                    return {t.stem: 0 for t in terms}
                sql += " AND rowid BETWEEN ? AND ?"
                scope = _doc_range(session["doc_base"])
                owned = ""
            else:
                assert owner is not None
                owned = f'tags : "{tenant_tag(*owner)}" AND '
            return {t.stem: tx.execute(sql, (f'{owned}body : "{t.word}"', *scope)).fetchone()["n"] for t in terms}

    def claim_phase2(
        self, owner: str, now: str, lease_until: float, owner_is_gone: Callable[[str | None, float], bool]
    ) -> TaskRow | None:
        """Take a task running for an owner that is gone, else the oldest runnable task of the
        tenant served least recently (store/sql.py, "The Phase 2 queue")."""
        # Look first without the write lock: an idle server must not take it every few seconds.
        with self._read() as conn:
            found = [
                (task_id, "running", current)
                for task_id, current, lease in conn.execute(TAKEOVER_PHASE2)
                if owner_is_gone(current, lease or 0.0)
            ]
            found += [(task_id, "pending", None) for task_id, _ in conn.execute(RUNNABLE_PHASE2) if task_id]
        if not found:
            return None
        with self._write() as conn:
            for task_id, status, current in found:
                claimed = conn.execute(
                    "UPDATE tasks SET status = 'running', owner = ?, lease_until = ?, updated_at = ?, "
                    "attempts = attempts + 1 WHERE task_id = ? AND status = ? AND (status = 'pending' OR owner IS ?)",
                    (owner, lease_until, now, task_id, status, current),
                ).rowcount
                if claimed:  # nobody took it between the look and the lock
                    self._take_turn(conn, task_id)
                    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
                    return task_row(row)
        return None
