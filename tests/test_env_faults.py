"""Environment faults: a full disk, a read-only store, a lock held by another process, a
damaged database file, a WAL left behind by a killed writer.

What must hold: a refused write is a clear coded error (UNAVAILABLE, retryable, for the
faults that pass), never a traceback and never a half-written change; the data already
there stays readable while writes are refused; once the fault passes, writes work again
in the same process, without a restart; a crash loses no acknowledged write.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.conftest import REPO, server_env, shown_messages, stdio_params
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.errors import ErrorCode, VikingError
from viking_mcp.mcp.server import result_text
from viking_mcp.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

UNAVAILABLE = ErrorCode.UNAVAILABLE


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Overrides conftest's: a short busy timeout, so that a held lock is noticed quickly."""
    return Settings(home=tmp_path / "home", busy_timeout_ms=300)


def seed(engine: Engine) -> None:
    """A session with a completed archive and live messages: the data a fault must not cost."""
    for i in range(6):
        engine.add_message("trip", "user" if i % 2 == 0 else "assistant", f"Ada books the Lisbon hotel, step {i}.")
    engine.commit("trip", keep_recent_count=2)
    engine.run_pending_phase2()


def snapshot(engine: Engine) -> tuple[Any, ...]:
    """What a reader sees of the seeded session."""
    info = engine.get_session("trip")
    context = engine.get_context("trip", 2000)
    archive = engine.expand_archive("trip", "archive_001")
    return (
        info.message_count,
        info.total_message_count,
        info.commit_count,
        [m.id for m in context.messages],
        context.latest_archive_overview,
        [m.id for m in archive.messages],
    )


def expect_unavailable(fn: Any, *args: Any, **kwargs: Any) -> VikingError:
    with pytest.raises(VikingError) as info:
        fn(*args, **kwargs)
    assert info.value.code == UNAVAILABLE, str(info.value)
    assert str(info.value).startswith("UNAVAILABLE: ")
    return info.value


def store_connection(engine: Engine) -> sqlite3.Connection:
    """This thread's connection of the engine's store: the test hook for SQLite's own limits."""
    store = engine.store
    assert isinstance(store, SQLiteStore)
    return store._connect()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# --- a full disk ------------------------------------------------------------------------------


def test_a_full_disk_refuses_writes_keeps_reads_and_recovers(engine: Engine, settings: Settings) -> None:
    seed(engine)
    before = snapshot(engine)
    conn = store_connection(engine)
    # The database may not grow past its current size: what a full disk looks like to SQLite.
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = "Lisbon " * 20_000
    error = expect_unavailable(engine.add_message, "trip", "user", big)
    assert "free disk space" in error.message
    expect_unavailable(engine.add_message, "brand-new", "user", big)
    # Reads still work, and see exactly what was there: no half-written message or session.
    assert snapshot(engine) == before
    assert engine.store.get_session("brand-new") is None
    # The disk has room again: the same engine writes, no restart.
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert engine.add_message("trip", "user", big).message_count == 3
    assert engine.commit("trip").archive_id == "archive_002"
    assert engine.run_pending_phase2() == 1
    assert integrity(settings.database_path) == "ok"


def test_a_full_disk_during_commit_leaves_the_live_messages_live(engine: Engine) -> None:
    seed(engine)
    for i in range(200):
        engine.add_message("trip", "user", f"more words about the trip, number {i} " * 20)
    before = snapshot(engine)
    conn = store_connection(engine)
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    # Fill the last free pages, so that Phase 1's archive row and task cannot be written.
    with pytest.raises(VikingError):
        for i in range(10_000):
            engine.add_message("filler", "user", f"filler {i} " * 200)
    filler = engine.store.get_session("filler")
    filler_count = filler.live_message_count if filler else 0
    try:
        result = engine.commit("trip")
    except VikingError as exc:
        assert exc.code == UNAVAILABLE
        assert snapshot(engine) == before  # all or nothing: the messages are still live
    else:  # it fitted after all: then it is whole
        assert result.status == "accepted" and engine.get_session("trip").message_count == 0
    conn.execute("PRAGMA max_page_count = 1073741823")
    filler_after = engine.store.get_session("filler")
    assert (filler_after.live_message_count if filler_after else 0) == filler_count
    engine.run_pending_phase2()
    engine.commit("trip")
    engine.run_pending_phase2()
    assert engine.get_session("trip").message_count == 0


# --- a read-only store ------------------------------------------------------------------------


def test_a_read_only_store_refuses_writes_and_serves_reads(engine: Engine) -> None:
    """SQLite's own read-only state (query_only), which is what a read-only directory or file
    gives a connection; works the same when the tests run as root, whom chmod does not stop."""
    seed(engine)
    before = snapshot(engine)
    conn = store_connection(engine)
    conn.execute("PRAGMA query_only = ON")
    error = expect_unavailable(engine.add_message, "trip", "user", "refused")
    assert "read-only" in error.message
    expect_unavailable(engine.commit, "trip")
    expect_unavailable(engine.create_session, "other")
    expect_unavailable(engine.delete_session, "trip")
    assert snapshot(engine) == before
    assert engine.search_memories("Lisbon").query == "Lisbon"
    conn.execute("PRAGMA query_only = OFF")
    assert engine.add_message("trip", "user", "accepted").message_count == 3


READ_ONLY_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from viking_mcp.config import Settings
    from viking_mcp.engine import Engine
    from viking_mcp.errors import VikingError
    try:
        engine = Engine(Settings(home=Path(sys.argv[1])))
        engine.add_message("trip", "user", "refused")
        print(json.dumps({"code": None}))
    except VikingError as error:
        print(json.dumps({"code": error.code.value, "message": error.message}))
    """
)


def read_only_command(home: Path) -> list[str] | None:
    """A command that runs READ_ONLY_PROBE with `home` read-only: as root (whom chmod does not
    stop) a read-only bind mount in a private mount namespace; otherwise nothing (chmod does)."""
    probe = [sys.executable, "-c", READ_ONLY_PROBE, str(home)]
    if os.geteuid() != 0:
        return probe
    if shutil.which("unshare") is None:
        return None
    quoted = " ".join(f"'{part}'" for part in probe)
    script = f"mount --bind '{home}' '{home}' && mount -o remount,ro,bind '{home}' && exec {quoted}"
    check = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / /mnt"], capture_output=True)
    return ["unshare", "-m", "sh", "-c", script] if check.returncode == 0 else None


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions or mount namespaces")
def test_a_read_only_data_directory_is_unavailable_not_a_traceback(settings: Settings) -> None:
    first = Engine(settings)
    seed(first)
    before = snapshot(first)
    first.close()
    command = read_only_command(settings.home)
    if command is None:
        pytest.skip("running as root without mount namespaces: no way to make a directory read-only for us")
    db = settings.database_path
    if os.geteuid() != 0:
        os.chmod(db, 0o444)
        os.chmod(settings.home, 0o555)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    finally:
        os.chmod(settings.home, 0o755)
        os.chmod(db, 0o644)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    # Refused at open (SQLite cannot open a WAL database it may not write beside) or at the write.
    assert answer["code"] == UNAVAILABLE.value, answer
    assert "VIKING_MCP_HOME" in answer["message"]
    assert "Traceback" not in done.stderr
    engine = Engine(settings)
    try:
        assert snapshot(engine) == before
        assert engine.add_message("trip", "user", "accepted").message_count == 3
    finally:
        engine.close()


def test_a_database_path_that_cannot_be_opened_is_unavailable(settings: Settings) -> None:
    settings.database_path.mkdir(parents=True)  # a directory where the database file should be
    with pytest.raises(VikingError) as info:
        Engine(settings).close()
    error = info.value
    assert error.code == UNAVAILABLE, str(error)
    assert str(settings.database_path) in error.message and "VIKING_MCP_HOME" in error.message


# --- a lock held by another process ---------------------------------------------------------------

LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE sessions SET updated_at = updated_at")
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the test says so
    conn.execute("ROLLBACK")
    print("released", flush=True)
    """
)


@contextmanager
def lock_held(path: Path) -> Iterator[None]:
    """Another process holds the database's write lock (BEGIN EXCLUSIVE) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
    finally:
        if proc.poll() is None:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_lock_held_past_the_busy_timeout_is_unavailable_then_passes(engine: Engine, settings: Settings) -> None:
    seed(engine)
    before = snapshot(engine)
    with lock_held(settings.database_path):
        error = expect_unavailable(engine.add_message, "trip", "user", "waits, then gives up")
        assert "locked" in error.message and "VIKING_MCP_BUSY_TIMEOUT_MS" in error.message
        expect_unavailable(engine.commit, "trip")
        # Readers never wait for writers (WAL): everything is still readable.
        assert snapshot(engine) == before
        # A second engine (a server starting meanwhile) opens and reads too.
        other = Engine(settings)
        try:
            assert snapshot(other) == before
        finally:
            other.close()
    # The lock is gone: the same engine writes again, no restart.
    assert engine.add_message("trip", "user", "accepted").message_count == 3
    assert engine.commit("trip").archive_id == "archive_002"


async def test_stdio_server_serves_reads_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    home = tmp_path / "home"
    engine = Engine(Settings(home=home))
    seed(engine)
    engine.close()
    with lock_held(home / "viking.db"):
        # Started while the lock is held: it still comes up, and serves what it can.
        async with Client(stdio_params(home, VIKING_MCP_BUSY_TIMEOUT_MS="300")) as client:
            with anyio.fail_after(30):
                refused = await client.call_tool("add_message", {"session_id": "trip", "role": "user", "content": "x"})
            assert refused.is_error and "UNAVAILABLE:" in result_text(refused)
            with anyio.fail_after(30):
                context = await client.call_tool("get_context", {"session_id": "trip", "token_budget": 2000})
            assert not context.is_error and context.structured_content is not None
            text = context.structured_content["context"]
            assert len(shown_messages(text)) == 2 and "<overview>\n## archive_001, " in text
    async with Client(stdio_params(home, VIKING_MCP_BUSY_TIMEOUT_MS="300")) as client:
        with anyio.fail_after(30):
            added = await client.call_tool("add_message", {"session_id": "trip", "role": "user", "content": "ok"})
        assert not added.is_error and added.structured_content is not None
        assert added.structured_content["message_count"] == 3


async def test_stdio_server_writes_again_once_the_lock_is_released(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with Client(stdio_params(home, VIKING_MCP_BUSY_TIMEOUT_MS="300")) as client:
        with anyio.fail_after(30):
            first = await client.call_tool("add_message", {"session_id": "s", "role": "user", "content": "one"})
        assert not first.is_error
        with lock_held(home / "viking.db"):
            with anyio.fail_after(30):
                refused = await client.call_tool("add_message", {"session_id": "s", "role": "user", "content": "x"})
                session = await client.call_tool("get_session", {"session_id": "s"})
            assert refused.is_error and "UNAVAILABLE:" in result_text(refused)
            assert session.structured_content is not None and session.structured_content["message_count"] == 1
        with anyio.fail_after(30):
            again = await client.call_tool("add_message", {"session_id": "s", "role": "user", "content": "two"})
        assert not again.is_error and again.structured_content is not None
        assert again.structured_content["message_count"] == 2


# --- a damaged database file ----------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage-header":
        path.write_bytes(os.urandom(100) + data[100:])
    elif how == "zeroed-pages":
        page = 4096
        path.write_bytes(data[:page] + bytes(len(data) - page))
    else:  # not a database at all
        path.write_bytes(b"these are not the bytes you are looking for\n" * 100)


@pytest.mark.parametrize("how", ["truncated", "garbage-header", "zeroed-pages", "not-sqlite"])
def test_a_damaged_database_is_a_clear_error_naming_the_file(settings: Settings, how: str) -> None:
    engine = Engine(settings)
    seed(engine)
    engine.close()
    db = settings.database_path
    damage(db, how)
    damaged = db.read_bytes()
    with pytest.raises(VikingError) as info:
        engine = Engine(settings)
        try:  # if opening passed, the first reads must meet the damage
            snapshot(engine)
            engine.add_message("trip", "user", "x")
        finally:
            engine.close()
    error = info.value
    assert error.code == ErrorCode.INTERNAL, str(error)
    assert str(db) in error.message and "damaged" in error.message and "backup" in error.message
    assert db.read_bytes() == damaged, "the damaged file was changed: nothing may be repaired behind the user's back"


def test_stdio_server_names_a_damaged_database_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    engine = Engine(Settings(home=home))
    seed(engine)
    engine.close()
    damage(home / "viking.db", "truncated")
    proc = subprocess.run(
        [sys.executable, "-m", "viking_mcp"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=server_env(home), timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert "damaged" in proc.stderr and str(home / "viking.db") in proc.stderr
    assert "Traceback" not in proc.stderr


# --- a WAL left behind by a killed writer ---------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from viking_mcp.config import Settings
    from viking_mcp.engine import Engine
    engine = Engine(Settings(home=Path(sys.argv[1])))
    for i in range(40):
        engine.add_message("crash", "user", f"acknowledged message {i}", message_id=f"m{i}")
    engine.commit("crash", keep_recent_count=10)
    engine.add_message("crash", "user", "the last acknowledged message", message_id="last")
    print("written", flush=True)
    sys.stdin.readline()  # killed here, never closing the engine
    """
)


def test_a_wal_left_by_a_killed_writer_is_recovered(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "written"
        wal = home / "viking.db-wal"
        assert wal.exists() and wal.stat().st_size > 0, "the writes are expected to sit in the WAL"
        # What a crash leaves on disk: the database and its WAL, copied while the writer lives ...
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(home / "viking.db", copy / "viking.db")
        shutil.copy(wal, copy / "viking.db-wal")
    finally:
        # ... and the writer itself, killed without a chance to checkpoint or close.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    for directory in (home, copy):
        engine = Engine(Settings(home=directory))
        try:
            info = engine.get_session("crash")
            assert (info.total_message_count, info.message_count, info.commit_count) == (41, 11, 1)
            archive = engine.expand_archive("crash", "archive_001", limit=None)
            assert [m.id for m in archive.messages] == [f"m{i}" for i in range(30)]
            assert engine.get_context("crash", 0).messages[-1].id == "last"
            # The interrupted Phase 2 is still queued, and runs.
            assert engine.run_pending_phase2() == 1
            assert engine.expand_archive("crash", "archive_001").status == "completed"
        finally:
            engine.close()
        assert integrity(directory / "viking.db") == "ok"
