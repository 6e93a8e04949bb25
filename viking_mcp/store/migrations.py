"""The SQLite schema, as numbered migrations. `PRAGMA user_version` records how far a
database has come; each migration runs once, inside the same transaction that bumps it.

Never edit a released migration: add the next one.
"""

from __future__ import annotations

# A step of a migration that is not SQL: every message and completed archive stored before
# recall existed is indexed, with the text indexing them at write time gives (store/sql.py).
INDEX_RECALL = "-- viking-mcp: index every message and archive for recall"

MIGRATIONS: list[list[str]] = [
    # 1: sessions, messages, archives, tasks, tool records, usage.
    [
        """CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            next_seq INTEGER NOT NULL DEFAULT 1,
            archived_through INTEGER NOT NULL DEFAULT 0,
            total_tokens INTEGER NOT NULL DEFAULT 0,
            archived_tokens INTEGER NOT NULL DEFAULT 0,
            commit_count INTEGER NOT NULL DEFAULT 0,
            last_commit_at TEXT,
            llm_prompt_tokens INTEGER NOT NULL DEFAULT 0,
            llm_completion_tokens INTEGER NOT NULL DEFAULT 0,
            memories_extracted TEXT NOT NULL DEFAULT '{}',
            contexts_used INTEGER NOT NULL DEFAULT 0,
            skills_used INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX sessions_by_created ON sessions (created_at, session_id)",
        # Messages are numbered per session (seq); an archive is a range of seq.
        # cum_tokens is the running total, so any range's tokens is one subtraction.
        """CREATE TABLE messages (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            role TEXT NOT NULL,
            parts TEXT NOT NULL,
            created_at TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            cum_tokens INTEGER NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX messages_by_id ON messages (session_id, message_id)",
        """CREATE TABLE archives (
            session_id TEXT NOT NULL,
            archive_no INTEGER NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            message_count INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            done_at TEXT,
            abstract TEXT NOT NULL DEFAULT '',
            abstract_tokens INTEGER NOT NULL DEFAULT 0,
            overview TEXT NOT NULL DEFAULT '',
            overview_renderings TEXT NOT NULL DEFAULT '[]',
            memory_diff TEXT,
            supplied TEXT NOT NULL DEFAULT '{}',
            error TEXT,
            task_id TEXT,
            PRIMARY KEY (session_id, archive_no)
        ) WITHOUT ROWID""",
        """CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            task_type TEXT NOT NULL,
            status TEXT NOT NULL,
            session_id TEXT NOT NULL,
            archive_no INTEGER,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            result TEXT,
            error TEXT,
            owner TEXT,
            lease_until REAL,
            attempts INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX tasks_by_status ON tasks (status, created_at)",
        "CREATE INDEX tasks_by_session ON tasks (session_id, created_at)",
        "CREATE INDEX tasks_by_created ON tasks (created_at)",
        """CREATE TABLE tool_calls (
            session_id TEXT NOT NULL,
            tool_id TEXT NOT NULL,
            tool_name TEXT NOT NULL,
            skill_uri TEXT,
            tool_input TEXT NOT NULL,
            tool_output TEXT NOT NULL,
            tool_status TEXT NOT NULL,
            message_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (session_id, tool_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE usage (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            uri TEXT NOT NULL,
            payload TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX usage_by_session ON usage (session_id, id)",
    ],
    # 2: long-term memories with full-text search; usage rows tied to the archive that
    # consumed them; how often each context (memory or resource) was used.
    [
        """CREATE TABLE memories (
            id INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL,
            uri TEXT NOT NULL,
            scope TEXT NOT NULL,
            owner_id TEXT NOT NULL,
            category TEXT NOT NULL,
            key TEXT NOT NULL,
            name TEXT,
            abstract TEXT NOT NULL,
            overview TEXT NOT NULL,
            content TEXT NOT NULL,
            stats TEXT NOT NULL DEFAULT '{}',
            version INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE UNIQUE INDEX memories_by_uri ON memories (account_id, uri)",
        "CREATE INDEX memories_by_owner ON memories (account_id, scope, owner_id, category)",
        # Written in the same transaction as the memory; rowid = memories.id.
        """CREATE VIRTUAL TABLE memories_fts USING fts5 (
            name, abstract, overview, content, tokenize = 'porter unicode61'
        )""",
        "ALTER TABLE usage ADD COLUMN archive_no INTEGER",
        "CREATE INDEX usage_by_archive ON usage (session_id, archive_no)",
        """CREATE TABLE context_usage (
            account_id TEXT NOT NULL,
            uri TEXT NOT NULL,
            active_count INTEGER NOT NULL DEFAULT 0,
            last_used_at TEXT,
            PRIMARY KEY (account_id, uri)
        ) WITHOUT ROWID""",
    ],
    # 3: tasks remember whose they are, so that one user never lists another's (and a
    # task outlives its session's deletion).
    [
        "ALTER TABLE tasks ADD COLUMN account_id TEXT",
        "ALTER TABLE tasks ADD COLUMN user_id TEXT",
        """UPDATE tasks SET account_id = (SELECT s.account_id FROM sessions s WHERE s.session_id = tasks.session_id),
            user_id = (SELECT s.user_id FROM sessions s WHERE s.session_id = tasks.session_id)""",
        "CREATE INDEX tasks_by_owner ON tasks (account_id, user_id, created_at)",
    ],
    # 4: get_context lists every archive of a session; this index holds all it reads of
    # them, so the listing never touches the archive rows, whose overviews and memory
    # diffs make them large (15 ms for 200 archives without it, 0.3 ms with it). The
    # check that makes a Phase 2 task runnable (every earlier archive of its session done)
    # reads it too: without it, a claim read every earlier archive in full for every
    # queued task, seconds once a few hundred tasks were queued (found by the crash soak).
    [
        """CREATE INDEX archives_listing ON archives (
            session_id, archive_no, status, first_seq, last_seq, message_count, tokens, created_at, done_at,
            abstract_tokens, abstract, error
        )""",
    ],
    # 5: fairness between tenants. Listing a user's sessions reads that user's entries of
    # an owner-first index, not every session of every user (0.35 s a page for a user with
    # none, beside another user's million). Phase 2 takes turns between tenants (store/sql.py,
    # "The Phase 2 queue"): tasks_queue finds each tenant's queued tasks, and phase2_turns
    # records when each tenant was last served.
    [
        "CREATE INDEX sessions_by_owner ON sessions (account_id, user_id, created_at, session_id)",
        """CREATE INDEX tasks_queue ON tasks (
            status, task_type, (COALESCE(account_id, '') || '/' || COALESCE(user_id, '')), created_at
        )""",
        "CREATE TABLE phase2_turns (tenant TEXT PRIMARY KEY, last_turn INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE INDEX phase2_turns_by_turn ON phase2_turns (last_turn)",
    ],
    # 6: recall (search over messages and archives). One FTS5 table holds both, so one IDF
    # ranks them. A document's rowid is derived from its session's doc_base (never reused
    # while the session lives): a message's is doc_base << 32 | seq, an archive's
    # doc_base << 32 | 1 << 31 | archive_no, so one session's documents are one rowid range,
    # which FTS5 searches (and deletes) without reading the rest. `tags` holds the owner's
    # tenant tag and the kind ("qkind1" message, "qkind2" archive), filters that ranking
    # weighs at 0. recall_vocab gives each term's document count (a query's weights).
    # Messages are indexed in batches, not in the append's own transaction (FTS5 writes a
    # segment per transaction: 0.1 ms an append): indexed_through is how far a session's
    # are, and sessions_recall_backlog lists the sessions whose are not all (store/sqlite.py,
    # `catch_up_recall`).
    [
        "ALTER TABLE sessions ADD COLUMN doc_base INTEGER",
        "UPDATE sessions SET doc_base = rowid",
        "CREATE UNIQUE INDEX sessions_by_doc_base ON sessions (doc_base)",
        """CREATE TRIGGER sessions_doc_base AFTER INSERT ON sessions WHEN NEW.doc_base IS NULL BEGIN
            UPDATE sessions SET doc_base = (SELECT COALESCE(MAX(doc_base), 0) + 1 FROM sessions)
            WHERE session_id = NEW.session_id;
        END""",
        "CREATE VIRTUAL TABLE recall_fts USING fts5 (body, tags, tokenize = 'porter unicode61')",
        "CREATE VIRTUAL TABLE recall_vocab USING fts5vocab (recall_fts, 'row')",
        "ALTER TABLE sessions ADD COLUMN indexed_through INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX sessions_recall_backlog ON sessions (session_id) WHERE indexed_through < next_seq - 1",
        INDEX_RECALL,
        "UPDATE sessions SET indexed_through = next_seq - 1",  # what INDEX_RECALL indexed
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)
