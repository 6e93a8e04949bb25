"""The engine as a user of the library sees it: sessions, messages, commits, tasks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from viking_mcp import Client
from viking_mcp.config import Settings
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.errors import AlreadyExists, InvalidArgument, NotFound
from viking_mcp.models import ContextPart, TextPart, ToolPart
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary

# The engine behaves the same on both stores.
pytestmark = pytest.mark.both_stores

# --- sessions --------------------------------------------------------------------------------


def test_create_get_and_the_stats_a_new_session_has(engine: Engine) -> None:
    created = engine.create_session("s1", metadata={"project": "apollo"}, user_id="ada")
    assert created.session_id == "s1" and created.uri == "viking://session/s1"
    assert created.user.model_dump() == {"account_id": "default", "user_id": "ada", "agent_id": "default"}
    info = engine.get_session("s1")
    assert info.message_count == 0 and info.total_message_count == 0 and info.commit_count == 0
    assert info.memories_extracted == {
        "profile": 0, "preferences": 0, "entities": 0, "events": 0,
        "cases": 0, "patterns": 0, "tools": 0, "skills": 0, "total": 0,
    }  # fmt: skip
    assert info.last_commit_at is None and info.pending_tokens == 0
    assert info.llm_token_usage.model_dump() == {"prompt": 0, "completion": 0, "total": 0}
    assert info.metadata == {"project": "apollo"}
    with pytest.raises(AlreadyExists):
        engine.create_session("s1")
    assert len(engine.create_session().session_id) == 32  # a fresh random id


def test_get_session_auto_create(engine: Engine) -> None:
    with pytest.raises(NotFound):
        engine.get_session("nobody")
    assert engine.get_session("nobody", auto_create=True).session_id == "nobody"
    assert engine.get_session("nobody").message_count == 0


def test_list_sessions_pages_with_a_cursor(engine: Engine) -> None:
    for i in range(7):
        engine.create_session(f"s{i}")
    seen: list[str] = []
    cursor = None
    while True:
        page = engine.list_sessions(limit=3, cursor=cursor)
        seen += [s.session_id for s in page.sessions]
        cursor = page.next_cursor
        if cursor is None:
            break
        engine.create_session(f"late{len(seen)}")  # new sessions do not disturb the walk
    assert seen == [f"s{i}" for i in reversed(range(7))]  # newest first, each once
    assert len(engine.list_sessions(limit=500).sessions) == 9


def test_update_merges_metadata(engine: Engine) -> None:
    engine.create_session("s", metadata={"a": 1, "b": {"x": 1}})
    merged = engine.update_session("s", {"b": {"y": 2}, "c": 3})
    assert merged.metadata == {"a": 1, "b": {"y": 2}, "c": 3}  # keys merged, values replaced
    assert engine.update_session("s", {"a": None}).metadata == {"b": {"y": 2}, "c": 3}
    assert engine.get_session("s").metadata == {"b": {"y": 2}, "c": 3}
    with pytest.raises(NotFound):
        engine.update_session("missing", {"a": 1})


def test_delete_removes_everything_of_the_session(engine: Engine) -> None:
    engine.add_message("s", "user", parts=[{"type": "tool", "tool_id": "t1", "tool_name": "grep"}])
    engine.record_usage("s", contexts=["viking://resources/doc"])
    commit = engine.commit("s")  # Phase 2 left pending
    engine.add_message("s", "user", content="live")
    engine.delete_session("s")
    with pytest.raises(NotFound):
        engine.get_session("s")
    assert engine.store.list_archives("s") == []
    assert engine.store.tool_records("s") == []
    assert engine.store.usage("s").contexts == []
    assert engine.get_task(commit.task_id or "").status == "failed"  # its work no longer exists
    assert engine.run_pending_phase2() == 0
    with pytest.raises(NotFound):
        engine.delete_session("s")
    # The id can be used again, from scratch.
    assert engine.add_message("s", "user", content="again").session_created is True


def test_context_uris_are_bounded_and_a_long_one_never_breaks_phase_2(engine: Engine) -> None:
    """Found in review: on PostgreSQL a 4 kB context URI failed Phase 2 at every try (too
    long for the usage counters' index) and wedged the session until skipped."""
    from viking_mcp.engine.engine import MAX_CONTEXT_URI_BYTES

    engine.add_message("s", "user", content="hello")
    longest = "https://example.com/" + "é" * ((MAX_CONTEXT_URI_BYTES - 20) // 2)
    assert len(longest.encode()) == MAX_CONTEXT_URI_BYTES
    with pytest.raises(InvalidArgument, match="context URI"):
        engine.record_usage("s", contexts=[longest + "x"])
    assert engine.store.usage("s").contexts == []
    engine.record_usage("s", contexts=[longest])
    commit = engine.commit("s")
    engine.run_pending_phase2()
    assert engine.get_task(commit.task_id or "").status == "completed"


# --- messages ---------------------------------------------------------------------------------


def test_add_message_creates_the_session_and_says_so(engine: Engine) -> None:
    first = engine.add_message("new", "user", content="hello")
    assert first.session_created is True and first.message_count == 1
    assert first.message_id.startswith("msg_")
    second = engine.add_message("new", "assistant", content="hi")
    assert second.session_created is False and second.message_count == 2


def test_parts_mode_with_the_three_part_types(engine: Engine) -> None:
    parts = [
        TextPart(text="Look at this."),
        ContextPart(uri="viking://resources/spec.md", context_type="resource", abstract="The spec."),
        ToolPart(
            tool_id="c1", tool_name="search", tool_input={"q": "spec"}, tool_output="3 hits", tool_status="running"
        ),
    ]
    engine.add_message("s", "assistant", parts=parts)
    stored = engine.store.live_messages("s")[0].message
    assert stored.parts == parts
    # The tool call is recorded under tools/{tool_id}; a later part with the same id updates it.
    update = ToolPart(tool_id="c1", tool_name="search", tool_output="5 hits", tool_status="completed")
    engine.add_message("s", "assistant", parts=[update])
    [record] = engine.store.tool_records("s")
    assert (record.tool_status, record.tool_output) == ("completed", "5 hits")


def test_created_at_is_kept_in_utc(engine: Engine) -> None:
    engine.add_message("s", "user", content="a", created_at="2023-05-08T13:56:00+02:00")
    engine.add_message("s", "user", content="b", created_at="2023-05-08 13:56")
    created = [m.message.created_at for m in engine.store.live_messages("s")]
    assert created == ["2023-05-08T11:56:00.000000Z", "2023-05-08T13:56:00.000000Z"]
    with pytest.raises(InvalidArgument):
        engine.add_message("s", "user", content="c", created_at="last tuesday")


def test_a_retried_message_id_is_stored_once(engine: Engine) -> None:
    first = engine.add_message("s", "user", content="once", message_id="turn-1")
    again = engine.add_message("s", "user", content="once", message_id="turn-1")
    assert first.message_id == again.message_id == "turn-1"
    assert (first.duplicate, again.duplicate) == (False, True)
    assert engine.get_session("s").total_message_count == 1
    engine.commit("s")
    # Still the same message after it moved into an archive.
    assert engine.add_message("s", "user", content="once", message_id="turn-1").duplicate is True
    assert engine.get_session("s").total_message_count == 1


def test_pending_tokens_are_real_token_counts(engine: Engine) -> None:
    engine.add_message("s", "user", content="The quick brown fox jumps over the lazy dog.")
    # 10 tokens of text in cl100k_base, plus 4 per message.
    assert engine.get_session("s").pending_tokens == 14


def test_record_usage_counts_contexts_and_skills(engine: Engine) -> None:
    engine.create_session("s")
    used = engine.record_usage("s", contexts=["viking://a", "viking://b"])
    assert (used.contexts_used, used.skills_used) == (2, 0)
    used = engine.record_usage("s", skill={"uri": "viking://agent/skills/pdf", "input": "x", "output": "y"})
    assert (used.contexts_used, used.skills_used) == (2, 1)
    assert engine.store.usage("s").contexts == ["viking://a", "viking://b"]
    with pytest.raises(NotFound):
        engine.record_usage("missing", contexts=["viking://a"])


# --- commit and Phase 2 -------------------------------------------------------------------------


def test_commit_archives_live_messages_and_keeps_the_newest(engine: Engine) -> None:
    for i in range(12):
        engine.add_message("s", "user", content=f"message {i}")
    result = engine.commit("s", keep_recent_count=10)
    assert (result.status, result.archive_id) == ("accepted", "archive_001")
    assert result.archived is True and result.archived_messages == 2
    info = engine.get_session("s")
    assert (info.message_count, info.total_message_count, info.commit_count) == (10, 12, 1)
    assert info.last_commit_at is not None
    skipped = engine.commit("s", keep_recent_count=10)
    assert (skipped.status, skipped.task_id, skipped.archive_id, skipped.reason) == (
        "skipped",
        None,
        None,
        "no_messages",
    )
    assert skipped.archived is False and skipped.archived_messages == 0
    assert engine.get_session("s").commit_count == 1
    assert engine.commit("s").archive_id == "archive_002"
    detail = engine.expand_archive("s", "archive_002")
    assert [m.parts[0].text for m in detail.messages] == [f"message {i}" for i in range(2, 12)]  # type: ignore[union-attr]


def test_commit_of_an_empty_or_unknown_session(engine: Engine) -> None:
    engine.create_session("empty")
    assert engine.commit("empty").status == "skipped"
    assert engine.list_tasks().tasks == []
    with pytest.raises(NotFound):
        engine.commit("unknown")


class Recording:
    """Summariser that records the order archives are summarised in, and the overview it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        self.calls.append((archive.session_id, archive.archive_id, archive.previous_overview))
        return ArchiveSummary(
            abstract=f"abstract of {archive.archive_id}", overviews=[f"overview up to {archive.archive_id}"]
        )


def test_phase_2_runs_archives_in_order_and_carries_the_overview_forward(settings: Settings) -> None:
    recording = Recording()
    engine = Engine(settings, summariser=recording)
    try:
        for number in range(1, 4):
            engine.add_message("s", "user", content=f"part {number}")
            engine.commit("s")
        engine.add_message("other", "user", content="elsewhere")
        engine.commit("other")
        assert engine.run_pending_phase2() == 4
        ours = [(archive, previous) for session, archive, previous in recording.calls if session == "s"]
        assert ours == [
            ("archive_001", ""),
            ("archive_002", "overview up to archive_001"),
            ("archive_003", "overview up to archive_002"),
        ]
    finally:
        engine.close()


def test_agent_supplied_summaries_win(engine: Engine) -> None:
    engine.add_message("s", "user", content="We chose PostgreSQL for the ledger.")
    engine.commit("s", abstract="Chose the database.", overview="# Decisions\n\n- PostgreSQL for the ledger.")
    engine.run_pending_phase2()
    detail = engine.expand_archive("s", "archive_001")
    assert detail.abstract == "Chose the database."
    assert detail.overview == "# Decisions\n\n- PostgreSQL for the ledger."
    # Only an abstract: the overview comes from the offline summariser.
    engine.add_message("s", "user", content="Ada will migrate the ledger in June 2024.")
    engine.commit("s", abstract="Migration planned.")
    engine.run_pending_phase2()
    detail = engine.expand_archive("s", "archive_002")
    assert detail.abstract == "Migration planned."
    assert "June 2024" in detail.overview and "PostgreSQL" in detail.overview  # carried forward
    # under its archive's heading, its own heading one level down, its bullet a line of its own
    assert "\n## archive_001\n\n### Decisions\n- PostgreSQL for the ledger.\n" in detail.overview


def test_commit_wait_returns_after_phase_2(engine: Engine) -> None:
    engine.add_message("s", "user", content="Ada lives in Lisbon.")
    progress: list[str] = []
    result = engine.commit("s", wait=True, on_progress=lambda done, total, message: progress.append(message))
    assert result.task_status == "completed"
    assert progress and progress[0] == "Phase 2 pending"  # reported while it waited
    assert engine.expand_archive("s", "archive_001").status == "completed"


def test_the_background_worker_completes_commits(settings: Settings) -> None:
    engine = Engine(settings)
    worker = Phase2Worker(engine)
    worker.start()
    try:
        engine.add_message("s", "user", content="Ada lives in Lisbon.")
        commit = engine.commit("s")
        task = engine.wait_for_task(commit.task_id or "", timeout=20)
        assert task.status == "completed"
        assert task.result is not None and task.result.archive_id == "archive_001"
    finally:
        worker.stop()
        engine.close()


def test_list_tasks_filters_newest_first(engine: Engine) -> None:
    ids = []
    for session in ("a", "b", "a"):
        engine.add_message(session, "user", content="x")
        ids.append(engine.commit(session).task_id)
    assert [t.task_id for t in engine.list_tasks().tasks] == list(reversed(ids))
    assert [t.task_id for t in engine.list_tasks(resource_id="a").tasks] == [ids[2], ids[0]]
    assert len(engine.list_tasks(status="pending").tasks) == 3
    engine.run_pending_phase2()
    assert len(engine.list_tasks(status="completed", task_type="session_commit", limit=2).tasks) == 2
    assert engine.list_tasks(status="pending").tasks == []
    with pytest.raises(NotFound):
        engine.get_task("0" * 32)


def test_concurrent_commits_never_reuse_an_archive_number(engine: Engine) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(30):
                engine.add_message("s", "user", content=f"{n}-{i}")
                if i % 5 == 4:
                    engine.commit("s")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    archives = engine.store.list_archives("s")
    assert [a.number for a in archives] == list(range(1, len(archives) + 1))
    seen = [
        m.message.parts[0].text
        for a in archives
        for m in engine.store.read_messages("s", a.first_seq - 1, a.last_seq, 0, None)
    ]  # type: ignore[union-attr]
    seen += [m.message.parts[0].text for m in engine.store.live_messages("s")]  # type: ignore[union-attr]
    assert sorted(seen) == sorted(f"{n}-{i}" for n in range(4) for i in range(30))


# --- the embedded Client -----------------------------------------------------------------------


def test_embedded_client_in_the_shape_of_the_seed_sdk(tmp_path: Path) -> None:
    with Client(path=tmp_path / "memory") as client:
        session = client.session()
        session.add_message("user", [TextPart(text="I'm Ada, I moved to Lisbon in May 2023.")])
        session.add_message("assistant", content="Welcome to Lisbon, Ada!")
        commit = session.commit()
        task = client.wait_for_task(commit.task_id or "", timeout=20)
        assert task.status == "completed"
        context = client.get_session_context(session.session_id, token_budget=4000)
        assert "Lisbon" in context.latest_archive_overview
        archive = client.get_session_archive(session.session_id, "archive_001")
        assert len(archive.messages) == 2
        assert client.get_task(task.task_id).status == "completed"
        assert client.session(session.session_id).info().commit_count == 1
    # The data outlives the client.
    with Client(path=tmp_path / "memory") as client:
        assert len(client.list_sessions().sessions) == 1


def test_archive_n_plus_1_waits_for_archive_n(engine: Engine) -> None:
    import time

    from viking_mcp.engine.engine import owner_is_gone
    from viking_mcp.models import utc_now

    for number in (1, 2):
        engine.add_message("s", "user", content=f"part {number}")
        engine.commit("s")
    # Another live worker holds archive 1's Phase 2 ...
    claimed = engine.store.claim_phase2(engine.worker_id, utc_now(), time.time() + 60, owner_is_gone)
    assert claimed is not None and claimed.archive_number == 1
    # ... so archive 2's cannot start, although it is pending.
    assert engine.run_phase2_once() is False
    engine.store.release_phase2(claimed, utc_now())
    assert engine.run_pending_phase2() == 2
    assert [a.status for a in engine.store.list_archives("s")] == ["completed", "completed"]


def test_a_blocked_session_does_not_starve_others(settings: Settings) -> None:
    class Failing:
        name = "failing"

        def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
            if archive.session_id == "blocked":
                raise RuntimeError("down")
            return ArchiveSummary(abstract="ok", overviews=["ok"])

    engine = Engine(settings, summariser=Failing())
    try:
        # 210 archives queued; the first fails, and the other 209 (more than a page of the
        # queue) wait behind it, older than the other session's work.
        for i in range(210):
            engine.add_message("blocked", "user", content=f"message {i}")
            engine.commit("blocked")
        assert engine.run_phase2_once() is True
        assert engine.list_tasks(status="failed").tasks[0].resource_id == "blocked"
        engine.add_message("free", "user", content="another session")
        commit = engine.commit("free")
        engine.run_pending_phase2()
        assert engine.get_task(commit.task_id or "").status == "completed"
    finally:
        engine.close()


def test_phase_2_that_keeps_breaking_fails_instead_of_spinning(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from viking_mcp.engine.engine import MAX_PHASE2_ATTEMPTS
    from viking_mcp.errors import Unavailable

    def broken(*_: object) -> bool:
        raise Unavailable("disk full")

    monkeypatch.setattr(engine.store, "finish_phase2", broken)
    engine.add_message("s", "user", content="x")
    commit = engine.commit("s")
    attempts = 0
    while engine.get_task(commit.task_id or "").status != "failed":
        with pytest.raises(Unavailable):
            engine.run_phase2_once()
        attempts += 1
        assert attempts <= MAX_PHASE2_ATTEMPTS
    task = engine.get_task(commit.task_id or "")
    assert attempts == MAX_PHASE2_ATTEMPTS and task.error is not None and "disk full" in task.error
    assert engine.get_context("s", 100).stats.failedArchives == 1  # visible, and retry_archive clears it
    monkeypatch.undo()
    engine.retry_archive("s", "archive_001")
    assert engine.run_pending_phase2() == 1


@pytest.mark.sqlite_only  # a connection per thread is the SQLite store's; PostgreSQL's is a bounded pool
def test_threads_that_end_do_not_leave_connections_open(engine: Engine) -> None:
    import gc

    engine.create_session("s")
    for _ in range(40):
        thread = threading.Thread(target=engine.get_session, args=("s",))
        thread.start()
        thread.join()
    gc.collect()
    assert len(engine.store._holders) <= 2  # type: ignore[attr-defined]


@pytest.mark.sqlite_only
def test_a_write_waits_for_another_writers_lock_then_lands(engine: Engine) -> None:
    """While another connection holds the write lock, an append waits (SQLite's busy
    timeout), and lands once the lock is released; nothing is refused or lost."""
    import sqlite3

    engine.add_message("s", "user", "first")
    other = sqlite3.connect(engine.settings.database_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        appender = threading.Thread(target=engine.add_message, args=("s", "user", "second"))
        appender.start()
        appender.join(0.3)
        assert appender.is_alive(), "the append did not wait for the lock"
        other.execute("COMMIT")
        appender.join(10)
        assert not appender.is_alive()
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    texts = [m.parts[0].text for m in engine.get_context("s", 1000).messages]  # type: ignore[union-attr]
    assert texts == ["first", "second"]
