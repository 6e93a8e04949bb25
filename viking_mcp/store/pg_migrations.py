"""The PostgreSQL schema, as numbered migrations. The `schema_version` table records how
far a database has come; each migration runs once, in the transaction that bumps it,
under an advisory lock, so N instances starting at once apply it exactly once.

The tables mirror the SQLite ones (store/migrations.py) so that both stores answer the
same; where PostgreSQL differs:
- text that is sorted or compared (ids, timestamps, keys) uses the "C" collation, so
  ordering is bytewise, as in SQLite, whatever the database's locale;
- JSON is kept as text, byte for byte (jsonb would reorder an object's keys);
- full-text search is a weighted `tsvector` column with a GIN index, not FTS5;
- a sequence column (`seq`, `id`) keeps insertion order where SQLite has its rowid.

Never edit a released migration: add the next one.
"""

from __future__ import annotations

from viking_mcp.store.migrations import INDEX_RECALL

# Every text column sorts bytewise, as SQLite's do.
_T = 'TEXT COLLATE "C"'

MIGRATIONS: list[list[str]] = [
    # 1: everything the SQLite store has at its schema version 3.
    [
        f"""CREATE TABLE sessions (
            session_id {_T} PRIMARY KEY,
            account_id {_T} NOT NULL,
            user_id {_T} NOT NULL,
            agent_id {_T} NOT NULL,
            created_at {_T} NOT NULL,
            updated_at {_T} NOT NULL,
            metadata {_T} NOT NULL DEFAULT '{{}}',
            next_seq BIGINT NOT NULL DEFAULT 1,
            archived_through BIGINT NOT NULL DEFAULT 0,
            total_tokens BIGINT NOT NULL DEFAULT 0,
            archived_tokens BIGINT NOT NULL DEFAULT 0,
            commit_count INTEGER NOT NULL DEFAULT 0,
            last_commit_at {_T},
            llm_prompt_tokens BIGINT NOT NULL DEFAULT 0,
            llm_completion_tokens BIGINT NOT NULL DEFAULT 0,
            memories_extracted {_T} NOT NULL DEFAULT '{{}}',
            contexts_used INTEGER NOT NULL DEFAULT 0,
            skills_used INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX sessions_by_created ON sessions (created_at, session_id)",
        "CREATE INDEX sessions_by_owner ON sessions (account_id, user_id, created_at, session_id)",
        f"""CREATE TABLE messages (
            session_id {_T} NOT NULL,
            seq BIGINT NOT NULL,
            message_id {_T} NOT NULL,
            role {_T} NOT NULL,
            parts {_T} NOT NULL,
            created_at {_T} NOT NULL,
            tokens BIGINT NOT NULL,
            cum_tokens BIGINT NOT NULL,
            PRIMARY KEY (session_id, seq)
        )""",
        "CREATE UNIQUE INDEX messages_by_id ON messages (session_id, message_id)",
        f"""CREATE TABLE archives (
            session_id {_T} NOT NULL,
            archive_no INTEGER NOT NULL,
            first_seq BIGINT NOT NULL,
            last_seq BIGINT NOT NULL,
            message_count BIGINT NOT NULL,
            tokens BIGINT NOT NULL,
            status {_T} NOT NULL,
            created_at {_T} NOT NULL,
            done_at {_T},
            abstract {_T} NOT NULL DEFAULT '',
            abstract_tokens INTEGER NOT NULL DEFAULT 0,
            overview {_T} NOT NULL DEFAULT '',
            overview_renderings {_T} NOT NULL DEFAULT '[]',
            memory_diff {_T},
            supplied {_T} NOT NULL DEFAULT '{{}}',
            error {_T},
            task_id {_T},
            PRIMARY KEY (session_id, archive_no)
        )""",
        # The Phase 2 queue. lease_until is seconds since the epoch on the database's clock,
        # so instances on machines whose clocks disagree still agree on when a lease ends.
        f"""CREATE TABLE tasks (
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            task_id {_T} PRIMARY KEY,
            task_type {_T} NOT NULL,
            status {_T} NOT NULL,
            session_id {_T} NOT NULL,
            archive_no INTEGER,
            created_at {_T} NOT NULL,
            updated_at {_T} NOT NULL,
            result {_T},
            error {_T},
            owner {_T},
            lease_until DOUBLE PRECISION,
            attempts INTEGER NOT NULL DEFAULT 0,
            account_id {_T},
            user_id {_T}
        )""",
        "CREATE INDEX tasks_by_status ON tasks (status, created_at, seq)",
        "CREATE INDEX tasks_by_session ON tasks (session_id, created_at)",
        "CREATE INDEX tasks_by_created ON tasks (created_at, seq)",
        "CREATE INDEX tasks_by_owner ON tasks (account_id, user_id, created_at)",
        f"""CREATE TABLE tool_calls (
            session_id {_T} NOT NULL,
            tool_id {_T} NOT NULL,
            tool_name {_T} NOT NULL,
            skill_uri {_T},
            tool_input {_T} NOT NULL,
            tool_output {_T} NOT NULL,
            tool_status {_T} NOT NULL,
            message_id {_T} NOT NULL,
            created_at {_T} NOT NULL,
            updated_at {_T} NOT NULL,
            PRIMARY KEY (session_id, tool_id)
        )""",
        f"""CREATE TABLE usage (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id {_T} NOT NULL,
            kind {_T} NOT NULL,
            uri {_T} NOT NULL,
            payload {_T} NOT NULL DEFAULT '{{}}',
            created_at {_T} NOT NULL,
            archive_no INTEGER
        )""",
        "CREATE INDEX usage_by_session ON usage (session_id, id)",
        "CREATE INDEX usage_by_archive ON usage (session_id, archive_no)",
        # Name and abstract weigh most in search, as in the SQLite store's BM25 weights.
        f"""CREATE TABLE memories (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            account_id {_T} NOT NULL,
            uri {_T} NOT NULL,
            scope {_T} NOT NULL,
            owner_id {_T} NOT NULL,
            category {_T} NOT NULL,
            key {_T} NOT NULL,
            name {_T},
            abstract {_T} NOT NULL,
            overview {_T} NOT NULL,
            content {_T} NOT NULL,
            stats {_T} NOT NULL DEFAULT '{{}}',
            version INTEGER NOT NULL DEFAULT 1,
            created_at {_T} NOT NULL,
            updated_at {_T} NOT NULL,
            source {_T} NOT NULL DEFAULT '{{}}',
            search tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('english'::regconfig, coalesce(name, '')), 'A')
                || setweight(to_tsvector('english'::regconfig, abstract), 'B')
                || setweight(to_tsvector('english'::regconfig, overview), 'C')
                || setweight(to_tsvector('english'::regconfig, content), 'D')
            ) STORED
        )""",
        "CREATE UNIQUE INDEX memories_by_uri ON memories (account_id, uri)",
        "CREATE INDEX memories_by_owner ON memories (account_id, scope, owner_id, category)",
        "CREATE INDEX memories_search ON memories USING GIN (search)",
        f"""CREATE TABLE context_usage (
            account_id {_T} NOT NULL,
            uri {_T} NOT NULL,
            active_count INTEGER NOT NULL DEFAULT 0,
            last_used_at {_T},
            PRIMARY KEY (account_id, uri)
        )""",
    ],
    # 2: Phase 2 takes turns between tenants (store/sql.py, "The Phase 2 queue"), as the
    # SQLite store's migration 5 (whose owner-first session index is already in 1 here).
    [
        """CREATE INDEX tasks_queue ON tasks (
            status, task_type, (COALESCE(account_id, '') || '/' || COALESCE(user_id, '')), created_at, seq
        )""",
        f"CREATE TABLE phase2_turns (tenant {_T} PRIMARY KEY, last_turn BIGINT NOT NULL)",
        "CREATE INDEX phase2_turns_by_turn ON phase2_turns (last_turn)",
    ],
    # 3: recall (search over messages and archives), as the SQLite store's migration 6: a
    # tsvector per message and per completed archive, written with the row, GIN-indexed.
    # (Building the indexes locks the tables for as long as it takes: minutes on millions.)
    [
        "ALTER TABLE messages ADD COLUMN search tsvector",
        "ALTER TABLE archives ADD COLUMN search tsvector",
        INDEX_RECALL,
        "CREATE INDEX messages_search ON messages USING GIN (search)",
        "CREATE INDEX archives_search ON archives USING GIN (search)",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)
