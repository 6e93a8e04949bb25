"""Export and import: a rich data directory written as plain files and read back into a
fresh one gives the same answers to every read (context at several budgets, archives,
sessions, tasks, memory search), and the files have the documented layout."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLlmServer
from viking_mcp.config import LlmSettings, Settings
from viking_mcp.engine import Engine
from viking_mcp.engine.engine import owner_is_gone
from viking_mcp.engine.export_import import export_tree, import_tree
from viking_mcp.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from viking_mcp.models import Message, Owner, utc_now
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary
from viking_mcp.summarize.extractive import ExtractiveSummariser
from viking_mcp.tokens import TokenCounter

BUDGETS = [0, 10, 40, 120, 400, 2_000, 128_000]
QUERIES = ["Lisbon", "tea coffee", "Bea sister", "deploy rollback", "search tool", "Kyoto ryokan", "Oslo"]

LLM_REPLY = {
    "abstract": "Ada planned a trip to Kyoto with her sister Bea.",
    "overview": "## Trip\nAda and Bea fly to Kyoto on 3 April 2025; Ada prefers ryokans.\n\n"
    + "\n".join(f"- Detail {i}: the itinerary covers day {i} in Kyoto and nearby Nara." for i in range(12)),
    "memories": [
        {"category": "entities", "name": "Bea", "abstract": "Bea: Ada's sister."},
        {"category": "events", "abstract": "Booked flights to Kyoto.", "when": "2025-01-10"},
    ],
}


class FailsFor(ExtractiveSummariser):
    """The offline summariser, except that it breaks on the archives named."""

    def __init__(self, tokens: TokenCounter, broken: set[tuple[str, str]]) -> None:
        super().__init__(tokens)
        self.broken = broken

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        if (archive.session_id, archive.archive_id) in self.broken:
            raise RuntimeError("summariser down")
        return super().summarise(archive)


def tool_part(status: str, output: str = "") -> dict[str, Any]:
    return {"type": "tool", "tool_id": "call-1", "tool_name": "search", "skill_uri": "viking://agent/default/skills/web",
            "tool_input": {"q": "flights to Kyoto"}, "tool_output": output, "tool_status": status}  # fmt: skip


def build_rich(home: Path) -> None:
    """Sessions with completed, pending, failed and skipped archives, tool calls, usage, two
    users, memories of every category, LLM token usage, and tasks of every status."""
    # trip: summarised by an LLM endpoint (token usage, an overview with shorter renderings).
    with FakeLlmServer(responder=lambda _: json.dumps(LLM_REPLY), usage=(900, 150)) as server:
        llm = LlmSettings(provider="openai", base_url=server.base_url, model="fake", api_key="sk-test",
                          timeout_seconds=5, max_attempts=1, backoff_seconds=0.01)  # fmt: skip
        engine = Engine(Settings(home=home, llm=llm))
        try:
            engine.add_message("trip", "user", content="My sister Bea and I fly to Kyoto on 3 April.")
            engine.commit("trip")
            engine.run_pending_phase2()
        finally:
            engine.close()

    settings = Settings(home=home)
    engine = Engine(settings, summariser=FailsFor(TokenCounter(settings.encoding), {("gamma", "archive_002")}))
    try:
        # alpha: three completed archives (agent-supplied summaries and memories, and offline
        # ones), tool calls, usage, then live messages.
        engine.create_session("alpha", {"project": "trip", "tags": ["kyoto", "été"]})
        engine.add_message("alpha", "user", content="I'm Ada, a data engineer in Lisbon. I prefer tea over coffee.")
        engine.add_message("alpha", "assistant", parts=[{"type": "text", "text": "Noted."}, tool_part("running")])
        engine.add_message("alpha", "assistant", parts=[tool_part("completed", "3 flights found")],
                           message_id="msg-fixed-1", created_at="2026-01-02T10:00:00+01:00")  # fmt: skip
        engine.record_usage("alpha", ["viking://user/default/memories/profile.md", "viking://resources/guide"],
                            {"uri": "viking://agent/default/skills/web", "input": "kyoto", "output": "ok"})  # fmt: skip
        engine.commit(
            "alpha",
            abstract="Ada introduced herself and searched flights.",
            overview="# Ada\n\n" + "\n".join(f"- Fact {i}: Ada likes detail number {i} a lot." for i in range(40)),
            memories=[
                {"category": "profile", "abstract": "Ada is a data engineer in Lisbon."},
                {"category": "preferences", "name": "drinks", "abstract": "Prefers tea over coffee."},
                {"category": "cases", "abstract": "Deploy failed: rollback fixed it.", "content": "Rolled back."},
                {"category": "patterns", "name": "standup", "abstract": "Writes a standup note every morning."},
            ],
        )
        engine.run_pending_phase2()
        for turn in range(2):
            engine.add_message("alpha", "user", content=f"Turn {turn}: we met Bea, my sister, in Porto on day {turn}.")
            engine.add_message("alpha", "assistant", content=f"Lovely. Anything to plan for day {turn}?")
            engine.commit("alpha")
            engine.run_pending_phase2()
        engine.add_message("alpha", "user", content="Still live: remind me to pack an umbrella.")

        # gamma: archive_002 failed; epsilon: a failed archive marked skipped.
        engine.add_message("gamma", "user", content="First gamma message.")
        engine.commit("gamma")
        engine.run_pending_phase2()
        engine.add_message("gamma", "user", content="Second gamma message that will fail.")
        engine.commit("gamma")
        engine.run_pending_phase2()
        engine.add_message("gamma", "user", content="Live after the failure.")
        engine.add_message("epsilon", "user", content="This archive will be skipped.")
        engine.commit("epsilon")
        engine.summariser = FailsFor(engine.tokens, {("epsilon", "archive_001")})
        engine.run_pending_phase2()
        engine.retry_archive("epsilon", "archive_001", "skip")

        # omega: two offline archives, then one whose short overview the agent wrote (stored
        # as written, with longer renderings that show it after the earlier archives').
        for when in ("2026-01-05", "2026-01-12"):
            engine.add_message(
                "omega", "user", content=f"On {when} I flew to Oslo with Bea for the Nordic data summit."
            )
            engine.add_message("omega", "assistant", content="Booked the Radisson Blu by Oslo Central Station for you.")
            engine.commit("omega")
            engine.run_pending_phase2()
        engine.add_message("omega", "user", content="Plan the return flight.")
        engine.commit("omega", overview="## Return\n- Flight SK4035 on 20 January.\n- Seat 12A, window.")
        engine.run_pending_phase2()

        # delta: another user's session, and an extraction (a session_extract task).
        engine.create_session("delta", {"owner": "bob"}, user_id="bob")
        engine.add_message("delta", "user", content="I'm Bob. I live in Oslo and I love skiing.")
        engine.extract("delta")

        # a deleted session's tasks stay
        engine.add_message("gone", "user", content="Soon deleted.")
        engine.commit("gone")
        engine.delete_session("gone")

        # beta, last: a completed archive, then a pending one (Phase 2 not run), kept-recent live messages.
        for n in range(4):
            engine.add_message("beta", "user", content=f"Beta message {n} about the Oslo office move.")
        engine.commit("beta", keep_recent_count=1)
        engine.run_pending_phase2()
        engine.add_message("beta", "assistant", content="The move is on Friday.")
        engine.commit("beta", keep_recent_count=1)
        engine.add_message("beta", "user", content="And the movers arrive at eight.")
    finally:
        engine.close()


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Path]]:
    """The rich data directory (built once), exported, and the engine on it."""
    home = tmp_path_factory.mktemp("rich") / "home"
    build_rich(home)
    engine = Engine(Settings(home=home))
    export = tmp_path_factory.mktemp("export") / "tree"
    export_tree(engine, export)
    try:
        yield engine, export
    finally:
        engine.close()


@pytest.fixture
def restored(rich: tuple[Engine, Path], new_settings: Callable[[str], Settings]) -> Iterator[Engine]:
    """The rich export imported into a new store: SQLite, or PostgreSQL (the move between them)."""
    engine = Engine(new_settings("restored"))
    import_tree(engine, rich[1])
    try:
        yield engine
    finally:
        engine.close()


def session_ids(engine: Engine) -> list[str]:
    return [s.session_id for s in engine.list_sessions(500).sessions]


def everything(engine: Engine) -> dict[str, Any]:
    """Every read a user can make, as plain data."""
    seen: dict[str, Any] = {"sessions": engine.list_sessions(500).model_dump()}
    for session_id in session_ids(engine):
        seen[f"{session_id}/info"] = engine.get_session(session_id).model_dump()
        for budget in BUDGETS:
            seen[f"{session_id}/context/{budget}"] = engine.get_context(session_id, budget).model_dump()
        for number in range(1, engine.get_session(session_id).commit_count + 1):
            name = f"archive_{number:03d}"
            seen[f"{session_id}/{name}"] = engine.expand_archive(session_id, name).model_dump()
    seen["tasks"] = engine.list_tasks(limit=500).model_dump()
    for status in ("pending", "running", "completed", "failed"):
        seen[f"tasks/{status}"] = engine.list_tasks(status=status, limit=500).model_dump()
    seen["tasks/extract"] = engine.list_tasks(task_type="session_extract").model_dump()
    for task in engine.list_tasks(limit=500).tasks:
        seen[f"task/{task.task_id}"] = engine.get_task(task.task_id).model_dump()
    for user in ("default", "bob"):
        for query in QUERIES:
            seen[f"search/{user}/{query}"] = engine.search_memories(query, limit=20, user_id=user).model_dump()
        seen[f"search/{user}/preferences"] = engine.search_memories("tea", "preferences", user_id=user).model_dump()
    return seen


def test_the_rich_fixture_has_what_the_round_trip_must_keep(rich: tuple[Engine, Path]) -> None:
    engine, _ = rich
    statuses = {a.status for s in session_ids(engine) for a in engine.store.list_archives(s)}
    assert statuses == {"completed", "pending", "failed", "skipped"}
    assert {t.status for t in engine.list_tasks(limit=500).tasks} == {"pending", "completed", "failed"}
    assert engine.list_tasks(task_type="session_extract").tasks
    assert engine.get_session("trip").llm_token_usage.total == 1050
    assert len(engine.store.list_archives("trip")[0].overview_renderings) > 1
    written = engine.store.list_archives("omega")[-1]
    assert written.overview == "## Return\n- Flight SK4035 on 20 January.\n- Seat 12A, window."
    assert written.overview_renderings[0].text != written.overview  # longer renderings show the earlier archives too
    assert written.overview in [r.text for r in written.overview_renderings]
    categories = {m.category for s in ("user", "agent") for m in engine.store.list_memories("default", s, "default",
                                                                                              None, 500)}  # fmt: skip
    assert categories == {"profile", "preferences", "entities", "events", "cases", "patterns", "tools", "skills"}
    assert engine.store.tool_records("alpha")[0].tool_status == "completed"


@pytest.mark.both_stores
def test_import_into_a_fresh_directory_gives_the_same_answers(rich: tuple[Engine, Path], restored: Engine) -> None:
    before, after = everything(rich[0]), everything(restored)
    if restored.settings.store is not None:
        # SQLite ranks with FTS5's BM25, PostgreSQL with ts_rank: the same memories are
        # found, in the same order, but the scores are on each engine's own scale.
        before, after = without_scores(before), without_scores(after)
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == before[key], key


def without_scores(seen: dict[str, Any]) -> dict[str, Any]:
    return {
        key: {**value, "memories": [{**m, "score": None} for m in value["memories"]]}
        if key.startswith("search/")
        else value
        for key, value in seen.items()
    }


@pytest.mark.both_stores
def test_what_only_the_store_sees_survives_too(rich: tuple[Engine, Path], restored: Engine) -> None:
    """Token counts, renderings, supplied summaries, usage and tool records: what later
    answers (a resumed Phase 2, an active_count) depend on."""
    engine = rich[0]
    for session_id in session_ids(engine):
        assert restored.store.list_archives(session_id) == engine.store.list_archives(session_id)
        assert restored.store.read_messages(session_id, 0, None, 0, None) == engine.store.read_messages(
            session_id, 0, None, 0, None
        )
        assert restored.store.tool_records(session_id) == engine.store.tool_records(session_id)
        assert restored.store.usage(session_id) == engine.store.usage(session_id)
        for archive in engine.store.list_archives(session_id):  # which archive took which usage in
            assert restored.store.archive_usage(session_id, archive.number) == engine.store.archive_usage(
                session_id, archive.number
            )
    # tasks as the worker sees them: attempts, archive, whose
    assert restored.store.list_tasks(None, None, None, 500) == engine.store.list_tasks(None, None, None, 500)
    for scope, owner in (("user", "default"), ("agent", "default"), ("user", "bob")):
        assert restored.store.list_memories("default", scope, owner, None, 500) == engine.store.list_memories(
            "default", scope, owner, None, 500
        )


@pytest.mark.both_stores
def test_unfinished_phase_2_resumes_after_import_as_it_would_have(
    rich: tuple[Engine, Path], tmp_path: Path, new_settings: Callable[[str], Settings]
) -> None:
    source = Engine(new_settings("source"))
    import_tree(source, rich[1])  # a copy, so the shared fixture stays as it is
    restored = Engine(new_settings("restored"))
    try:
        export_tree(source, tmp_path / "again")
        import_tree(restored, tmp_path / "again")
        assert source.run_pending_phase2() == restored.run_pending_phase2() == 1  # beta's archive_002
        for budget in BUDGETS:
            assert restored.get_context("beta", budget) == source.get_context("beta", budget)
        restored.retry_archive("gamma", "archive_002")
        assert restored.run_pending_phase2() == 1
        assert restored.get_context("gamma", 1000).stats.failedArchives == 0
    finally:
        source.close()
        restored.close()


@pytest.mark.both_stores
def test_a_task_running_at_export_is_taken_over_after_import(
    tmp_path: Path, new_settings: Callable[[str], Settings]
) -> None:
    engine = Engine(new_settings("a"))
    other = Engine(new_settings("b"))
    try:
        engine.add_message("s", "user", content="Busy while exported.")
        commit = engine.commit("s")
        claimed = engine.store.claim_phase2(engine.worker_id, utc_now(), time.time() + 600, owner_is_gone)
        assert claimed is not None
        export_tree(engine, tmp_path / "tree")
        import_tree(other, tmp_path / "tree")
        assert other.get_task(commit.task_id or "").status == "running"
        assert other.run_pending_phase2() == 1  # its owner's lease did not come along
        assert other.get_task(commit.task_id or "").status == "completed"
    finally:
        engine.close()
        other.close()


# --- the files -----------------------------------------------------------------------------------


def test_the_export_has_the_documented_layout(rich: tuple[Engine, Path]) -> None:
    engine, tree = rich
    manifest = json.loads((tree / ".viking-export.json").read_text())
    assert manifest["format"] == "viking-mcp-export" and manifest["format_version"] == 1
    alpha = tree / "session" / "alpha"
    for name in ("messages.jsonl", ".meta.json", ".abstract.md", ".overview.md", ".relations.json"):
        assert (alpha / name).is_file(), name
    assert json.loads((alpha / "tools" / "call-1" / "tool.json").read_text())["tool_status"] == "completed"
    archive = alpha / "history" / "archive_001"
    for name in ("messages.jsonl", ".abstract.md", ".overview.md", "memory_diff.json", ".done", ".meta.json"):
        assert (archive / name).is_file(), name
    detail = engine.expand_archive("alpha", "archive_001")
    assert (archive / ".abstract.md").read_text() == detail.abstract == "Ada introduced herself and searched flights."
    assert (archive / ".overview.md").read_text() == detail.overview
    lines = (archive / "messages.jsonl").read_text().splitlines()
    assert [Message.model_validate_json(line) for line in lines] == detail.messages
    assert all(isinstance(json.loads(line)["tokens"], int) for line in lines)
    # the live buffer, the session's .meta.json (as get_session shows it), relations
    live = [Message.model_validate_json(line) for line in (alpha / "messages.jsonl").read_text().splitlines()]
    assert [m.id for m in live] == [m.id for m in engine.get_context("alpha", 0).messages]
    assert json.loads((alpha / ".meta.json").read_text()) == engine.get_session("alpha").model_dump(mode="json")
    relations = json.loads((alpha / ".relations.json").read_text())
    assert relations["contexts"] == ["viking://user/default/memories/profile.md", "viking://resources/guide"]
    assert relations["skills"][0]["uri"] == "viking://agent/default/skills/web"
    assert (alpha / ".overview.md").read_text() == engine.expand_archive("alpha", "archive_003").overview
    # pending, failed and skipped archives have no .done; their .meta.json says why
    assert not (tree / "session" / "beta" / "history" / "archive_002" / ".done").exists()
    failed = json.loads((tree / "session" / "gamma" / "history" / "archive_002" / ".meta.json").read_text())
    assert failed["status"] == "failed" and "summariser down" in failed["error"]
    assert not (tree / "session" / "epsilon" / "history" / "archive_001" / ".done").exists()
    assert not (tree / "session" / "gone").exists()
    # memories: one markdown file each, under the user's and the agent's trees
    memories = tree / "user" / "default" / "memories"
    assert (memories / "profile.md").read_text().startswith('---\nuri: "viking://user/default/memories/profile.md"')
    assert (memories / "preferences" / "drinks.md").is_file()
    assert list((tree / "agent" / "default" / "memories" / "tools").glob("*.md"))
    assert list((tree / "user" / "bob" / "memories").rglob("*.md"))
    assert "# Prefers tea over coffee." in (memories / "preferences" / "drinks.md").read_text()
    tasks = [json.loads(line) for line in (tree / "tasks.jsonl").read_text().splitlines()]
    assert len(tasks) == len(engine.list_tasks(limit=500).tasks) == manifest["counts"]["tasks"]
    assert json.loads((tree / "context_usage.jsonl").read_text().splitlines()[0])["active_count"] >= 1
    leftovers = [p for p in tree.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_export_wants_a_new_or_empty_directory(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    with pytest.raises(FailedPrecondition, match="not empty"):
        export_tree(engine, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    assert export_tree(engine, tmp_path / "empty").sessions == 0


@pytest.mark.both_stores
def test_import_refuses_sessions_that_exist_and_changes_nothing(
    rich: tuple[Engine, Path], new_settings: Callable[[str], Settings]
) -> None:
    engine = Engine(new_settings("busy"))
    try:
        engine.add_message("beta", "user", content="A different beta, already here.")
        with pytest.raises(AlreadyExists, match="beta"):
            import_tree(engine, rich[1])
        assert session_ids(engine) == ["beta"]  # all or nothing
        assert engine.list_tasks().tasks == [] and engine.search_memories("Lisbon").memories == []
        import_tree(engine, rich[1], replace=True)
        assert set(session_ids(engine)) == set(session_ids(rich[0]))
        for budget in BUDGETS:
            assert engine.get_context("beta", budget) == rich[0].get_context("beta", budget)
    finally:
        engine.close()


@pytest.mark.both_stores
def test_import_checks_what_it_reads(rich: tuple[Engine, Path], tmp_path: Path, engine: Engine) -> None:
    import shutil

    with pytest.raises(NotFound):
        import_tree(engine, tmp_path / "nowhere")
    (tmp_path / "random").mkdir()
    with pytest.raises(FailedPrecondition, match="not a viking-mcp export"):
        import_tree(engine, tmp_path / "random")

    damaged = tmp_path / "damaged"
    shutil.copytree(rich[1], damaged)
    with (damaged / "session" / "beta" / "messages.jsonl").open("a") as file:
        file.write('{"id": "x", "role": "robot", "parts": [], "created_at": "now"}\n')
    with pytest.raises(InvalidArgument, match=r"session/beta/messages.jsonl line 3: role"):
        import_tree(engine, damaged)
    assert session_ids(engine) == []

    truncated = tmp_path / "truncated"
    shutil.copytree(rich[1], truncated)
    shutil.rmtree(truncated / "session" / "alpha" / "history" / "archive_002")
    with pytest.raises(InvalidArgument, match="without gaps"):
        import_tree(engine, truncated)


def test_import_reads_nothing_outside_its_directory(rich: tuple[Engine, Path], tmp_path: Path, engine: Engine) -> None:
    import shutil

    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"id": "s", "role": "user", "parts": [], "created_at": "2026-01-01T00:00:00Z"}\n')
    linked = tmp_path / "linked"
    shutil.copytree(rich[1], linked)
    target = linked / "session" / "beta" / "messages.jsonl"
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(InvalidArgument, match="leads outside"):
        import_tree(engine, linked)
    assert session_ids(engine) == []


@pytest.mark.both_stores
def test_other_accounts_memories_go_under_accounts(tmp_path: Path, new_settings: Callable[[str], Settings]) -> None:

    ada = Owner("acme", "ada", "claude")
    engine = Engine(new_settings("a"))
    other = Engine(new_settings("b"))
    try:
        engine.add_message("acme-s", "user", content="I'm Ada from Acme.", actor=ada)
        memories = [{"category": "entities", "name": "Acme", "abstract": "Acme: Ada's employer."}]
        engine.commit("acme-s", abstract="a", overview="o", memories=memories, actor=ada)
        engine.run_pending_phase2()
        export_tree(engine, tmp_path / "tree")
        assert (
            tmp_path / "tree" / "accounts" / "acme" / "user" / "ada" / "memories" / "entities" / "acme.md"
        ).is_file()
        assert not (tmp_path / "tree" / "user").exists()
        import_tree(other, tmp_path / "tree")
        assert other.search_memories("Acme", actor=ada) == engine.search_memories("Acme", actor=ada)
        assert other.search_memories("Acme").memories == []  # the default account has none
        assert other.get_session("acme-s", actor=ada) == engine.get_session("acme-s", actor=ada)
    finally:
        engine.close()
        other.close()


# --- exports whose files disagree with each other are refused, not imported -----------------------


def edit_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_lines(path: Path, change: Any) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(line) + "\n" for line in change(lines)))


def alpha_task(lines: list[dict[str, Any]], **changes: Any) -> list[dict[str, Any]]:
    """The tasks, and a copy of alpha's first commit task with `changes`."""
    first = next(t for t in lines if t["resource_id"] == "alpha" and t["archive_id"] == "archive_001")
    return [*lines, {**first, "task_id": "crafted", **changes}]


def set_front(path: Path, field: str, value: Any) -> None:
    text = path.read_text()
    start = text.index(f"\n{field}: ") + 1
    end = text.index("\n", start)
    path.write_text(text[:start] + f"{field}: {json.dumps(value)}" + text[end:])


ALPHA = Path("session") / "alpha"
ARCHIVE = ALPHA / "history" / "archive_001"
PROFILE = Path("user") / "default" / "memories" / "profile.md"

INCONSISTENT: dict[str, tuple[Any, str]] = {
    "pending archive without a task": (
        lambda d: edit_json(d / ARCHIVE / ".meta.json", lambda m: m.update(status="pending")),
        r"archive_001/.meta.json: the archive is pending, but tasks.jsonl has no pending or running",
    ),
    "pending task of a session not exported": (
        lambda d: edit_lines(d / "tasks.jsonl", lambda ls: alpha_task(ls, status="pending", resource_id="nosuch")),
        r"tasks.jsonl line \d+: task crafted is pending, but its session nosuch is not in the export",
    ),
    "task of an archive that does not exist": (
        lambda d: edit_lines(d / "tasks.jsonl", lambda ls: alpha_task(ls, archive_id="archive_099")),
        r"task crafted names archive_099, which session alpha does not have",
    ),
    "task of another user": (
        lambda d: edit_lines(d / "tasks.jsonl", lambda ls: alpha_task(ls, user_id="bob")),
        r"task crafted belongs to default/bob, but session alpha to default/default",
    ),
    "task without owners": (
        lambda d: edit_lines(d / "tasks.jsonl", lambda ls: alpha_task(ls, account_id=None, user_id=None)),
        r"task crafted has no account_id and user_id",
    ),
    "negative attempts": (
        lambda d: edit_lines(d / "tasks.jsonl", lambda ls: alpha_task(ls, attempts=-7)),
        r"tasks.jsonl line \d+: attempts: Input should be greater than or equal to 0",
    ),
    "memory uri with ..": (
        lambda d: set_front(d / PROFILE, "uri", "viking://user/default/memories/../../bob/memories/profile.md"),
        r"profile.md: uri .* is not the one its scope, owner_id, category and key make",
    ),
    "memory uri of another category": (
        lambda d: set_front(d / PROFILE, "category", "entities"),
        r"profile.md: uri .* is not the one",
    ),
    "memory key with ..": (
        lambda d: set_front(d / PROFILE, "key", "../../x"),
        r"key '\.\./\.\./x' is not allowed",
    ),
    "the same memory twice": (
        lambda d: (d / PROFILE).with_name("profile2.md").write_text((d / PROFILE).read_text()),
        r"profile2.md and user/default/memories/profile.md are the same memory",
    ),
    "negative tokens": (
        lambda d: edit_lines(d / ARCHIVE / "messages.jsonl", lambda ls: [{**m, "tokens": -1000} for m in ls]),
        r"archive_001/messages.jsonl line 1: tokens: Input should be greater than or equal to 0",
    ),
    "huge tokens": (
        lambda d: edit_lines(d / ARCHIVE / "messages.jsonl", lambda ls: [{**m, "tokens": 10**30} for m in ls]),
        r"archive_001/messages.jsonl line 1: tokens: Input should be less than or equal to",
    ),
    "huge message count": (
        lambda d: edit_json(d / ARCHIVE / ".meta.json", lambda m: m.update(message_count=2**62 + 1)),
        r"archive_001/.meta.json: message_count: Input should be less than or equal to",
    ),
    "negative session counter": (
        lambda d: edit_json(d / ALPHA / ".meta.json", lambda m: m["llm_token_usage"].update(prompt=-5)),
        r"alpha/.meta.json: llm_token_usage.prompt is -5; counts run from 0",
    ),
    "negative active count": (
        lambda d: edit_lines(d / "context_usage.jsonl", lambda ls: [{**u, "active_count": -1} for u in ls]),
        r"context_usage.jsonl line 1: active_count: Input should be greater than or equal to 0",
    ),
    "usage of an archive that does not exist": (
        lambda d: edit_json(d / ALPHA / ".relations.json", lambda r: r["records"][0].update(archive_id="archive_099")),
        r"alpha/.relations.json: records\[0\] names archive_099, which session alpha does not have",
    ),
    "tool record of a message not in the session": (
        lambda d: edit_json(d / ALPHA / "tools" / "call-1" / "tool.json", lambda t: t.update(message_id="nonexistent")),
        r"tool.json: message_id 'nonexistent' is not a message of session alpha",
    ),
    "message time that is no time": (
        lambda d: edit_lines(d / ARCHIVE / "messages.jsonl", lambda ls: [{**m, "created_at": "garbage"} for m in ls]),
        r"archive_001/messages.jsonl line 1: created_at 'garbage' is not an ISO 8601 timestamp",
    ),
    "an older format version": (
        lambda d: edit_json(d / ".viking-export.json", lambda m: m.update(format_version=0)),
        r"format_version 0 is not one this viking-mcp reads",
    ),
    "a negative format version": (
        lambda d: edit_json(d / ".viking-export.json", lambda m: m.update(format_version=-5)),
        r"format_version: Input should be greater than or equal to 0",
    ),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_import_refuses_an_inconsistent_export(
    case: str, rich: tuple[Engine, Path], tmp_path: Path, engine: Engine
) -> None:
    import shutil

    change, message = INCONSISTENT[case]
    crafted = tmp_path / "crafted"
    shutil.copytree(rich[1], crafted)
    change(crafted)
    with pytest.raises(InvalidArgument, match=message):
        import_tree(engine, crafted)
    assert session_ids(engine) == [] and engine.list_tasks().tasks == []
    assert engine.search_memories("Lisbon").memories == []


def test_a_newer_format_asks_for_an_upgrade(rich: tuple[Engine, Path], tmp_path: Path, engine: Engine) -> None:
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(rich[1], crafted)
    edit_json(crafted / ".viking-export.json", lambda m: m.update(format_version=2))
    with pytest.raises(FailedPrecondition, match="upgrade viking-mcp"):
        import_tree(engine, crafted)


def test_finished_tasks_of_a_deleted_session_still_import(rich: tuple[Engine, Path], restored: Engine) -> None:
    gone = [t for t in rich[0].list_tasks(limit=500).tasks if t.resource_id == "gone"]
    assert gone and all(t.status == "failed" for t in gone)
    assert [t for t in restored.list_tasks(limit=500).tasks if t.resource_id == "gone"] == gone


def test_import_opens_only_regular_files(rich: tuple[Engine, Path], tmp_path: Path, engine: Engine) -> None:
    import shutil

    piped = tmp_path / "piped"
    shutil.copytree(rich[1], piped)
    fifo = piped / "session" / "beta" / "messages.jsonl"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    done = threading.Event()

    def release() -> None:  # should import open the pipe anyway, end its wait (and so fail, not hang)
        while not done.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # nobody is reading it
                continue

    threading.Thread(target=release, daemon=True).start()
    try:
        with pytest.raises(InvalidArgument, match=r"session/beta/messages.jsonl is not a regular file"):
            import_tree(engine, piped)
    finally:
        done.set()

    linked = tmp_path / "linked-inside"
    shutil.copytree(rich[1], linked)
    (linked / "session" / "beta" / ".relations.json").unlink()
    os.symlink(linked / "session" / "alpha" / ".relations.json", linked / "session" / "beta" / ".relations.json")
    with pytest.raises(InvalidArgument, match=r"session/beta/.relations.json is not a regular file"):
        import_tree(engine, linked)
    assert session_ids(engine) == []


def test_import_caps_the_size_of_a_file(
    rich: tuple[Engine, Path], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from viking_mcp.engine import export_import
    from viking_mcp.errors import ResourceExhausted

    largest = max((p for p in rich[1].rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    monkeypatch.setattr(export_import, "MAX_FILE_BYTES", largest.stat().st_size - 1)
    with pytest.raises(ResourceExhausted, match=rf"{largest.name} is larger than"):
        import_tree(engine, rich[1])
    assert session_ids(engine) == []
    monkeypatch.setattr(export_import, "MAX_FILE_BYTES", largest.stat().st_size)
    assert import_tree(engine, rich[1]).sessions == len(session_ids(rich[0]))
