"""The SQLite store's guarantees: schema versioning, WAL, concurrency across connections
and processes, durability of acknowledged writes, idempotent message ids, and appends
whose cost does not grow with the session.

The tests marked `both_stores` are the store contract: they run on PostgreSQL too
(tests/test_postgres.py has what only PostgreSQL has). No timing assertions: every test
is about what is stored, and bounded in time only so that a hang fails instead of
blocking the run.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import server_env
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.errors import ErrorCode, FailedPrecondition
from viking_mcp.models import CommitResult, MessageAdded, archive_id
from viking_mcp.store import migrations, sqlite as sqlite_store
from viking_mcp.store.migrations import SCHEMA_VERSION

REPO = Path(__file__).resolve().parent.parent


# --- helpers -------------------------------------------------------------------------------


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection to the database, outside the store."""
    return sqlite3.connect(path, isolation_level=None)


def pragma(path: Path, name: str) -> Any:
    conn = raw(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def all_messages(engine: Engine, session_id: str) -> list[tuple[int, str]]:
    """(seq, message_id) of every message of the session, archived or live, in seq order."""
    return [(m.seq, m.message.id) for m in engine.store.read_messages(session_id, 0, None, 0, None)]


def run_threads(target: Callable[[int], None], count: int, timeout: float = 60) -> None:
    """Run target(i) on `count` threads at once; re-raise the first error any of them hit."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            target(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    if errors:
        raise errors[0]


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement any connection opened from now on executes, with its values."""
    statements: list[str] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", connect)
    return statements


@pytest.fixture
def two_engines(settings: Settings) -> Iterator[tuple[Engine, Engine]]:
    """Two Engine objects (two stores, separate connections) on one directory."""
    first, second = Engine(settings), Engine(settings)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


# --- schema ----------------------------------------------------------------------------------


def test_new_database_is_at_the_current_schema_version(engine: Engine, settings: Settings) -> None:
    assert SCHEMA_VERSION == len(migrations.MIGRATIONS) >= 1
    assert pragma(settings.database_path, "user_version") == SCHEMA_VERSION
    assert engine.store.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]
    conn = raw(settings.database_path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert {"sessions", "messages", "archives", "tasks", "tool_calls", "usage"} <= tables


def test_reopening_does_not_rerun_migrations(settings: Settings, traced: list[str]) -> None:
    first = Engine(settings)
    first.add_message("kept", "user", "written before the reopen", message_id="m1")
    first.close()
    assert any(s.startswith("CREATE TABLE") for s in traced)
    traced.clear()

    again = Engine(settings)
    try:
        opening = list(traced)
        assert not [s for s in opening if s.upper().startswith(("CREATE", "ALTER", "DROP"))], opening
        assert not [s for s in opening if s.replace(" ", "").upper().startswith("PRAGMAUSER_VERSION=")], opening
        assert pragma(settings.database_path, "user_version") == SCHEMA_VERSION
        assert [m for _, m in all_messages(again, "kept")] == ["m1"]
        # And a third open, from a second live engine, changes nothing either.
        traced.clear()
        Engine(settings).close()
        assert not [s for s in traced if s.upper().startswith("CREATE")]
    finally:
        again.close()


def test_a_newer_schema_is_refused_and_left_untouched(settings: Settings) -> None:
    engine = Engine(settings)
    engine.add_message("precious", "user", "do not lose me", message_id="m1")
    engine.commit("precious")
    engine.add_message("precious", "assistant", "nor me", message_id="m2")
    engine.close()
    path = settings.database_path
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = list(conn.iterdump())
    conn.close()

    for _ in range(2):  # refused every time, not only the first
        with pytest.raises(FailedPrecondition) as info:
            Engine(settings)
        assert info.value.code == ErrorCode.FAILED_PRECONDITION
        assert str(info.value).startswith("FAILED_PRECONDITION: ")
        assert str(SCHEMA_VERSION + 1) in info.value.message and "upgrade" in info.value.message

    conn = raw(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert list(conn.iterdump()) == before
        assert conn.execute("SELECT message_id FROM messages ORDER BY seq").fetchall() == [("m1",), ("m2",)]
    finally:
        conn.close()


def test_wal_mode_and_durability_setting(settings: Settings, traced: list[str]) -> None:
    engine = Engine(settings)
    try:
        engine.add_message("s", "user", "hello")
        assert pragma(settings.database_path, "journal_mode") == "wal"
        assert "PRAGMA synchronous = NORMAL" in traced
    finally:
        engine.close()
    traced.clear()
    full = Engine(Settings(home=settings.home, durability="full"))
    try:
        full.add_message("s", "user", "again")
        assert "PRAGMA synchronous = FULL" in traced
        assert pragma(settings.database_path, "journal_mode") == "wal"
    finally:
        full.close()


# --- two engines in one process ---------------------------------------------------------------

THREADS = 4
PER_THREAD = 200


@pytest.mark.both_stores
def test_two_engines_append_concurrently_without_loss(two_engines: tuple[Engine, Engine]) -> None:
    shared_created: list[bool] = []

    def writer(t: int) -> None:
        engine = two_engines[t % 2]
        for n in range(PER_THREAD):
            added = engine.add_message("shared", "user", f"thread {t} message {n}", message_id=f"t{t}-{n:03d}")
            shared_created.append(added.session_created)
            own = engine.add_message(f"own-{t}", "assistant", f"own {n}", message_id=f"o{t}-{n:03d}")
            assert own.message_count == n + 1  # nobody else writes this session
            assert own.session_created == (n == 0)

    run_threads(writer, THREADS)

    reader = two_engines[0]
    shared = all_messages(reader, "shared")
    ids = [m for _, m in shared]
    assert len(ids) == THREADS * PER_THREAD
    assert Counter(ids) == Counter(f"t{t}-{n:03d}" for t in range(THREADS) for n in range(PER_THREAD))
    assert [seq for seq, _ in shared] == list(range(1, THREADS * PER_THREAD + 1))
    for t in range(THREADS):  # each writer's messages in the order it wrote them
        mine = [m for m in ids if m.startswith(f"t{t}-")]
        assert mine == sorted(mine)
    assert shared_created.count(True) == 1
    for engine in two_engines:  # both connections see the same thing
        info = engine.get_session("shared")
        assert info.message_count == info.total_message_count == THREADS * PER_THREAD
        assert [m.id for m in engine.get_context("shared", 0).messages] == ids
        assert sum(m.tokens for m in engine.store.live_messages("shared")) == info.pending_tokens
    for t in range(THREADS):
        own = all_messages(reader, f"own-{t}")
        assert own == [(n + 1, f"o{t}-{n:03d}") for n in range(PER_THREAD)]
        assert reader.get_session(f"own-{t}").message_count == PER_THREAD


@pytest.mark.both_stores
def test_two_engines_commit_concurrently_into_distinct_disjoint_archives(
    two_engines: tuple[Engine, Engine],
) -> None:
    results: list[CommitResult] = []

    def writer(t: int) -> None:
        engine = two_engines[t % 2]
        for n in range(PER_THREAD):
            engine.add_message("shared", "user", f"thread {t} message {n}", message_id=f"t{t}-{n:03d}")
            if n % 25 == 24:
                results.append(engine.commit("shared", keep_recent_count=t % 3))

    run_threads(writer, THREADS)

    engine = two_engines[1]
    info = engine.get_session("shared")
    accepted = [r for r in results if r.status == "accepted"]
    numbers = sorted(int(r.archive_id.removeprefix("archive_")) for r in accepted if r.archive_id)
    assert numbers == list(range(1, len(accepted) + 1)), "archive numbers must be distinct and gapless"
    assert info.commit_count == len(accepted) == len(engine.store.list_archives("shared"))
    assert all(r.task_id for r in accepted) and len({r.task_id for r in accepted}) == len(accepted)
    for r in results:
        if r.status == "skipped":
            assert r.archive_id is None and r.archived is False and r.archived_messages == 0

    everything = [m for _, m in all_messages(engine, "shared")]
    assert len(everything) == len(set(everything)) == THREADS * PER_THREAD
    seen: list[str] = []
    for number in range(1, info.commit_count + 1):
        detail = engine.expand_archive("shared", archive_id(number), limit=None)
        assert detail.status == "pending" and detail.next_offset is None
        assert len(detail.messages) == detail.message_count > 0
        reported = next(r for r in accepted if r.archive_id == archive_id(number))
        assert reported.archived_messages == detail.message_count
        seen += [m.id for m in detail.messages]
    live = [m.message.id for m in engine.store.live_messages("shared")]
    assert len(live) == info.message_count
    # Disjoint, complete, and in order: archive 1, archive 2, ..., then the live messages.
    assert seen + live == everything
    assert info.total_message_count == THREADS * PER_THREAD
    # No archive is summarised yet, so the context carries every message.
    assert [m.id for m in engine.get_context("shared", 1000).messages] == everything

    # Phase 2 then completes every archive, in order, from either engine.
    assert two_engines[0].run_pending_phase2() == info.commit_count
    statuses = {a.status for a in engine.store.list_archives("shared")}
    assert statuses == {"completed"}
    assert [m.id for m in engine.get_context("shared", 0).messages] == live


# --- idempotent message ids ---------------------------------------------------------------------


@pytest.mark.both_stores
def test_same_message_id_twice_stores_one_message(engine: Engine) -> None:
    first = engine.add_message("s", "user", "hello", message_id="m1")
    again = engine.add_message("s", "user", "hello", message_id="m1")
    assert not first.duplicate and again.duplicate
    assert again.message_id == "m1" and again.message_count == first.message_count == 1
    assert not again.session_created
    # A retry with different content is still the same message: the first one stays.
    changed = engine.add_message("s", "assistant", "changed", message_id="m1")
    assert changed.duplicate
    (stored,) = engine.store.live_messages("s")
    assert stored.message.role == "user" and stored.message.parts[0].text == "hello"  # type: ignore[union-attr]
    # After a commit the id is still taken: a late retry does not resurrect the message.
    engine.commit("s")
    late = engine.add_message("s", "user", "hello", message_id="m1")
    assert late.duplicate and late.message_count == 0
    info = engine.get_session("s")
    assert info.total_message_count == 1 and info.message_count == 0
    # Ids are per session.
    assert not engine.add_message("other", "user", "hello", message_id="m1").duplicate


@pytest.mark.both_stores
def test_same_message_id_across_two_engines(two_engines: tuple[Engine, Engine]) -> None:
    one, two = two_engines
    assert not one.add_message("s", "user", "hi", message_id="x1").duplicate
    assert two.add_message("s", "user", "hi", message_id="x1").duplicate
    assert one.add_message("s", "user", "hi", message_id="x1").duplicate
    outcomes: list[MessageAdded] = []

    def racer(t: int) -> None:
        outcomes.append(two_engines[t % 2].add_message("s", "user", "race", message_id="race-1"))

    run_threads(racer, 8)
    assert sorted(o.duplicate for o in outcomes) == [False] + [True] * 7
    assert [m for _, m in all_messages(one, "s")] == ["x1", "race-1"]
    assert two.get_session("s").message_count == 2


# --- search ranking ----------------------------------------------------------------------------


@pytest.mark.both_stores
def test_search_scores_are_fractions_of_the_best_hit_on_every_store(engine: Engine) -> None:
    """Each database ranks with its own full-text search (FTS5's BM25, PostgreSQL's ts_rank,
    name and abstract weighing most); the scores shown are on one scale on both: the best hit
    1.0, every other its relevance as a fraction of the best's. So the only memory of a small
    store, which raw BM25 scores near 0, shows 1.00 (README, "Search")."""
    engine.add_message("s", "user", "noted")
    engine.commit("s", abstract="a", overview="o", memories=[
        {"category": "preferences", "name": "tea", "abstract": "Prefers green tea in the morning."},
    ])  # fmt: skip
    engine.run_pending_phase2()
    (only,) = engine.search_memories("green tea").memories
    assert only.score == 1.0
    engine.add_message("s", "user", "noted again")
    engine.commit("s", abstract="a", overview="o", memories=[
        {"category": "events", "abstract": "Had coffee, then tea, with Bea in Porto."},
        {"category": "entities", "name": "Bea", "abstract": "Bea: Ada's sister, lives in Porto."},
    ])  # fmt: skip
    engine.run_pending_phase2()
    hits = engine.search_memories("green tea").memories
    assert [h.abstract for h in hits] == [
        "Prefers green tea in the morning.",
        "Had coffee, then tea, with Bea in Porto.",
    ]
    assert hits[0].score == 1.0 and 0 < hits[1].score < 1
    assert engine.search_memories("Porto").memories[0].score == 1.0


# --- two processes ---------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from viking_mcp.config import Settings
    from viking_mcp.engine import Engine

    home, tag, count, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = sys.argv[5] if len(sys.argv) > 5 else None
    engine = Engine(Settings(home=Path(home), phase2_workers=0, store=store))
    engine.tokens.warm_up()
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    archives = []
    for i in range(count):
        added = engine.add_message("shared", "user", f"{tag} says {i}", message_id=f"{tag}-{i:04d}")
        assert not added.duplicate
        if (i + 1) % every == 0:
            result = engine.commit("shared")
            if result.archive_id is not None:
                archives.append(f"{result.archive_id}:{result.archived_messages}")
    engine.close()
    print(" ".join(archives), flush=True)
    """
)


def spawn(script: str, *args: str, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=server_env(home),
    )


@pytest.mark.slow
@pytest.mark.both_stores
def test_two_processes_share_one_directory(settings: Settings) -> None:
    count, every = 300, 50
    # The database exists before both start: opening a fresh one at once is its own test below.
    Engine(settings).close()
    store = [settings.store] if settings.store else []
    procs = [spawn(WRITER, str(settings.home), tag, str(count), str(every), *store, home=settings.home) for tag in "AB"]
    try:
        for proc in procs:  # both ready before either writes: the writes overlap
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                pytest.fail(f"writer did not start: {line!r} {proc.communicate(timeout=10)[1]}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    claimed = [item.split(":") for out, _ in outputs for item in out.split()]

    engine = Engine(settings)
    try:
        messages = all_messages(engine, "shared")
        ids = [m for _, m in messages]
        expected = [f"{tag}-{i:04d}" for tag in "AB" for i in range(count)]
        assert Counter(ids) == Counter(expected), "a message was lost or duplicated"
        assert [seq for seq, _ in messages] == list(range(1, 2 * count + 1))
        for tag in "AB":
            mine = [m for m in ids if m.startswith(f"{tag}-")]
            assert mine == sorted(mine)
        names = [name for name, _ in claimed]
        assert len(names) == len(set(names)), "two commits got the same archive number"
        archives = engine.store.list_archives("shared")
        info = engine.get_session("shared")
        assert sorted(names) == [archive_id(a.number) for a in archives]
        assert [a.number for a in archives] == list(range(1, len(archives) + 1))
        assert info.commit_count == len(archives) >= 1
        assert {archive_id(a.number): a.message_count for a in archives} == {n: int(c) for n, c in claimed}
        archived: list[str] = []
        for archive in archives:
            archived += [m.id for m in engine.expand_archive("shared", archive_id(archive.number), limit=None).messages]
        live = [m.message.id for m in engine.store.live_messages("shared")]
        assert archived + live == ids
        assert info.total_message_count == 2 * count and info.message_count == len(live)
    finally:
        engine.close()


def test_opening_a_fresh_directory_waits_for_another_connection(settings: Settings) -> None:
    """Two servers started together on a new directory: the one that loses the race must wait
    (up to the busy timeout), not fail. Simulated deterministically: another connection holds
    a write transaction on the new, not-yet-WAL database for 0.3 s, as the first server does
    while it switches the new file to WAL. (With two real processes started together on a new
    directory, one of them failed this way in 8 of 10 tries.)"""
    settings.home.mkdir(parents=True)
    other = sqlite3.connect(settings.database_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE scratch (x)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        engine = Engine(settings)
        try:
            assert engine.add_message("s", "user", "hello").session_created
        finally:
            engine.close()
    finally:
        release.join()
        other.close()


KILLED = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from viking_mcp.config import Settings
    from viking_mcp.engine import Engine

    engine = Engine(Settings(home=Path(sys.argv[1]), phase2_workers=0))
    i = 0
    while True:
        message_id = f"m-{i:06d}"
        engine.add_message("victim", "user", f"message number {i} " * 5, message_id=message_id)
        print(message_id, flush=True)
        if i % 37 == 36:
            engine.commit("victim", keep_recent_count=3)
        i += 1
    """
)


@pytest.mark.slow
def test_acknowledged_messages_survive_sigkill(settings: Settings) -> None:
    proc = spawn(KILLED, str(settings.home), home=settings.home)
    guard = threading.Timer(45, proc.kill)  # never hang the run if the child stops printing
    guard.start()
    acknowledged: list[str] = []
    try:
        assert proc.stdout is not None
        while len(acknowledged) < 400:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(acknowledged) == 400, proc.stderr.read() if proc.stderr else ""

    assert pragma(settings.database_path, "integrity_check") == "ok"
    engine = Engine(settings)
    try:
        stored = Counter(m for _, m in all_messages(engine, "victim"))
        missing = [m for m in acknowledged if stored[m] == 0]
        assert not missing, f"{len(missing)} acknowledged messages were lost, first {missing[:5]}"
        assert all(count == 1 for count in stored.values()), "a message was stored twice"
        info = engine.get_session("victim")
        assert info.total_message_count == sum(stored.values()) >= 400
        archives = engine.store.list_archives("victim")
        assert info.commit_count == len(archives) >= 10
        assert sum(a.message_count for a in archives) + info.message_count == info.total_message_count
        # The directory is still usable: the next append and commit go through.
        assert engine.add_message("victim", "user", "after the crash").message_count == info.message_count + 1
        assert engine.commit("victim").archive_id == archive_id(len(archives) + 1)
    finally:
        engine.close()


# --- append cost ------------------------------------------------------------------------------


def test_append_does_not_read_the_session(traced: list[str], settings: Settings) -> None:
    """An append touches a bounded set of rows through indexes, however long the session is."""
    engine = Engine(settings)
    try:
        check_append_statements(engine, settings, traced)
    finally:
        engine.close()


def check_append_statements(engine: Engine, settings: Settings, traced: list[str]) -> None:
    for n in range(300):
        engine.add_message("long", "user", f"message {n}", message_id=f"m{n}")
    engine.add_message("short", "user", "first")

    def statements_of(fn: Callable[[], Any]) -> list[str]:
        traced.clear()
        fn()
        return list(traced)

    long_append = statements_of(lambda: engine.add_message("long", "user", "one more", message_id="z1"))
    short_append = statements_of(lambda: engine.add_message("short", "user", "one more", message_id="z1"))
    assert len(long_append) == len(short_append)

    def shape(statement: str) -> str:  # the statement with its values blanked out
        return re.sub(r"\b\d+\b", "?", re.sub(r"'(?:[^']|'')*'", "?", statement))

    assert [shape(s) for s in long_append] == [shape(s) for s in short_append]
    conn = raw(settings.database_path)
    try:
        for statement in long_append:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}"))
            assert "SCAN" not in plan.upper(), (statement, plan)
            if " messages " in statement:
                assert "message_id" in statement, f"an append reads messages other than by id: {statement}"
    finally:
        conn.close()


# --- Phase 2 queue cost -----------------------------------------------------------------------


def test_looking_for_phase2_work_reads_no_archive_row(engine: Engine, settings: Settings) -> None:
    """A worker looks at the queue after every task and every few seconds. Archive rows hold
    their summaries (tens of kB each), so the look must read an index, never the rows: found
    by the crash soak, where a queue of 585 tasks made each look take 3.5 s and each Phase 2
    run 4 s (0.13 s with the index), so the backlog only grew."""
    for n in range(3):
        engine.add_message("s", "user", f"message {n}")
        engine.commit("s")
    assert len(engine.store.list_tasks("session_commit", "pending", None, 10)) == 3
    conn = raw(settings.database_path)
    try:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sqlite_store.RUNNABLE_PHASE2}")]
        runnable = [row[0] for row in conn.execute(sqlite_store.RUNNABLE_PHASE2)]
    finally:
        conn.close()
    archive_steps = [step for step in plan if step.startswith(("SEARCH b ", "SCAN b"))]
    assert archive_steps and all("COVERING INDEX" in step for step in archive_steps), plan
    assert len(runnable) == 1  # only archive_001's task: the others wait for the one before


def test_wal_checkpoints_run_on_the_store_thread_not_in_the_writing_call(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 10)
    checkpoints: list[str] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        thread = threading.current_thread().name
        conn.set_trace_callback(lambda sql: checkpoints.append(thread) if "wal_checkpoint" in sql else None)
        return conn

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", connect)
    engine = Engine(settings)
    store = engine.store
    assert isinstance(store, sqlite_store.SQLiteStore)
    try:
        # The calls' own connections checkpoint only far later than SQLite's 1,000 pages.
        assert store._connect().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 4_000
        for index in range(30):
            engine.add_message("s", "user", content=f"message {index}")
        checkpointer = store._checkpointer
        assert checkpointer is not None and checkpointer.is_alive()
        for _ in range(500):
            if checkpoints:
                break
            threading.Event().wait(0.01)
        assert set(checkpoints) == {"viking-checkpoint"}
        assert len(all_messages(engine, "s")) == 30
    finally:
        engine.close()
    assert not checkpointer.is_alive()
