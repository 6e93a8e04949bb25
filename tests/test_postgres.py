"""What only the PostgreSQL store has: migrations under an advisory lock (N instances
starting at once), a schema version it refuses to go back from, leases that a live
instance renews and a dead one lets run out, `viking-mcp migrate`, and moving data
between the embedded SQLite store and PostgreSQL with `viking-mcp export` / `import`.

The engine's own behaviour on PostgreSQL is the rest of the suite (tests marked
`both_stores`, run on each store).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, server_env
from tests.pg_server import PostgresServer
from viking_mcp.config import Settings, parse_store, redacted
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.engine.engine import owner_is_gone
from viking_mcp.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from viking_mcp.models import Owner, utc_now
from viking_mcp.store.pg_migrations import SCHEMA_VERSION
from viking_mcp.store.postgres import PostgresStore


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.encode(), params or None)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return postgres_server.fresh_url()


def cli(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viking_mcp", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=server_env(home, **env),
        check=False,
    )


# --- configuration ---------------------------------------------------------------------------------


def test_the_store_setting_takes_sqlite_or_a_postgresql_url() -> None:
    assert parse_store(None) is None and parse_store("") is None and parse_store(" sqlite ") is None
    assert parse_store("postgresql://u:p@db:5432/viking") == "postgresql://u:p@db:5432/viking"
    assert parse_store("postgres://db/viking") == "postgres://db/viking"
    with pytest.raises(InvalidArgument, match="postgresql://") as info:
        parse_store("mysql://root:secret@db/viking")
    assert "secret" not in str(info.value)
    assert Settings(store="postgresql://u:hunter2@db/v").store_label == "postgresql://u:***@db/v"


# --- migrations ------------------------------------------------------------------------------------


def test_instances_starting_at_once_apply_the_migrations_once(url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        try:
            barrier.wait(10)
            stores.append(PostgresStore(url, pool_size=2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors, errors
        assert len(stores) == 6
        assert all(store.schema_version() == SCHEMA_VERSION for store in stores)
        assert query(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        tables = {row[0] for row in query(url, "SELECT table_name FROM information_schema.tables "
                                               "WHERE table_schema = current_schema()")}  # fmt: skip
        assert {"sessions", "messages", "archives", "tasks", "tool_calls", "usage", "memories"} <= tables
    finally:
        for store in stores:
            store.close()


def test_a_newer_schema_is_refused_and_left_untouched(url: str, tmp_path: Path) -> None:
    engine = Engine(Settings(home=tmp_path, store=url))
    engine.add_message("precious", "user", "do not lose me", message_id="m1")
    engine.close()
    query(url, "UPDATE schema_version SET version = %s", SCHEMA_VERSION + 1)
    with pytest.raises(FailedPrecondition, match="upgrade viking-mcp"):
        Engine(Settings(home=tmp_path, store=url))
    assert query(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]
    assert query(url, "SELECT message_id FROM messages") == [("m1",)]


def test_the_migrate_command_on_each_store(url: str, tmp_path: Path) -> None:
    done = cli("migrate", "--json", home=tmp_path / "home", VIKING_MCP_STORE=url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"store": "postgresql", "location": url, "schema_version": SCHEMA_VERSION}
    assert query(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    again = cli("--store", url, "migrate", home=tmp_path / "home")  # the flag, and a second run changes nothing
    assert again.returncode == 0 and f"schema version {SCHEMA_VERSION}" in again.stdout, again.stderr

    embedded = cli("migrate", home=tmp_path / "home")
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout.startswith(f"sqlite store at {tmp_path / 'home'}: schema version ")
    assert (tmp_path / "home" / "viking.db").is_file()

    nowhere = cli("migrate", home=tmp_path / "home", VIKING_MCP_STORE="postgresql://nobody:pw@127.0.0.1:1/none",
                  VIKING_MCP_BUSY_TIMEOUT_MS="100")  # fmt: skip
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("viking-mcp: UNAVAILABLE: cannot connect")
    assert "pw" not in nowhere.stderr


# --- Phase 2 leases -----------------------------------------------------------------------------------


def test_a_dead_instances_lease_runs_out_and_another_takes_the_task_over(url: str, tmp_path: Path) -> None:
    """Another machine's instance claims a task and dies: no pid to check, only its lease.
    While an instance lives, its heartbeat keeps the lease from running out."""
    engine = Engine(Settings(home=tmp_path, store=url, pg_lease_seconds=1.0))
    elsewhere = PostgresStore(url, lease_seconds=1.0)
    try:
        engine.add_message("s", "user", "Summarise me, whoever you are.")
        task_id = engine.commit("s").task_id
        claimed = elsewhere.claim_phase2("other-host|4242|abc", utc_now(), time.time() + 600, owner_is_gone)
        assert claimed is not None and claimed.task_id == task_id
        time.sleep(2.5)  # over two leases: the live instance's heartbeat renewed its claim
        assert not engine.run_phase2_once()
        assert engine.get_task(task_id or "").status == "running"

        elsewhere.close()  # the instance dies: nobody renews the lease
        deadline = time.monotonic() + 10
        while not engine.run_phase2_once():
            assert time.monotonic() < deadline, "the lease never ran out"
            time.sleep(0.2)
        task = engine.store.get_task(task_id or "")
        assert task is not None and task.status == "completed" and task.attempts == 2
        assert engine.store.list_archives("s")[0].status == "completed"
    finally:
        elsewhere.close()
        engine.close()


def test_workers_of_two_instances_share_the_queue(url: str, tmp_path: Path) -> None:
    """Two instances' workers drain one queue at once: every archive is summarised exactly
    once, in order within its session, and memory updates that race are redone, not lost."""
    engines = [Engine(Settings(home=tmp_path, store=url)) for _ in range(2)]
    workers = [Phase2Worker(engine, threads=2, idle_seconds=0.1) for engine in engines]
    try:
        for n in range(3):
            for s in range(8):
                engine = engines[(s + n) % 2]
                engine.add_message(f"s{s}", "user", f"I'm Ada. In round {n} I moved to city number {s}.")
                engine.add_message(f"s{s}", "assistant", f"Noted: round {n}, city {s}.")
                engine.commit(f"s{s}")
        for worker in workers:
            worker.start()

        def all_done() -> bool:
            tasks = engines[0].store.list_tasks("session_commit", None, None, 100)
            return len(tasks) == 24 and all(t.status == "completed" for t in tasks)

        deadline = time.monotonic() + 120
        while not all_done():
            assert time.monotonic() < deadline, "the workers did not drain the queue"
            time.sleep(0.2)
        for s in range(8):
            archives = engines[1].store.list_archives(f"s{s}")
            assert [a.number for a in archives] == [1, 2, 3] and {a.status for a in archives} == {"completed"}
            done_at = [a.done_at or "" for a in archives]
            assert done_at == sorted(done_at)  # archive N+1 never finished before archive N
        tasks = engines[0].store.list_tasks("session_commit", None, None, 100)
        summarised = [t.result["archive_uri"] for t in tasks if t.result]
        assert len(summarised) == len(set(summarised)) == 24
        profile = engines[0].store.list_memories("default", "user", "default", "profile", 10)
        assert len(profile) == 1 and profile[0].version >= 2
    finally:
        for worker in workers:
            worker.stop()
        for engine in engines:
            engine.close()


def test_a_late_result_from_an_owner_that_lost_its_claim_is_dropped(url: str, tmp_path: Path) -> None:
    first = Engine(Settings(home=tmp_path, store=url))
    second = Engine(Settings(home=tmp_path, store=url))
    try:
        first.add_message("s", "user", "Two workers, one task.")
        first.commit("s")
        elsewhere = PostgresStore(url)
        stale = elsewhere.claim_phase2("gone-host|1|x", utc_now(), time.time() + 600, owner_is_gone)
        elsewhere.close()
        assert stale is not None
        query(url, "UPDATE tasks SET lease_until = 0")  # its lease ran out
        assert second.run_phase2_once()
        archive = second.store.list_archives("s")[0]
        from viking_mcp.engine.phase2 import run_phase2

        assert not run_phase2(first.store, stale, first.summariser, first.tokens, None, utc_now())
        assert second.store.list_archives("s")[0] == archive  # unchanged by the late writer
        assert second.store.get_task(stale.task_id).status == "completed"  # type: ignore[union-attr]
    finally:
        first.close()
        second.close()


def test_text_with_nul_is_kept_in_messages_and_does_not_break_phase_2(url: str, tmp_path: Path) -> None:
    """PostgreSQL text cannot hold NUL. Messages (stored as JSON) keep it exactly; what is
    derived from them in plain text columns gets U+FFFD instead of a failed write."""
    engine = Engine(Settings(home=tmp_path, store=url))
    try:
        engine.add_message("s", "user", "My name is Ada\x00 and I live in Lisbon.")
        tool = {"type": "tool", "tool_id": "t1", "tool_name": "shell", "tool_input": {"cmd": "printf '\\0'"},
                "tool_output": "a\x00b", "tool_status": "completed"}  # fmt: skip
        engine.add_message("s", "assistant", parts=[tool])
        engine.commit("s")
        assert engine.run_pending_phase2() == 1
        assert engine.store.list_archives("s")[0].status == "completed"
        messages = engine.expand_archive("s", "archive_001").messages
        assert messages[0].parts[0].text == "My name is Ada\x00 and I live in Lisbon."  # type: ignore[union-attr]
        assert messages[1].parts[0].tool_output == "a\x00b"  # type: ignore[union-attr]
        assert engine.store.tool_records("s")[0].tool_output == "a\ufffdb"
    finally:
        engine.close()


# --- search --------------------------------------------------------------------------------------------


def test_search_runs_in_the_database(url: str, tmp_path: Path) -> None:
    engine = Engine(Settings(home=tmp_path, store=url))
    try:
        engine.add_message("s", "user", "I moved to Lisbon in May. I prefer tea over coffee.")
        engine.commit("s", memories=[{"category": "preferences", "name": "drinks", "abstract": "Prefers tea."}])
        engine.run_pending_phase2()
        hits = engine.search_memories("which drinks does she prefer").memories
        assert hits and hits[0].uri.endswith("/preferences/drinks.md")
        assert all(h.score > 0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert engine.search_memories('"NEAR( OR ) AND').memories == []  # free text is never syntax
        plan = " ".join(
            row[0]
            for row in query(
                url,
                "EXPLAIN SELECT id FROM memories WHERE search @@ websearch_to_tsquery('english', 'tea')",
            )
        )
        assert "memories" in plan
    finally:
        engine.close()


# --- moving between the stores ---------------------------------------------------------------------------


def test_export_from_sqlite_import_into_postgresql_gives_the_same_context(url: str, tmp_path: Path) -> None:
    """`viking-mcp export` from the embedded store, `viking-mcp import` into PostgreSQL, and
    back: get_context answers the same at every step."""
    home = tmp_path / "home"
    embedded = Engine(Settings(home=home))
    try:
        for n in range(6):
            embedded.add_message("move", "user", f"Turn {n}: we are planning the Kyoto trip, day {n}.")
            embedded.add_message("move", "assistant", f"Noted for day {n}: book the ryokan near the station.")
            if n % 2 == 1:
                embedded.commit("move", keep_recent_count=1)
                embedded.run_pending_phase2()
        embedded.add_message("move", "user", "Still live: pack an umbrella.")
    finally:
        embedded.close()

    def context(*store: str, budget: int) -> Any:
        done = cli(*store, "session", "context", "move", "--budget", str(budget), "--json", home=home)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    budgets = (0, 60, 400, 128_000)
    before = [context(budget=b) for b in budgets]
    assert before[-1]["stats"]["totalArchives"] == 3

    exported = cli("export", str(tmp_path / "tree"), home=home)
    assert exported.returncode == 0, exported.stderr
    imported = cli("--store", url, "import", str(tmp_path / "tree"), home=home)
    assert imported.returncode == 0, imported.stderr
    assert [context("--store", url, budget=b) for b in budgets] == before

    back = cli("--store", url, "export", str(tmp_path / "back"), home=home)
    assert back.returncode == 0, back.stderr
    again = cli("--home", str(tmp_path / "again"), "import", str(tmp_path / "back"), home=home)
    assert again.returncode == 0, again.stderr
    assert [context("--home", str(tmp_path / "again"), budget=b) for b in budgets] == before


# --- review fixes: errors, the queue, the pool, the migration lock, redaction ----------------------


def add_tasks(url: str, *rows: tuple[str, str, str | None, float | None]) -> None:
    """Phase 2 tasks straight into the table: (task id, status, owner, lease until), oldest first."""
    for n, (task_id, status, owner, lease) in enumerate(rows):
        query(
            url,
            "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, updated_at, "
            "owner, lease_until) VALUES (%s, 'session_commit', %s, %s, 1, %s, %s, %s, %s)",
            task_id, status, f"s-{task_id}", f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
            f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z", owner, lease,
        )  # fmt: skip


def test_a_value_too_large_for_an_index_is_resource_exhausted_not_unavailable(url: str) -> None:
    """SQLSTATE class 54 fails the same way every time: not a "retry" error."""
    store = PostgresStore(url)
    try:
        big = "".join(f"{n:x}/{n * 7919 % 104729:x}" for n in range(3000))  # ~25 KB, hardly compressible
        with store._write() as cur:
            cur.execute("CREATE TABLE wide (v TEXT PRIMARY KEY)")
        with pytest.raises(ResourceExhausted, match="too large"), store._write() as cur:
            cur.execute("INSERT INTO wide VALUES (%s)", (big,))
    finally:
        store.close()


def test_instances_claiming_at_once_each_get_a_different_task(url: str) -> None:
    stores = [PostgresStore(url, pool_size=2) for _ in range(6)]
    try:
        for round_no in range(5):
            add_tasks(url, *((f"r{round_no}-{n}", "pending", None, None) for n in range(12)))
            barrier = threading.Barrier(len(stores))
            got: list[str | None] = []

            def claim(store: PostgresStore, who: int, barrier: threading.Barrier, got: list[str | None]) -> None:
                barrier.wait(10)
                task = store.claim_phase2(f"host|{who}|x", utc_now(), time.time() + 600, owner_is_gone)
                got.append(task.task_id if task else None)

            threads = [threading.Thread(target=claim, args=(s, i, barrier, got)) for i, s in enumerate(stores)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert None not in got and len(set(got)) == len(stores), got
            query(url, "UPDATE tasks SET status = 'completed', owner = NULL, lease_until = NULL")
    finally:
        for store in stores:
            store.close()


def test_a_pending_task_behind_many_running_ones_is_claimed(url: str) -> None:
    store = PostgresStore(url)
    try:
        live = time.time() + 3600
        add_tasks(
            url,
            *((f"busy-{n}", "running", f"far-host|{n}|x", live) for n in range(80)),
            ("late", "pending", None, None),
        )
        task = store.claim_phase2("here|1|x", utc_now(), time.time() + 600, owner_is_gone)
        assert task is not None and task.task_id == "late"
    finally:
        store.close()


def test_a_live_lease_is_never_taken_over_whatever_the_pid_check_says(url: str) -> None:
    """Containers sharing a host name each have their own pid 1: on PostgreSQL only the lease
    (on the database's clock) tells whether an owner is gone."""
    store = PostgresStore(url)
    try:
        add_tasks(url, ("live", "running", "shared-host|1|x", time.time() + 3600))
        assert store.claim_phase2("shared-host|1|y", utc_now(), time.time() + 600, lambda *_: True) is None
        query(url, "UPDATE tasks SET lease_until = 0")
        task = store.claim_phase2("shared-host|1|y", utc_now(), time.time() + 600, lambda *_: False)
        assert task is not None and task.task_id == "live" and task.owner == "shared-host|1|y"
    finally:
        store.close()


def test_pooled_connections_the_server_dropped_are_replaced_not_failed(url: str, tmp_path: Path) -> None:
    store = PostgresStore(url, pool_size=3)
    try:
        store.create_session("kept", Owner("a", "u", "g"), {}, utc_now())
        killed = query(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND datname = current_database() AND backend_type = 'client backend'",
        )
        assert killed
        for _ in range(3):
            session = store.get_session("kept")
            assert session is not None and session.session_id == "kept"
    finally:
        store.close()


def test_opening_gives_up_when_another_instance_holds_the_migration_lock(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('viking-mcp migrate ' || current_schema()))")
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"migrating .*retry"):
            PostgresStore(url, migrate_timeout=1.0)
        assert time.monotonic() - started < 10
        holder.execute("SELECT pg_advisory_unlock_all()")
    PostgresStore(url, migrate_timeout=1.0).close()


def test_a_deleted_sessions_tasks_keep_no_lease(url: str) -> None:
    store = PostgresStore(url)
    try:
        store.create_session("s-t", Owner("a", "u", "g"), {}, utc_now())
        add_tasks(url, ("t", "running", "h|1|x", time.time() + 3600))
        assert store.delete_session("s-t", utc_now())
        assert query(url, "SELECT status, owner, lease_until FROM tasks") == [("failed", None, None)]
    finally:
        store.close()


def test_a_password_in_the_query_string_is_redacted() -> None:
    assert redacted("postgresql://u@db/x?password=s3cret") == "postgresql://u@db/x?password=***"
    shown = redacted("postgresql://u:pw@db:5432/v?sslmode=require&PassWord=s3cret&application_name=a")
    assert "s3cret" not in shown and ":pw@" not in shown and "sslmode=require" in shown
    assert "application_name=a" in shown
    assert redacted("host=db password='s 3cret' user=u") == "host=db password=*** user=u"
    assert redacted("postgresql://u@db/x?sslmode=require") == "postgresql://u@db/x?sslmode=require"


def test_the_context_snapshot_reads_the_large_columns_of_the_latest_completed_archive_only(url: str) -> None:
    """As on SQLite: get_context lists every archive, but needs the overview of one."""
    store = PostgresStore(url)
    try:
        store.create_session("big", Owner("a", "u", "g"), {}, utc_now())
        for n, status in enumerate(("completed", "failed", "completed", "pending"), start=1):
            query(
                url,
                "INSERT INTO archives (session_id, archive_no, first_seq, last_seq, message_count, tokens, status, "
                "created_at, abstract, overview, overview_renderings, memory_diff, supplied, error, task_id) "
                "VALUES ('big', %s, %s, %s, 1, 5, %s, 'now', %s, %s, '[[3, \"short\"]]', '{\"added\": 1}', "
                "'{\"x\": 1}', %s, %s)",
                n, n, n, status, f"abstract {n}", f"overview {n}", f"error {n}", f"task-{n}",
            )  # fmt: skip
        snapshot = store.context_snapshot("big")
        assert snapshot is not None
        first, failed, latest, pending = snapshot.archives
        assert [a.abstract for a in snapshot.archives] == [f"abstract {n}" for n in range(1, 5)]
        assert latest.overview == "overview 3" and [r.text for r in latest.overview_renderings] == ["short"]
        assert failed.error == "error 2" and first.error is None and pending.error is None
        for archive in (first, failed, pending):
            assert archive.overview == "" and archive.overview_renderings == []
        for archive in snapshot.archives:
            assert archive.memory_diff is None and archive.supplied == {} and archive.task_id is None
        full = store.get_archive("big", 3)
        assert full is not None and full.memory_diff == {"added": 1} and full.task_id == "task-3"
    finally:
        store.close()
