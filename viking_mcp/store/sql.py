"""The store: the logical viking:// tree as transactional operations, written once over SQL.

The engine validates, counts tokens and decides; the store only keeps bytes and makes each
operation atomic, with the same guarantees on SQLite and on PostgreSQL:

- every method is one transaction: it happens entirely or not at all;
- appends cost the same however long the session is (no method reads a whole session
  to add to it);
- commit Phase 1 is O(1) in the number of messages: an archive is a range of message
  sequence numbers, so moving the live buffer into an archive rewrites no message.

`write_batch()` groups the methods one thread calls inside it into one transaction (a
group commit): each still happens entirely or not at all, none is durable (or visible to
others) before the batch commits, and if the batch cannot commit, none happens. A store
may also commit each on its own (PostgreSQL does: its appends lock a session's row, and
a batch would hold many).

`SQLStore` works on the tables both databases keep (store/migrations.py for SQLite,
store/pg_migrations.py for PostgreSQL). A dialect subclasses it with what differs between
the databases: how a transaction is got and how driver errors become ours (`_read`,
`_write`), migrations, the Phase 2 claim, the full-text match (`_SEARCH`), row locking
(`_LOCK`), text the database cannot hold (`_text`) and a full-text index that is not a
generated column (`_index_memory`). The embedded SQLite store is store/sqlite.py, the
PostgreSQL store for many instances store/postgres.py.

SQL here is written with `?` placeholders (a PostgreSQL transaction takes them as `%s`),
and rows are read by column name, which sqlite3.Row and psycopg's dict rows both answer;
both databases keep JSON as text. Every write that depends on a session's row reads it
first with `_LOCK` after the SELECT (`FOR UPDATE` on PostgreSQL, nothing on SQLite, whose
writers hold the database's lock from BEGIN): taking the session lock first in every
transaction is also what keeps two transactions from deadlocking.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import fields
from typing import Any, Protocol, TypeVar, get_args

from viking_mcp.errors import AlreadyExists, Conflict, Damaged, FailedPrecondition, InvalidArgument, NotFound
from viking_mcp.memory.search import Term, indexed_archive, indexed_message
from viking_mcp.models import MAX_COUNT, MemoryCategory, MemoryWrite, Message, Owner, StoredMemory, archive_id
from viking_mcp.store.base import (
    AppendOutcome,
    ArchiveRow,
    ContextSnapshot,
    ContextUsage,
    MemoryDump,
    OverviewRendering,
    Phase1Outcome,
    Phase2Output,
    PreviousOverview,
    RecallRow,
    SessionDump,
    SessionRow,
    StoredMessage,
    TaskRow,
    ToolRecord,
    TransferCounts,
    TreeRecords,
    UsageEntry,
    UsageRecord,
)
from viking_mcp.store.migrations import INDEX_RECALL

MEMORY_CATEGORIES = get_args(MemoryCategory)
_ALL = 2**62  # a LIMIT (or a sequence number) past everything, on either database
Record = TypeVar("Record")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class UnreadableValue(Damaged):
    """A stored JSON value that does not read back. The store only keeps JSON it wrote itself, so
    this is a damaged database, not bad input: a page of SQLite's file that was zeroed reads
    back as NUL bytes, a damage SQLite's own checks cannot see. The dialect says which
    database, and writes nothing more to it (`_read` and `_write` translate this)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}: the database is damaged; stop every viking-mcp using it and restore it from a backup"
        )
        self.what = what


def stored_json(text: Any, what: str) -> Any:
    """A JSON column's value, read back; `what` names it in the error if it does not read."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise UnreadableValue(f"a stored {what} does not read back as JSON ({exc})") from None


# Each table's columns as the store reads them, and the record a row of them becomes.

SESSION_COLUMNS = (
    "session_id, account_id, user_id, agent_id, created_at, updated_at, metadata, next_seq, "
    "archived_through, total_tokens, archived_tokens, commit_count, last_commit_at, "
    "llm_prompt_tokens, llm_completion_tokens, memories_extracted, contexts_used, skills_used"
)


def session_row(row: Any) -> SessionRow:
    return SessionRow(
        session_id=row["session_id"],
        owner=Owner(row["account_id"], row["user_id"], row["agent_id"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        metadata=stored_json(row["metadata"], "session's metadata"),
        total_message_count=row["next_seq"] - 1,
        live_message_count=row["next_seq"] - 1 - row["archived_through"],
        pending_tokens=row["total_tokens"] - row["archived_tokens"],
        commit_count=row["commit_count"],
        last_commit_at=row["last_commit_at"],
        llm_prompt_tokens=row["llm_prompt_tokens"],
        llm_completion_tokens=row["llm_completion_tokens"],
        memories_extracted=stored_json(row["memories_extracted"], "session's memory counts"),
        contexts_used=row["contexts_used"],
        skills_used=row["skills_used"],
    )


MESSAGE_COLUMNS = "seq, message_id, role, parts, created_at, tokens"
MESSAGES_AFTER = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq"
MESSAGE_INSERT = (
    "INSERT INTO messages (session_id, seq, message_id, role, parts, created_at, tokens, cum_tokens) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def message_row(row: Any) -> StoredMessage:
    parts = stored_json(row["parts"], "message")
    message = Message.model_validate(
        {"id": row["message_id"], "role": row["role"], "parts": parts, "created_at": row["created_at"]}
    )
    return StoredMessage(seq=row["seq"], message=message, tokens=row["tokens"])


ARCHIVE_COLUMNS = (
    "session_id, archive_no AS number, first_seq, last_seq, message_count, tokens, status, created_at, done_at, "
    "abstract, abstract_tokens, overview, overview_renderings, memory_diff, supplied, error, task_id"
)
ARCHIVES_OF = f"SELECT {ARCHIVE_COLUMNS} FROM archives WHERE session_id = ? ORDER BY archive_no"
# The same, for get_context's list of every archive of a session: none of the large
# columns (it reads the renderings of one archive only), and nothing stored after them
# that it does not need, since reading a column past a large value walks the row's
# overflow pages: a failed archive's error is read, no other's.
ARCHIVE_LIGHT_COLUMNS = (
    "session_id, archive_no AS number, first_seq, last_seq, message_count, tokens, status, created_at, done_at, "
    "abstract, abstract_tokens, '' AS overview, '[]' AS overview_renderings, NULL AS memory_diff, "
    "'{}' AS supplied, CASE WHEN status = 'failed' THEN error END AS error, NULL AS task_id"
)
# The latest completed archive, for get_context: its overview and renderings as well.
ARCHIVE_CONTEXT_COLUMNS = ARCHIVE_LIGHT_COLUMNS.replace(
    "'' AS overview, '[]' AS overview_renderings", "overview, overview_renderings"
)


def archive_row(row: Any) -> ArchiveRow:
    """A row of `ARCHIVE_COLUMNS`, which are named as ArchiveRow's fields."""
    return ArchiveRow(
        **{
            **row,
            "overview_renderings": [
                OverviewRendering(t, s) for t, s in stored_json(row["overview_renderings"], "archive's overview")
            ],
            "memory_diff": stored_json(row["memory_diff"], "archive's memory diff") if row["memory_diff"] else None,
            "supplied": stored_json(row["supplied"], "archive's supplied summary"),
        }
    )


def listing_row(row: Sequence[Any]) -> ArchiveRow:
    """An archive as `ARCHIVE_LIGHT_COLUMNS` reads it, as a plain tuple: no overview, renderings,
    diff or supplied."""
    # Positional, in ArchiveRow's field order (the columns' order): the fastest way to build one.
    return ArchiveRow(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
        "", [], None, {}, row[15], None,
    )  # fmt: skip


TASK_COLUMNS = (
    "task_id, task_type, status, session_id, archive_no AS archive_number, created_at, updated_at, result, error, "
    "owner, attempts, account_id, user_id"
)


def task_row(row: Any) -> TaskRow:
    """A row of `TASK_COLUMNS`, which are named as TaskRow's fields."""
    return TaskRow(**{**row, "result": stored_json(row["result"], "task result") if row["result"] else None})


# The Phase 2 queue, fair between tenants. A tenant is one (account, user); the worker takes
# the oldest runnable task of the tenant served least recently (phase2_turns holds each
# tenant's last turn), so a tenant with thousands of commits queued delays another's by one
# Phase 2 run, not by its backlog. Within a session order stays strict: a task is runnable
# only when every earlier archive of its session is done, so Phase 2 of archive N+1 never
# finishes before archive N's (the NOT EXISTS reads only an index of archives).
#
# TENANT is one expression, written the same in the queue's index (tasks_queue) and here, so
# that the database reads the index for it: a two-column key would not serve the loose scan
# below on SQLite, and task rows from before tasks had owners hold NULLs.
TENANT = "(COALESCE(t.account_id, '') || '/' || COALESCE(t.user_id, ''))"
QUEUED = "t.status = 'pending' AND t.task_type = 'session_commit'"
RUNNABLE = (
    "NOT EXISTS (SELECT 1 FROM archives b WHERE b.session_id = t.session_id "
    "AND b.archive_no < t.archive_no AND b.status NOT IN ('completed', 'skipped'))"
)
# Every tenant with a queued task: one index seek per tenant, however many tasks it queued.
QUEUED_TENANTS_CTE = (
    "WITH RECURSIVE queued(tenant) AS ("
    f"SELECT (SELECT {TENANT} FROM tasks t WHERE {QUEUED} ORDER BY {TENANT} LIMIT 1) "
    f"UNION ALL SELECT (SELECT {TENANT} FROM tasks t WHERE {QUEUED} AND {TENANT} > q.tenant "
    f"ORDER BY {TENANT} LIMIT 1) FROM queued q WHERE q.tenant IS NOT NULL) "
)
# The tenants with queued tasks, least recently served first.
QUEUED_TENANTS = (
    f"{QUEUED_TENANTS_CTE}SELECT q.tenant FROM queued q LEFT JOIN phase2_turns p ON p.tenant = q.tenant "
    "WHERE q.tenant IS NOT NULL ORDER BY COALESCE(p.last_turn, 0), q.tenant"
)


def tenant_head(columns: str, tenant: str, task_order: str) -> str:
    """The oldest runnable queued task of `tenant` (a parameter, or a column of an outer query)."""
    return (
        f"SELECT {columns} FROM tasks t WHERE {QUEUED} AND {TENANT} = {tenant} AND {RUNNABLE} "
        f"ORDER BY t.created_at, t.{task_order} LIMIT 1"
    )


def sessions_page(after: bool, owned: bool) -> str:
    """A page of sessions, newest first: after a cursor's (created_at, session_id) or not, of
    one owner (account, user) or of all. One owner's page reads the owner-first index
    (sessions_by_owner), so it costs the same whatever other tenants hold."""
    clauses = (["account_id = ? AND user_id = ?"] if owned else []) + (
        ["(created_at, session_id) < (?, ?)"] if after else []
    )
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    return f"SELECT {SESSION_COLUMNS} FROM sessions {where}ORDER BY created_at DESC, session_id DESC LIMIT ?"


TOOL_COLUMNS = "tool_id, tool_name, skill_uri, tool_input, tool_output, tool_status, message_id, created_at, updated_at"
TOOLS_OF = f"SELECT {TOOL_COLUMNS} FROM tool_calls WHERE session_id = ? ORDER BY created_at, tool_id"
_TOOL_INSERT = f"INSERT INTO tool_calls (session_id, {TOOL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def tool_record(row: Any) -> ToolRecord:
    """A row of `TOOL_COLUMNS`, which are named as ToolRecord's fields."""
    return ToolRecord(**{**row, "tool_input": stored_json(row["tool_input"], "tool input")})


USAGE_COLUMNS = "kind, uri, payload, created_at, archive_no AS archive_number"
USAGE_OF = f"SELECT {USAGE_COLUMNS} FROM usage WHERE session_id = ? ORDER BY id"


def usage_entry(row: Any) -> UsageEntry:
    """A row of `USAGE_COLUMNS`, which are named as UsageEntry's fields."""
    return UsageEntry(**{**row, "payload": stored_json(row["payload"], "usage record")})


MEMORY_COLUMNS = (
    "m.uri, m.scope, m.owner_id, m.category, m.key, m.name, m.abstract, m.overview, m.content, m.stats, "
    "m.version, m.created_at, m.updated_at, COALESCE(u.active_count, 0) AS active_count"
)
MEMORY_FROM = "memories m LEFT JOIN context_usage u ON u.account_id = m.account_id AND u.uri = m.uri"
_MEMORY_INSERT = (
    "INSERT INTO memories (account_id, uri, scope, owner_id, category, key, name, abstract, overview, content, "
    "stats, version, created_at, updated_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_MEMORY_FIELDS = [f.name for f in fields(StoredMemory) if f.name != "stats"]


def memory_row(row: Any) -> StoredMemory:
    """A row with `MEMORY_COLUMNS` (named as StoredMemory's fields) among its columns."""
    return StoredMemory(**{name: row[name] for name in _MEMORY_FIELDS}, stats=stored_json(row["stats"], "memory"))


MaybeText = TypeVar("MaybeText", str, str | None)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """One transaction's connection: SQL with `?` placeholders, rows read by column name."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> object: ...


class SQLStore(ABC):
    """The store over SQL (see the module's docstring); a subclass is one database's dialect."""

    _LOCK = ""  # after a SELECT: lock the rows it reads until the transaction ends
    _IS = "IS"  # null-safe equality
    _GREATEST = "MAX"  # the larger of two values
    _TASK_ORDER = "rowid"  # the tasks' order of insertion
    # Full-text search: memories that match the first parameter, with a `score` column
    # (higher is better), ending in a WHERE clause the store adds to.
    _SEARCH = ""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def write_batch(self) -> AbstractContextManager[None]:
        """The writes this thread makes inside, committed together (see the module's docstring)."""

    @abstractmethod
    def schema_version(self) -> int:
        """How far the store's schema has come (migrations run when it opens)."""

    @abstractmethod
    def claim_phase2(
        self, owner: str, now: str, lease_until: float, owner_is_gone: Callable[[str | None, float], bool]
    ) -> TaskRow | None:
        """Take a runnable Phase 2 task, or None: one left by an owner that is gone, else the oldest
        runnable task of the tenant served least recently ("The Phase 2 queue", above)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Tx]:
        """A read transaction: every SELECT inside sees one snapshot."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Tx]:
        """One write transaction, all of it or nothing."""

    @abstractmethod
    def _listing(self, tx: Tx, sql: str, params: Sequence[Any]) -> Iterable[Sequence[Any]]:
        """Rows as plain tuples (a thousand archives are read on every get_context)."""

    def _text(self, value: MaybeText) -> MaybeText:
        """Free text as the database can hold it (SQLite holds any)."""
        return value

    def _index_memory(self, tx: Tx, account_id: str, uri: str, present: bool) -> None:  # noqa: B027 (a hook)
        """Bring the full-text index in step with the memory at `uri`: drop its entry and, if
        `present`, add the memory as it now stands. Nothing where the index is generated."""

    def _take_turn(self, tx: Tx, task_id: str) -> None:
        """Record that the tenant of the task just claimed has been served: it goes to the back
        of the line of tenants."""
        tx.execute(
            f"INSERT INTO phase2_turns (tenant, last_turn) SELECT {TENANT}, "
            "COALESCE((SELECT MAX(last_turn) FROM phase2_turns), 0) + 1 FROM tasks t WHERE t.task_id = ? "
            "ON CONFLICT (tenant) DO UPDATE SET last_turn = excluded.last_turn",
            (task_id,),
        )

    def _forget_claim(self, task_id: str) -> None:  # noqa: B027 (a hook)
        """This process stops working on a Phase 2 task it claimed."""

    # Recall's index (see `search_recall`): each message is indexed when it is stored, each
    # archive when its summaries are; the text is `memory.search.indexed_*`'s.

    # What indexing a session's documents reads of its row, beside its owner.
    _RECALL_KEY = ""

    def _insert_messages(self, tx: Tx, session: Any, rows: list[tuple[Any, ...]], messages: list[Message]) -> None:
        """Insert messages (`MESSAGE_INSERT`'s values, and the messages they are) of the
        session whose row is `session`. Recall indexes them later, many at once
        (`catch_up_recall`): FTS5 writes a segment of its index per transaction, which cost
        an append 0.1 ms (three quarters of it) when it was done here. A dialect whose index
        is a column of the row writes it here instead."""
        tx.executemany(MESSAGE_INSERT, rows)

    def catch_up_recall(self) -> None:  # noqa: B027 (a hook)
        """Index what was stored and is not indexed yet (where the dialect indexes in batches):
        a search calls it first, so that it finds every message stored before it."""

    @abstractmethod
    def _index_messages(self, tx: Tx, session_id: str, session: Any, texts: list[tuple[int, str]]) -> None:
        """Index stored messages (seq, text) of the session whose row is `session`."""

    @abstractmethod
    def _index_archive(self, tx: Tx, session_id: str, session: Any, number: int, text: str) -> None:
        """Index (or index again) a completed archive's summaries."""

    @abstractmethod
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
        """The messages and archives (of `kinds`) that match `match` (memory.search.match_any's
        form), best first by the database's rank (not `ranked`: the newest first, a hint that
        too many match to rank them all; a dialect may rank anyway): of the sessions of `owner`
        (account, user; None: everyone's), or of one session."""

    @abstractmethod
    def recall_counts(
        self, terms: list[Term], owner: tuple[str, str] | None, session_id: str | None
    ) -> dict[str, int | None]:
        """How many of recall's documents hold each term (by stem): of one session, of the
        sessions of `owner` (account, user), or of every session. None: the database does not
        index the word (a stopword of PostgreSQL's)."""

    def recall_size(self, owner: tuple[str, str] | None, session_id: str | None) -> int:
        """How many documents recall's index holds (every message and completed archive): of
        one session, of the sessions of `owner`, or of every session."""
        where, params = (
            ("WHERE s.session_id = ?", (session_id,))
            if session_id is not None
            else ("WHERE s.account_id = ? AND s.user_id = ?", owner)
            if owner is not None
            else ("", ())
        )
        with self._read() as tx:
            row = tx.execute(
                "SELECT COALESCE(SUM(s.next_seq - 1 + (SELECT count(*) FROM archives a "
                f"WHERE a.session_id = s.session_id AND a.status = 'completed')), 0) AS n FROM sessions s {where}",
                params,
            ).fetchall()[0]
        return int(row["n"])

    def _unindex_session(self, tx: Tx, session_id: str) -> None:  # noqa: B027 (a hook)
        """Drop the session's documents from an index that is not its tables' columns."""

    def _index_everything(self, tx: Tx) -> None:
        """Index what was stored before recall existed (a migration's step)."""
        sessions = tx.execute(f"SELECT session_id, account_id, user_id{self._RECALL_KEY} FROM sessions").fetchall()
        for session in sessions:
            session_id = session["session_id"]
            messages = tx.execute(MESSAGES_AFTER, (session_id, 0)).fetchall()
            texts = [(m.seq, indexed_message(m.message)) for m in map(message_row, messages)]
            self._index_messages(tx, session_id, session, texts)
            for archive in tx.execute(
                "SELECT archive_no, abstract, overview FROM archives WHERE session_id = ? AND status = 'completed'",
                (session_id,),
            ).fetchall():
                number = archive["archive_no"]
                text = indexed_archive(number, archive["abstract"], archive["overview"])
                self._index_archive(tx, session_id, session, number, text)

    def _upgrade(self, tx: Tx, version: int, migrations: list[list[str]], where: str) -> bool:
        """Run the migrations past `version`; False if there were none to run."""
        if version > len(migrations):
            raise FailedPrecondition(
                f"{where} has schema version {version}, newer than this viking-mcp understands "
                f"({len(migrations)}); upgrade viking-mcp"
            )
        for statements in migrations[version:]:
            for statement in statements:
                if statement == INDEX_RECALL:
                    self._index_everything(tx)
                else:
                    tx.execute(statement)
        return version != len(migrations)

    def _select_as(self, record: Callable[[Any], Record], sql: str, params: Sequence[Any]) -> list[Record]:
        """The rows `sql` reads, each made a record inside the read transaction: where the
        dialect sees a value that does not read back (`UnreadableValue`)."""
        with self._read() as tx:
            return [record(row) for row in tx.execute(sql, params).fetchall()]

    # --- sessions -------------------------------------------------------------------------

    def _lock_session(self, tx: Tx, session_id: str, columns: str = "session_id") -> Any:
        """Read (on PostgreSQL: lock) the session's row: every write on a session begins here."""
        return tx.execute(f"SELECT {columns} FROM sessions WHERE session_id = ?{self._LOCK}", (session_id,)).fetchone()

    def _insert_session(self, tx: Tx, session_id: str, owner: Owner, metadata: dict[str, Any], now: str) -> bool:
        """Insert the session unless it exists (then False); another instance creating it at the
        same moment makes this wait for that one's commit, then answer False."""
        return (
            tx.execute(
                "INSERT INTO sessions (session_id, account_id, user_id, agent_id, created_at, updated_at, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING",
                (session_id, owner.account_id, owner.user_id, owner.agent_id, now, now, dumps(metadata)),
            ).rowcount
            > 0
        )

    def _session(self, tx: Tx, session_id: str) -> SessionRow | None:
        row = tx.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return session_row(row) if row else None

    def create_session(self, session_id: str, owner: Owner, metadata: dict[str, Any], now: str) -> SessionRow:
        with self._write() as tx:
            if not self._insert_session(tx, session_id, owner, metadata, now):
                raise AlreadyExists(f"session {session_id} already exists; use another session_id or omit it")
            row = self._session(tx, session_id)
        assert row is not None
        return row

    def get_session(self, session_id: str) -> SessionRow | None:
        with self._read() as tx:
            return self._session(tx, session_id)

    def list_sessions(self, limit: int, after: tuple[str, str] | None, owner: Owner | None = None) -> list[SessionRow]:
        params = ([owner.account_id, owner.user_id] if owner is not None else []) + list(after or ())
        return self._select_as(session_row, sessions_page(after is not None, owner is not None), (*params, limit))

    def merge_metadata(self, session_id: str, patch: dict[str, Any], now: str) -> dict[str, Any]:
        with self._write() as tx:
            row = self._lock_session(tx, session_id, "metadata")
            if row is None:
                raise NotFound(f"session {session_id} not found")
            merged: dict[str, Any] = stored_json(row["metadata"], "session's metadata")
            for key, value in patch.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            tx.execute(
                "UPDATE sessions SET metadata = ?, updated_at = ? WHERE session_id = ?",
                (dumps(merged), now, session_id),
            )
        return merged

    def _drop_session(self, tx: Tx, session_id: str, now: str, why: str) -> None:
        """Delete the session and all it holds; its unfinished tasks fail with `why`."""
        self._unindex_session(tx, session_id)
        tx.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
        for table in ("messages", "archives", "tool_calls", "usage"):
            tx.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
        tx.execute(
            "UPDATE tasks SET status = 'failed', error = ?, updated_at = ?, owner = NULL, lease_until = NULL "
            "WHERE session_id = ? AND status IN ('pending', 'running')",
            (why, now, session_id),
        )

    def delete_session(self, session_id: str, now: str) -> bool:
        with self._write() as tx:
            if self._lock_session(tx, session_id) is None:
                return False
            self._drop_session(tx, session_id, now, "session deleted before the task finished")
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
        session's lock. With `only_for`, a session that belongs to someone else is refused
        inside the same transaction."""
        parts_json = dumps([p.model_dump(mode="json") for p in message.parts])
        columns = f"next_seq, archived_through, total_tokens, account_id, user_id{self._RECALL_KEY}"
        with self._write() as tx:
            created = False
            row = self._lock_session(tx, session_id, columns)
            if row is None:
                if create_as is None:
                    raise NotFound(f"session {session_id} not found")
                created = self._insert_session(tx, session_id, create_as, {}, now)
                row = self._lock_session(tx, session_id, columns)
                if row is None:  # created by another instance and deleted again, in between
                    raise Conflict(f"session {session_id} was deleted while this message was added; retry")
            mine = only_for is None or (row["account_id"], row["user_id"]) == (only_for.account_id, only_for.user_id)
            if not (created or mine):
                raise AlreadyExists(f"session id {session_id} is taken; use another session_id")
            next_seq, archived_through, total_tokens = row["next_seq"], row["archived_through"], row["total_tokens"]
            duplicate = tx.execute(
                "SELECT 1 FROM messages WHERE session_id = ? AND message_id = ?", (session_id, message.id)
            ).fetchone()
            if duplicate:
                return AppendOutcome(message.id, next_seq - 1 - archived_through, created, True)
            self._insert_messages(
                tx,
                row,
                [(session_id, next_seq, message.id, message.role, parts_json, message.created_at, tokens,
                  total_tokens + tokens)],
                [message],
            )  # fmt: skip
            tx.execute(
                "UPDATE sessions SET next_seq = ?, total_tokens = ?, updated_at = ? WHERE session_id = ?",
                (next_seq + 1, total_tokens + tokens, now, session_id),
            )
            for part in message.parts:
                if part.type == "tool":
                    tx.execute(
                        _TOOL_INSERT + " ON CONFLICT (session_id, tool_id) DO UPDATE SET "
                        "tool_name = excluded.tool_name, skill_uri = excluded.skill_uri, "
                        "tool_input = excluded.tool_input, tool_output = excluded.tool_output, "
                        "tool_status = excluded.tool_status, message_id = excluded.message_id, "
                        "updated_at = excluded.updated_at",
                        (session_id, part.tool_id, self._text(part.tool_name), self._text(part.skill_uri),
                         dumps(part.tool_input), self._text(part.tool_output), part.tool_status, message.id, now, now),
                    )  # fmt: skip
        return AppendOutcome(message.id, next_seq - archived_through, created, False)

    def read_messages(
        self, session_id: str, after_seq: int, through_seq: int | None, offset: int, limit: int | None
    ) -> list[StoredMessage]:
        upper = through_seq if through_seq is not None else _ALL
        return self._select_as(
            message_row,
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ? OFFSET ?",
            (session_id, after_seq, upper, _ALL if limit is None else limit, offset),
        )

    def live_messages(self, session_id: str) -> list[StoredMessage]:
        with self._read() as tx:
            row = tx.execute("SELECT archived_through FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            if row is None:
                raise NotFound(f"session {session_id} not found")
            rows = tx.execute(MESSAGES_AFTER, (session_id, row["archived_through"])).fetchall()
            return [message_row(r) for r in rows]

    # --- usage and tool records ----------------------------------------------------------------

    def record_usage(
        self, session_id: str, contexts: list[str], skill: dict[str, Any] | None, now: str
    ) -> tuple[int, int]:
        with self._write() as tx:
            if self._lock_session(tx, session_id) is None:
                raise NotFound(f"session {session_id} not found")
            tx.executemany(
                "INSERT INTO usage (session_id, kind, uri, created_at) VALUES (?, 'context', ?, ?)",
                [(session_id, self._text(uri), now) for uri in contexts],
            )
            if skill is not None:
                tx.execute(
                    "INSERT INTO usage (session_id, kind, uri, payload, created_at) VALUES (?, 'skill', ?, ?, ?)",
                    (session_id, self._text(str(skill["uri"])), dumps(skill), now),
                )
            tx.execute(
                "UPDATE sessions SET contexts_used = contexts_used + ?, skills_used = skills_used + ?, "
                "updated_at = ? WHERE session_id = ?",
                (len(contexts), 1 if skill else 0, now, session_id),
            )
            row = self._lock_session(tx, session_id, "contexts_used, skills_used")
        return int(row["contexts_used"]), int(row["skills_used"])

    def _usage_record(self, where: str, params: tuple[Any, ...]) -> UsageRecord:
        record = UsageRecord()
        with self._read() as tx:
            for row in tx.execute(f"SELECT kind, uri, payload FROM usage WHERE {where} ORDER BY id", params).fetchall():
                if row["kind"] == "context":
                    record.contexts.append(row["uri"])
                else:
                    record.skills.append(stored_json(row["payload"], "skill use"))
        return record

    def usage(self, session_id: str) -> UsageRecord:
        return self._usage_record("session_id = ?", (session_id,))

    def archive_usage(self, session_id: str, number: int) -> UsageRecord:
        return self._usage_record("session_id = ? AND archive_no = ?", (session_id, number))

    def tool_records(self, session_id: str) -> list[ToolRecord]:
        return self._select_as(tool_record, TOOLS_OF, (session_id,))

    # --- commit and archives ----------------------------------------------------------------------

    def commit_phase1(
        self, session_id: str, keep_recent: int, supplied: dict[str, Any], task_id: str, now: str
    ) -> Phase1Outcome:
        with self._write() as tx:
            row = self._lock_session(tx, session_id, "next_seq, archived_through, archived_tokens, commit_count")
            if row is None:
                raise NotFound(f"session {session_id} not found")
            archived_through, archived_tokens = row["archived_through"], row["archived_tokens"]
            failed = tx.execute(
                "SELECT archive_no, error FROM archives WHERE session_id = ? AND status = 'failed' "
                "ORDER BY archive_no LIMIT 1",
                (session_id,),
            ).fetchone()
            if failed:
                name = archive_id(failed["archive_no"])
                raise FailedPrecondition(
                    f"{name} of session {session_id} failed Phase 2 ({failed['error']}); call retry_archive "
                    f"(session_id={session_id}, archive_id={name}) to retry it or skip it, then commit again"
                )
            last_seq = row["next_seq"] - 1 - keep_recent
            if last_seq <= archived_through:
                return Phase1Outcome(archive_number=None, archived_messages=0, task_id=None)
            cum = tx.execute(
                "SELECT cum_tokens FROM messages WHERE session_id = ? AND seq = ?", (session_id, last_seq)
            ).fetchone()["cum_tokens"]
            number = row["commit_count"] + 1
            tx.execute(
                "INSERT INTO archives (session_id, archive_no, first_seq, last_seq, message_count, tokens, "
                "status, created_at, supplied, task_id) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (session_id, number, archived_through + 1, last_seq, last_seq - archived_through,
                 cum - archived_tokens, now, dumps(supplied), task_id),
            )  # fmt: skip
            self._insert_task(tx, task_id, "session_commit", "pending", session_id, number, now)
            tx.execute(
                "UPDATE usage SET archive_no = ? WHERE session_id = ? AND archive_no IS NULL", (number, session_id)
            )
            tx.execute(
                "UPDATE sessions SET archived_through = ?, archived_tokens = ?, commit_count = ?, "
                "last_commit_at = ?, updated_at = ? WHERE session_id = ?",
                (last_seq, cum, number, now, now, session_id),
            )
        return Phase1Outcome(archive_number=number, archived_messages=last_seq - archived_through, task_id=task_id)

    def message_windows(
        self, hits: list[tuple[str, int]], radius: int
    ) -> dict[tuple[str, int], list[tuple[StoredMessage, int | None]]]:
        """For each (session, seq): the messages from seq - radius to seq + radius, each with the
        number of the archive that holds it (None: live); in one read."""
        windows = {}
        with self._read() as tx:
            for session_id, seq in hits:
                rows = tx.execute(
                    f"SELECT {MESSAGE_COLUMNS}, (SELECT a.archive_no FROM archives a WHERE a.session_id = m.session_id "
                    "AND a.first_seq <= m.seq AND a.last_seq >= m.seq) AS archive_no "
                    "FROM messages m WHERE m.session_id = ? AND m.seq BETWEEN ? AND ? ORDER BY m.seq",
                    (session_id, seq - radius, seq + radius),
                ).fetchall()
                windows[(session_id, seq)] = [(message_row(row), row["archive_no"]) for row in rows]
        return windows

    def archives_said_at(self, archives: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """For each completed (session, archive number): when the last message it summarises
        was said; in one read."""
        said = {}
        with self._read() as tx:
            for session_id, number in archives:
                row = tx.execute(
                    "SELECT m.created_at FROM archives a JOIN messages m ON m.session_id = a.session_id "
                    "AND m.seq = a.last_seq WHERE a.session_id = ? AND a.archive_no = ? AND a.status = 'completed'",
                    (session_id, number),
                ).fetchone()
                if row is not None:
                    said[(session_id, number)] = row["created_at"]
        return said

    def list_archives(self, session_id: str) -> list[ArchiveRow]:
        return self._select_as(archive_row, ARCHIVES_OF, (session_id,))

    def get_archive(self, session_id: str, number: int) -> ArchiveRow | None:
        rows = self._select_as(
            archive_row,
            f"SELECT {ARCHIVE_COLUMNS} FROM archives WHERE session_id = ? AND archive_no = ?",
            (session_id, number),
        )
        return rows[0] if rows else None

    def context_snapshot(self, session_id: str) -> ContextSnapshot | None:
        with self._read() as tx:
            if not tx.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone():
                return None
            archives = [
                listing_row(r)
                for r in self._listing(
                    tx,
                    f"SELECT {ARCHIVE_LIGHT_COLUMNS} FROM archives WHERE session_id = ? ORDER BY archive_no",
                    (session_id,),
                )
            ]
            latest = next((i for i in reversed(range(len(archives))) if archives[i].status == "completed"), None)
            after_seq = 0
            if latest is not None:
                full = tx.execute(
                    f"SELECT {ARCHIVE_CONTEXT_COLUMNS} FROM archives WHERE session_id = ? AND archive_no = ?",
                    (session_id, archives[latest].number),
                ).fetchone()
                archives[latest] = archive_row(full)
                after_seq = archives[latest].last_seq
            messages = [message_row(r) for r in tx.execute(MESSAGES_AFTER, (session_id, after_seq)).fetchall()]
        return ContextSnapshot(archives=archives, messages=messages)

    # --- tasks and Phase 2 ------------------------------------------------------------------------

    def _insert_task(
        self, tx: Tx, task_id: str, task_type: str, status: str, session_id: str, number: int | None, now: str
    ) -> None:
        """A task row, stamped with its session's owner."""
        tx.execute(
            "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, updated_at, "
            "account_id, user_id) SELECT ?, ?, ?, ?, ?, ?, ?, account_id, user_id FROM sessions WHERE session_id = ?",
            (task_id, task_type, status, session_id, number, now, now, session_id),
        )

    def get_task(self, task_id: str) -> TaskRow | None:
        rows = self._select_as(task_row, f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,))
        return rows[0] if rows else None

    def list_tasks(
        self,
        task_type: str | None,
        status: str | None,
        session_id: str | None,
        limit: int,
        owner: Owner | None = None,
        offset: int = 0,
    ) -> list[TaskRow]:
        """Tasks, newest first, after skipping `offset` of them."""
        clauses: list[str] = []
        params: list[Any] = []
        if owner is not None:
            clauses += ["account_id = ?", "user_id = ?"]
            params += [owner.account_id, owner.user_id]
        for column, value in (("task_type", task_type), ("status", status), ("session_id", session_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._select_as(
            task_row,
            f"SELECT {TASK_COLUMNS} FROM tasks {where} "
            f"ORDER BY created_at DESC, {self._TASK_ORDER} DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )

    def previous_overview(self, session_id: str, number: int) -> PreviousOverview:
        """The overview and the longest rendering of the latest completed archive before archive `number`."""
        found = self._select_as(
            lambda row: PreviousOverview(
                number=row["archive_no"],
                overview=str(row["overview"]),
                longest=next(
                    (str(text) for _, text in stored_json(row["overview_renderings"], "archive's overview")),
                    str(row["overview"]),
                ),
            ),
            "SELECT archive_no, overview, overview_renderings FROM archives "
            "WHERE session_id = ? AND archive_no < ? AND status = 'completed' ORDER BY archive_no DESC LIMIT 1",
            (session_id, number),
        )
        return found[0] if found else PreviousOverview(0, "", "")

    def release_phase2(self, task: TaskRow, now: str) -> None:
        """Give a claimed task back to the queue (its owner could not finish it)."""
        self._forget_claim(task.task_id)
        with self._write() as tx:
            tx.execute(
                "UPDATE tasks SET status = 'pending', owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE task_id = ? AND status = 'running' AND owner = ?",
                (now, task.task_id, task.owner),
            )

    def finish_phase2(self, task: TaskRow, output: Phase2Output, now: str) -> bool:
        """Write the summaries, the memory diff and the `.done` marker at once. False if the
        task lost its claim meanwhile (the session was deleted, or another owner took over)."""
        renderings = dumps([[r.tokens, r.text] for r in output.overview_renderings])
        overview = output.overview
        try:
            with self._write() as tx:
                session = self._lock_session(tx, task.session_id, f"account_id, user_id{self._RECALL_KEY}")
                current = tx.execute(
                    f"SELECT status, owner FROM tasks WHERE task_id = ?{self._LOCK}", (task.task_id,)
                ).fetchone()
                if current is None or current["status"] != "running" or current["owner"] != task.owner:
                    return False
                updated = tx.execute(
                    "UPDATE archives SET status = 'completed', done_at = ?, abstract = ?, abstract_tokens = ?, "
                    "overview = ?, overview_renderings = ?, memory_diff = ?, error = NULL "
                    "WHERE session_id = ? AND archive_no = ? AND status = 'pending'",
                    (now, self._text(output.abstract), output.abstract_tokens, self._text(overview), renderings,
                     dumps(output.memory_diff), task.session_id, task.archive_number),
                ).rowcount  # fmt: skip
                if not updated:
                    tx.execute(
                        "UPDATE tasks SET status = 'failed', error = 'archive no longer pending', updated_at = ?, "
                        "owner = NULL WHERE task_id = ?",
                        (now, task.task_id),
                    )
                    return False
                number = task.archive_number or 0
                text = indexed_archive(number, output.abstract, overview)
                self._index_archive(tx, task.session_id, session, number, text)
                self._prune_renderings(tx, task.session_id, number)
                source = {"session_id": task.session_id, "archive_id": archive_id(task.archive_number or 0)}
                self._apply_memory_writes(tx, output.account_id, output.memory_writes, source, now)
                used = {
                    r["uri"]
                    for r in tx.execute(
                        "SELECT uri FROM usage WHERE session_id = ? AND archive_no = ? AND kind = 'context'",
                        (task.session_id, task.archive_number),
                    ).fetchall()
                }
                # Each context counts once per archive, and only if this session's owner may see
                # it: another user's memory URI is not theirs to promote.
                used = {uri for uri in used if output.may_use(uri)}
                tx.executemany(
                    "INSERT INTO context_usage (account_id, uri, active_count, last_used_at) VALUES (?, ?, 1, ?) "
                    "ON CONFLICT (account_id, uri) DO UPDATE SET active_count = context_usage.active_count + 1, "
                    "last_used_at = excluded.last_used_at",
                    [(output.account_id, uri, now) for uri in sorted(used)],
                )
                result = {**output.result, "active_count_updated": len(used)}
                self._add_counts(tx, task.session_id, output.memories_extracted, output.llm_prompt_tokens,
                                 output.llm_completion_tokens)  # fmt: skip
                tx.execute(
                    "UPDATE tasks SET status = 'completed', result = ?, error = NULL, updated_at = ?, "
                    "owner = NULL, lease_until = NULL WHERE task_id = ?",
                    (dumps(result), now, task.task_id),
                )
            return True
        finally:
            self._forget_claim(task.task_id)

    def _prune_renderings(self, tx: Tx, session_id: str, number: int) -> None:
        """Keep only the renderings of the previous completed archive that something still
        reads: get_context reads the latest completed archive's renderings only, the next
        commit carries the longest forward, and `.overview.md` is the overview as written.
        Its shorter ones (two thirds of what it stored) would never be read again."""
        row = tx.execute(
            "SELECT archive_no, overview, overview_renderings FROM archives "
            "WHERE session_id = ? AND archive_no < ? AND status = 'completed' ORDER BY archive_no DESC LIMIT 1",
            (session_id, number),
        ).fetchone()
        if row is None:
            return
        renderings = stored_json(row["overview_renderings"], "archive's overview")
        kept = [r for i, r in enumerate(renderings) if i == 0 or r[1] == row["overview"]]
        if len(kept) < len(renderings):
            tx.execute(
                "UPDATE archives SET overview_renderings = ? WHERE session_id = ? AND archive_no = ?",
                (dumps(kept), session_id, row["archive_no"]),
            )

    def _add_counts(self, tx: Tx, session_id: str, counts: dict[str, int], prompt: int, completion: int) -> None:
        """Add memories extracted (per category) and LLM tokens used to the session's totals."""
        row = self._lock_session(tx, session_id, "memories_extracted")
        totals: dict[str, int] = stored_json(row["memories_extracted"], "session's memory counts") if row else {}
        for category in MEMORY_CATEGORIES:
            totals[category] = totals.get(category, 0) + counts.get(category, 0)
        tx.execute(
            "UPDATE sessions SET memories_extracted = ?, llm_prompt_tokens = llm_prompt_tokens + ?, "
            "llm_completion_tokens = llm_completion_tokens + ? WHERE session_id = ?",
            (dumps(totals), prompt, completion, session_id),
        )

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
        with self._write() as tx:
            self._lock_session(tx, session_id)
            self._apply_memory_writes(tx, account_id, writes, {"session_id": session_id, "task_id": task_id}, now)
            self._add_counts(tx, session_id, counts, *llm_tokens)
            self._insert_task(tx, task_id, "session_extract", "completed", session_id, None, created_at)
            tx.execute("UPDATE tasks SET updated_at = ?, result = ? WHERE task_id = ?", (now, dumps(result), task_id))

    def fail_extract(self, session_id: str, task_id: str, error: str, created_at: str, now: str) -> None:
        with self._write() as tx:
            self._lock_session(tx, session_id)
            self._insert_task(tx, task_id, "session_extract", "failed", session_id, None, created_at)
            tx.execute(
                "UPDATE tasks SET updated_at = ?, error = ? WHERE task_id = ?", (now, self._text(error), task_id)
            )

    def fail_phase2(self, task: TaskRow, error: str, now: str) -> None:
        self._forget_claim(task.task_id)
        with self._write() as tx:
            self._lock_session(tx, task.session_id)
            failed = tx.execute(
                "UPDATE tasks SET status = 'failed', error = ?, updated_at = ?, owner = NULL, lease_until = NULL "
                f"WHERE task_id = ? AND status = 'running' AND owner {self._IS} ?",
                (self._text(error), now, task.task_id, task.owner),
            ).rowcount
            if not failed:
                return  # someone else owns it now; their outcome stands
            tx.execute(
                "UPDATE archives SET status = 'failed', error = ? "
                "WHERE session_id = ? AND archive_no = ? AND status = 'pending' AND task_id = ?",
                (self._text(error), task.session_id, task.archive_number, task.task_id),
            )

    def _failed_archive(self, tx: Tx, session_id: str, number: int) -> None:
        self._lock_session(tx, session_id)
        row = tx.execute(
            "SELECT status FROM archives WHERE session_id = ? AND archive_no = ?", (session_id, number)
        ).fetchone()
        if row is None:
            raise NotFound(f"{archive_id(number)} of session {session_id} not found")
        if row["status"] != "failed":
            raise FailedPrecondition(
                f"{archive_id(number)} of session {session_id} is {row['status']}, not failed; only a failed "
                "archive can be retried or skipped"
            )

    def retry_archive(self, session_id: str, number: int, task_id: str, now: str) -> None:
        with self._write() as tx:
            self._failed_archive(tx, session_id, number)
            tx.execute(
                "UPDATE archives SET status = 'pending', error = NULL, task_id = ? "
                "WHERE session_id = ? AND archive_no = ?",
                (task_id, session_id, number),
            )
            self._insert_task(tx, task_id, "session_commit", "pending", session_id, number, now)

    def skip_archive(self, session_id: str, number: int, now: str) -> None:
        with self._write() as tx:
            self._failed_archive(tx, session_id, number)
            tx.execute(
                "UPDATE archives SET status = 'skipped', error = NULL, done_at = ? "
                "WHERE session_id = ? AND archive_no = ?",
                (now, session_id, number),
            )

    # --- long-term memories ------------------------------------------------------------------------

    def memories_by_uri(self, account_id: str, uris: list[str]) -> dict[str, StoredMemory]:
        if not uris:
            return {}
        memories = self._select_as(
            memory_row,
            f"SELECT {MEMORY_COLUMNS} FROM {MEMORY_FROM} WHERE m.account_id = ? "
            f"AND m.uri IN ({', '.join('?' * len(uris))})",
            (account_id, *uris),
        )
        return {memory.uri: memory for memory in memories}

    def memories_in_category(self, account_id: str, scope: str, owner_id: str, category: str) -> list[StoredMemory]:
        return self.list_memories(account_id, scope, owner_id, category, None)

    def list_memories(
        self, account_id: str, scope: str, owner_id: str, category: str | None, limit: int | None
    ) -> list[StoredMemory]:
        clause = " AND m.category = ?" if category else ""
        params: tuple[Any, ...] = (account_id, scope, owner_id, *((category,) if category else ()))
        return self._select_as(
            memory_row,
            f"SELECT {MEMORY_COLUMNS} FROM {MEMORY_FROM} WHERE m.account_id = ? AND m.scope = ? "
            f"AND m.owner_id = ?{clause} ORDER BY m.category, m.key LIMIT ?",
            (*params, _ALL if limit is None else limit),
        )

    def _apply_memory_writes(
        self, tx: Tx, account_id: str, writes: list[MemoryWrite], source: dict[str, Any], now: str
    ) -> None:
        """Apply planned writes; any that was planned against a stale version aborts them all.

        The version check is in the UPDATE itself: a concurrent writer's commit is seen
        after its row lock is released, so two instances never both update from one version.
        Writes go in URI order, so that two transactions lock shared memories in one order.
        """
        for write in sorted(writes, key=lambda w: w.memory.uri):
            memory = write.memory
            values = (
                self._text(memory.name), self._text(memory.abstract), self._text(memory.overview),
                self._text(memory.content), dumps(memory.stats),
            )  # fmt: skip
            if write.action == "add":
                written = tx.execute(
                    _MEMORY_INSERT + " ON CONFLICT (account_id, uri) DO NOTHING",
                    (account_id, memory.uri, memory.scope, memory.owner_id, memory.category, memory.key, *values, 1,
                     now, now, dumps(source)),
                ).rowcount  # fmt: skip
                if not written:
                    raise Conflict(f"memory {memory.uri} was created meanwhile")
            else:
                written = tx.execute(
                    "UPDATE memories SET name = ?, abstract = ?, overview = ?, content = ?, stats = ?, "
                    "version = version + 1, updated_at = ?, source = ? "
                    "WHERE account_id = ? AND uri = ? AND version = ?",
                    (*values, now, dumps(source), account_id, memory.uri, write.expected_version),
                ).rowcount
                if not written:
                    raise Conflict(f"memory {memory.uri} changed meanwhile")
            self._index_memory(tx, account_id, memory.uri, True)

    def search_memories(
        self, account_id: str, owners: dict[str, str], match: str, category: str | None, limit: int
    ) -> list[tuple[StoredMemory, float]]:
        """Ranked full-text search (name and abstract weigh most; the database's own score, higher
        is better); use breaks ties.

        `match` is the engine's query: quoted words joined by OR, which FTS5 and PostgreSQL's
        `websearch_to_tsquery` both read the same way.
        """
        hits = self._select_as(
            lambda row: (memory_row(row), float(row["score"])),
            f"{self._SEARCH} AND m.account_id = ? "
            "AND ((m.scope = 'user' AND m.owner_id = ?) OR (m.scope = 'agent' AND m.owner_id = ?))"
            + (" AND m.category = ?" if category else "")
            + " ORDER BY score DESC, active_count DESC, m.uri LIMIT ?",
            (match, account_id, owners["user"], owners["agent"], *((category,) if category else ()), limit),
        )
        return hits

    # --- export and import ---------------------------------------------------------------------------

    @contextmanager
    def export_tree(self) -> Iterator[TreeRecords]:
        """Everything, read in one snapshot: a live server (or other instances) may keep writing
        meanwhile, and the export still shows one moment (no task completed whose archive is
        still pending)."""
        with self._read() as tx:
            yield _TreeRecords(tx, self._TASK_ORDER)

    def import_tree(self, records: TreeRecords, replace: bool, now: str) -> TransferCounts:
        """Write what `records` yields in one transaction: all of it or nothing. A session, task
        or memory that already exists is ALREADY_EXISTS, unless `replace` (then the imported one
        replaces it; a replaced session's unfinished tasks fail as if it had been deleted).
        Hand it records already read (import parses its files first): the transaction holds the
        write lock, and other writers wait, for as long as iterating them takes."""
        counts = TransferCounts()
        with self._write() as tx:
            for dump in records.sessions():
                self._import_session(tx, dump, replace, now)
                counts.sessions += 1
                counts.messages += len(dump.messages)
                counts.archives += len(dump.archives)
                counts.tool_records += len(dump.tools)
            for task in records.tasks():
                self._import_task(tx, task, replace)
                counts.tasks += 1
            for memory in records.memories():
                self._import_memory(tx, memory, replace)
                counts.memories += 1
            for usage in records.context_usage():
                # Without replace, counts add up: the contexts were used in both places.
                total = tx.execute(
                    "INSERT INTO context_usage (account_id, uri, active_count, last_used_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (account_id, uri) DO UPDATE SET "
                    + (
                        "active_count = excluded.active_count, last_used_at = excluded.last_used_at"
                        if replace
                        else "active_count = context_usage.active_count + excluded.active_count, last_used_at = "
                        f"{self._GREATEST}(COALESCE(context_usage.last_used_at, ''), "
                        "COALESCE(excluded.last_used_at, ''))"
                    )
                    + " RETURNING active_count",
                    (usage.account_id, usage.uri, usage.active_count, usage.last_used_at),
                ).fetchone()["active_count"]
                if total > MAX_COUNT:  # each is at most MAX_COUNT: their sum is far inside 64 bits
                    raise InvalidArgument(
                        f"{usage.uri[:120]} would count {total} uses here, past 2**53; import with --replace "
                        "to keep the export's count"
                    )
                counts.context_usage += 1
        return counts

    def _import_session(self, tx: Tx, dump: SessionDump, replace: bool, now: str) -> None:
        row, text = dump.session, self._text
        session_id = row.session_id
        if self._lock_session(tx, session_id) is not None:
            if not replace:
                raise AlreadyExists(f"session {session_id} already exists here; import with --replace to overwrite it")
            self._drop_session(tx, session_id, now, "session replaced by an import before the task finished")
        cum = 0
        cum_at: dict[int, int] = {0: 0}
        messages = []
        for stored in dump.messages:
            cum += stored.tokens
            cum_at[stored.seq] = cum
            message = stored.message
            messages.append(
                (session_id, stored.seq, message.id, message.role,
                 dumps([p.model_dump(mode="json") for p in message.parts]), message.created_at, stored.tokens, cum)
            )  # fmt: skip
        tx.executemany(
            "INSERT INTO archives (session_id, archive_no, first_seq, last_seq, message_count, tokens, status, "
            "created_at, done_at, abstract, abstract_tokens, overview, overview_renderings, memory_diff, supplied, "
            f"error, task_id) VALUES ({', '.join('?' * 17)})",
            [
                (session_id, a.number, a.first_seq, a.last_seq, a.message_count, a.tokens, a.status, a.created_at,
                 a.done_at, text(a.abstract), a.abstract_tokens, text(a.overview),
                 dumps([[r.tokens, r.text] for r in a.overview_renderings]),
                 dumps(a.memory_diff) if a.memory_diff is not None else None, dumps(a.supplied), text(a.error),
                 a.task_id)
                for a in dump.archives
            ],
        )  # fmt: skip
        archived_through = dump.archives[-1].last_seq if dump.archives else 0
        tx.execute(
            f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({', '.join('?' * 18)})",
            (
                session_id, row.owner.account_id, row.owner.user_id, row.owner.agent_id, row.created_at,
                row.updated_at, dumps(row.metadata), len(dump.messages) + 1, archived_through, cum,
                cum_at.get(archived_through, 0), row.commit_count, row.last_commit_at, row.llm_prompt_tokens,
                row.llm_completion_tokens, dumps(row.memories_extracted), row.contexts_used, row.skills_used,
            ),
        )  # fmt: skip
        session = self._lock_session(tx, session_id, f"account_id, user_id{self._RECALL_KEY}")
        self._insert_messages(tx, session, messages, [m.message for m in dump.messages])
        for a in dump.archives:
            if a.status == "completed":
                indexed = indexed_archive(a.number, a.abstract, a.overview)
                self._index_archive(tx, session_id, session, a.number, indexed)
        tx.executemany(
            _TOOL_INSERT,
            [
                (session_id, t.tool_id, text(t.tool_name), text(t.skill_uri), dumps(t.tool_input),
                 text(t.tool_output), t.tool_status, t.message_id, t.created_at, t.updated_at)
                for t in dump.tools
            ],
        )  # fmt: skip
        tx.executemany(
            "INSERT INTO usage (session_id, kind, uri, payload, created_at, archive_no) VALUES (?, ?, ?, ?, ?, ?)",
            [(session_id, e.kind, text(e.uri), dumps(e.payload), e.created_at, e.archive_number) for e in dump.usage],
        )

    def _import_task(self, tx: Tx, task: TaskRow, replace: bool) -> None:
        if tx.execute(f"SELECT 1 FROM tasks WHERE task_id = ?{self._LOCK}", (task.task_id,)).fetchone():
            if not replace:
                raise AlreadyExists(f"task {task.task_id} already exists here; import with --replace to overwrite it")
            tx.execute("DELETE FROM tasks WHERE task_id = ?", (task.task_id,))
        # No lease: a task that was running when exported is taken over by the next worker.
        tx.execute(
            "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, "
            "updated_at, result, error, owner, lease_until, attempts, account_id, user_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
            (
                task.task_id, task.task_type, task.status, task.session_id, task.archive_number, task.created_at,
                task.updated_at, dumps(task.result) if task.result is not None else None, self._text(task.error),
                task.owner, task.attempts, task.account_id, task.user_id,
            ),
        )  # fmt: skip

    def _import_memory(self, tx: Tx, dump: MemoryDump, replace: bool) -> None:
        memory, text = dump.memory, self._text
        found = tx.execute(
            f"SELECT id FROM memories WHERE account_id = ? AND uri = ?{self._LOCK}", (dump.account_id, memory.uri)
        ).fetchone()
        if found is not None:
            if not replace:
                raise AlreadyExists(f"memory {memory.uri} already exists here; import with --replace to overwrite it")
            self._index_memory(tx, dump.account_id, memory.uri, False)
            tx.execute("DELETE FROM memories WHERE id = ?", (found["id"],))
        tx.execute(
            _MEMORY_INSERT,
            (
                dump.account_id, memory.uri, memory.scope, memory.owner_id, memory.category, memory.key,
                text(memory.name), text(memory.abstract), text(memory.overview), text(memory.content),
                dumps(memory.stats), memory.version, memory.created_at, memory.updated_at, dumps(dump.source),
            ),
        )  # fmt: skip
        self._index_memory(tx, dump.account_id, memory.uri, True)


class _TreeRecords:
    """The records of one read transaction (`SQLStore.export_tree`)."""

    def __init__(self, tx: Tx, task_order: str) -> None:
        self._tx = tx
        self._task_order = task_order

    def sessions(self) -> Iterator[SessionDump]:
        tx = self._tx
        for row in tx.execute(f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at, session_id").fetchall():
            key = (row["session_id"],)
            yield SessionDump(
                session=session_row(row),
                messages=[message_row(r) for r in tx.execute(MESSAGES_AFTER, (*key, 0)).fetchall()],
                archives=[archive_row(r) for r in tx.execute(ARCHIVES_OF, key).fetchall()],
                tools=[tool_record(r) for r in tx.execute(TOOLS_OF, key).fetchall()],
                usage=[usage_entry(r) for r in tx.execute(USAGE_OF, key).fetchall()],
            )

    def tasks(self) -> Iterator[TaskRow]:
        rows = self._tx.execute(f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY {self._task_order}").fetchall()
        yield from map(task_row, rows)

    def memories(self) -> Iterator[MemoryDump]:
        for row in self._tx.execute(
            f"SELECT {MEMORY_COLUMNS}, m.account_id, m.source FROM {MEMORY_FROM} ORDER BY m.account_id, m.uri"
        ).fetchall():
            source = stored_json(row["source"], "memory's source")
            yield MemoryDump(account_id=row["account_id"], memory=memory_row(row), source=source)

    def context_usage(self) -> Iterator[ContextUsage]:
        for row in self._tx.execute(
            "SELECT account_id, uri, active_count, last_used_at FROM context_usage ORDER BY account_id, uri"
        ).fetchall():
            yield ContextUsage(row["account_id"], row["uri"], row["active_count"], row["last_used_at"])
