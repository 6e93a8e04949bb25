"""Recall: search over messages, archives and memories, and get_context with a query."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client

from tests.conftest import REPO
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.errors import InvalidArgument, NotFound
from viking_mcp.mcp.server import build_server
from viking_mcp.memory.search import stem
from viking_mcp.models import Owner
from viking_mcp.store.migrations import MIGRATIONS

pytestmark = pytest.mark.both_stores

ADA = Owner("acme", "ada")
BOB = Owner("acme", "bob")


def talk(engine: Engine, session_id: str, turns: list[tuple[str, str]], when: str, actor: Owner | None = None) -> None:
    for i, (role, text) in enumerate(turns):
        engine.add_message(session_id, role, content=text, created_at=f"{when}T10:{i:02d}:00Z", actor=actor)


def archived(engine: Engine, session_id: str, actor: Owner | None = None) -> None:
    engine.commit(session_id, actor=actor)
    engine.run_pending_phase2()


CAROLINE = [
    ("user", "Melanie: How was your week? What did you do yesterday?"),
    ("assistant", "Caroline: I researched adoption agencies yesterday, it was a big step for me."),
    ("user", "Melanie: That's wonderful, I'm so happy for you!"),
    ("assistant", "Caroline: Thanks! I also went to a pottery class with my friends."),
    ("user", "Melanie: I painted a lake sunrise last weekend."),
]


@pytest.fixture
def conversation(engine: Engine) -> Engine:
    talk(engine, "c1", CAROLINE, "2023-05-08")
    archived(engine, "c1")
    talk(engine, "c1", [("user", "Melanie: Shall we go camping in the mountains next month?")], "2023-06-01")
    return engine


def test_an_archived_message_is_found_with_its_question_speaker_and_dates(conversation: Engine) -> None:
    found = conversation.search("What did Caroline research?", session_id="c1").results
    best = found[0]
    assert best.kind == "message" and best.session_id == "c1" and best.archive_id == "archive_001"
    assert best.uri.startswith("viking://session/c1/history/archive_001/messages.jsonl#msg_")
    assert best.created_at.startswith("2023-05-08T10:01")
    # The question it answers comes with it; "yesterday" is resolved against when it was said.
    assert best.text == (
        "[archive_001, 8 May 2023] Melanie: How was your week? What did you do yesterday (7 May 2023)?\n"
        "Caroline: I researched adoption agencies yesterday (7 May 2023), it was a big step for me."
    )
    assert all(0 <= hit.score <= 1 for hit in found)
    assert [hit.score for hit in found] == sorted((hit.score for hit in found), reverse=True)


def test_stemming_finds_other_forms_of_a_word(conversation: Engine) -> None:
    texts = [hit.text for hit in conversation.search("researching adopting", session_id="c1").results]
    assert any("researched adoption agencies" in text for text in texts)


def test_a_live_message_has_no_archive(conversation: Engine) -> None:
    hit = conversation.search("camping mountains", session_id="c1", kinds=["message"]).results[0]
    assert hit.archive_id is None and hit.uri.startswith("viking://session/c1/messages.jsonl#msg_")
    assert hit.text.startswith("[live, 1 June 2023] Melanie: Shall we go camping")


def test_every_kind_is_searched_and_kinds_filter(conversation: Engine) -> None:
    everything = conversation.search("adoption agencies research")
    assert {hit.kind for hit in everything.results} == {"message", "archive", "memory"}
    summary = next(hit for hit in everything.results if hit.kind == "archive")
    assert summary.uri == "viking://session/c1/history/archive_001" and summary.archive_id == "archive_001"
    assert summary.text.startswith("[archive_001 summary, 8 May 2023] ") and "adoption" in summary.text
    memory = next(hit for hit in everything.results if hit.kind == "memory")
    assert memory.uri.startswith("viking://user/") and memory.session_id is None
    only = conversation.search("adoption agencies research", kinds=["archive"])
    assert {hit.kind for hit in only.results} == {"archive"}
    # With a session, its messages and archives: memories belong to no session.
    assert {hit.kind for hit in conversation.search("adoption", session_id="c1").results} <= {"message", "archive"}


def test_a_rare_word_outranks_a_common_one(engine: Engine) -> None:
    talk(engine, "r", [("user", f"We talked about the weather again, day {i}.") for i in range(12)], "2023-01-02")
    talk(engine, "r", [("user", "The weather was fine and the aquarium opened.")], "2023-01-03")
    hits = engine.search("weather aquarium", session_id="r").results
    assert "aquarium" in hits[0].text and hits[0].score > 0.8
    assert all(hit.score < 0.2 for hit in hits[1:])  # "weather" alone: found everywhere, it weighs little


def test_a_search_that_matches_nothing_returns_nothing(conversation: Engine) -> None:
    assert conversation.search("xylophone quasar").results == []
    assert conversation.search("the and of").results == []  # stopwords alone match nothing relevant...
    # ...and a question sharing only a word found everywhere is not answered with filler.
    talk(conversation, "w", [("user", f"Melanie: note {i} about the garden") for i in range(30)], "2023-02-02")
    assert conversation.search("Melanie's passport number", session_id="w").results == []


def test_time_range_limit_and_session_filters(conversation: Engine) -> None:
    talk(conversation, "c2", [("user", "Caroline: adoption papers are signed!")], "2023-07-01")
    everywhere = conversation.search("adoption", kinds=["message"])
    assert {hit.session_id for hit in everywhere.results} == {"c1", "c2"}
    assert [h.session_id for h in conversation.search("adoption", kinds=["message"], since="2023-06-01").results] == [
        "c2"
    ]
    before = conversation.search("adoption", kinds=["message"], until="2023-05-31T23:59:59Z").results
    assert {hit.session_id for hit in before} == {"c1"}
    # A date alone as until takes in that whole day.
    that_day = conversation.search("adoption", kinds=["message"], since="2023-05-08", until="2023-05-08").results
    assert {hit.session_id for hit in that_day} == {"c1"}
    assert len(conversation.search("adoption agencies pottery", session_id="c1", limit=1).results) == 1
    with pytest.raises(InvalidArgument, match="since"):
        conversation.search("adoption", since="last tuesday")
    with pytest.raises(InvalidArgument, match="after until"):
        conversation.search("adoption", since="2023-06-01", until="2023-05-01")
    with pytest.raises(InvalidArgument, match="kinds"):
        conversation.search("adoption", kinds=["files"])
    with pytest.raises(InvalidArgument, match="query is empty"):
        conversation.search("   ")
    with pytest.raises(NotFound):
        conversation.search("adoption", session_id="nope")


def test_token_budget_cuts_the_results(conversation: Engine) -> None:
    whole = conversation.search("adoption agencies pottery painted happy", session_id="c1")
    assert whole.estimatedTokens == conversation.tokens.count("\n".join(h.text for h in whole.results))
    for budget in (5, 12, 30, 60):
        cut = conversation.search("adoption agencies pottery painted happy", session_id="c1", token_budget=budget)
        assert cut.estimatedTokens <= budget
        assert conversation.tokens.count("\n".join(h.text for h in cut.results)) <= budget
    first = conversation.search("adoption agencies", session_id="c1", token_budget=20).results
    assert len(first) == 1 and first[0].text.endswith("…")  # the first is cut, not dropped


def test_accents_and_long_messages(engine: Engine) -> None:
    talk(engine, "a", [("user", "Zoë loved the café in Montréal.")], "2023-05-08")
    for query in ("cafe Montreal", "Zoe", "café Montréal"):
        assert [hit.text for hit in engine.search(query, session_id="a").results] == [
            "[live, 8 May 2023] user: Zoë loved the café in Montréal."
        ], query
    # 24,000 distinct words (900 KB): more than PostgreSQL's tsvector holds; indexed up to a bound.
    many = "\n".join(f"{uuid.UUID(int=i)}" for i in range(24_000))
    engine.add_message("long", "user", content=f"aardvarkian beginning\n{many}")
    assert engine.search("aardvarkian", session_id="long").results[0].text.startswith("[live, ")


def test_a_passage_keeps_within_its_archive(engine: Engine) -> None:
    talk(
        engine,
        "z",
        [("user", "Caroline: I got a pet."), ("assistant", "Melanie: Where did you adopt your zebrafish?")],
        "2023-05-01",
    )
    archived(engine, "z")
    talk(engine, "z", [("user", "Caroline: At the downtown pet shop.")], "2023-05-01")
    hit = engine.search("downtown pet shop", session_id="z", kinds=["message"]).results[0]
    assert hit.archive_id is None and hit.text == "[live, 1 May 2023] Caroline: At the downtown pet shop."
    asked = engine.read_context("z", 2000, query="zebrafish adopt").text
    assert asked.count("At the downtown pet shop.") == 1  # shown live, not again beside its question
    assert "[archive_001, 1 May 2023] assistant: Melanie: Where did you adopt your zebrafish?" not in asked


def test_scores_say_nothing_of_another_users_documents(engine: Engine) -> None:
    talk(
        engine,
        "bob-1",
        [("user", "I like zebra crossings.")] + [("user", f"filler {i}") for i in range(5)],
        "2023-03-03",
        BOB,
    )
    before = engine.search("zebra zorblax", actor=BOB).results[0].score
    talk(
        engine, "ada-1", [("user", f"The merger with Zorblax closes on day {i}.") for i in range(30)], "2023-03-03", ADA
    )
    talk(engine, "ada-2", [("user", "zebra " * 3)], "2023-03-03", ADA)
    engine.recall._counts.clear()
    engine.recall._sizes.clear()
    assert engine.search("zebra zorblax", actor=BOB).results[0].score == before


def test_deleting_a_session_removes_it_from_search(conversation: Engine) -> None:
    assert conversation.search("pottery", session_id="c1").results
    conversation.delete_session("c1")
    assert [hit for hit in conversation.search("pottery class").results if hit.kind != "memory"] == []


def test_a_key_never_finds_another_users_content(engine: Engine) -> None:
    talk(engine, "ada-1", [("user", "My locker code is zebra-41, keep it secret.")], "2023-03-03", ADA)
    archived(engine, "ada-1", ADA)
    talk(engine, "bob-1", [("user", "I like zebra crossings.")], "2023-03-03", BOB)
    for kinds in (None, ["message"], ["archive"], ["memory"]):
        found = engine.search("zebra locker code secret", kinds=kinds, actor=BOB).results
        assert all("locker" not in hit.text for hit in found), found
        assert all(hit.session_id in (None, "bob-1") for hit in found)
    with pytest.raises(NotFound):
        engine.search("zebra", session_id="ada-1", actor=BOB)
    mine = engine.search("zebra locker code secret", actor=ADA).results
    assert any("locker code is zebra-41" in hit.text for hit in mine)


def test_get_context_with_a_query_brings_back_the_archived_passage(engine: Engine) -> None:
    talk(engine, "g", CAROLINE, "2023-05-08")
    archived(engine, "g")
    filler = [("user", f"Melanie: Day {i}: we walked the dog and cooked pasta together.") for i in range(60)]
    talk(engine, "g", filler, "2023-06-10")
    archived(engine, "g")
    talk(engine, "g", [("user", "Melanie: what shall we cook tonight?")], "2023-06-11")
    plain = engine.read_context("g", 300)
    asked = engine.read_context("g", 300, query="What did Caroline research?")
    assert "<archived" not in plain.text
    assert "<archived relevant-to-query best-first>\n[archive_001, 8 May 2023] Melanie:" in asked.text
    assert "what shall we cook tonight?" in asked.text  # the live message is kept
    assert max(engine.tokens.count(asked.text), asked.estimated_tokens) <= 300
    typed = engine.get_context("g", 300, query="What did Caroline research?")
    assert typed.relevant_passages[0].archive_id == "archive_001"
    assert "researched adoption agencies" in typed.relevant_passages[0].text
    assert typed.estimatedTokens <= 300
    # Without a query nothing changes; a live message is never a passage (it is shown anyway).
    assert engine.get_context("g", 300).relevant_passages == []
    assert engine.read_context("g", 300, query=None).text == plain.text
    live = engine.get_context("g", 300, query="cook tonight")
    assert all("cook tonight" not in p.text for p in live.relevant_passages)


@pytest.mark.parametrize("budget", [60, 150, 400, 1200])
def test_get_context_with_a_query_stays_within_every_budget(engine: Engine, budget: int) -> None:
    for day in range(1, 6):
        talk(engine, "b", [(r, f"{t} (day {day})") for r, t in CAROLINE], f"2023-05-0{day}")
        archived(engine, "b")
    talk(engine, "b", [("user", "Melanie: and today?")], "2023-05-09")
    read = engine.read_context("b", budget, query="adoption pottery painting")
    assert max(engine.tokens.count(read.text), read.estimated_tokens) <= budget
    typed = engine.get_context("b", budget, query="adoption pottery painting")
    assert typed.estimatedTokens <= max(budget, typed.stats.activeTokens)


def test_export_and_import_keep_the_index(
    conversation: Engine, tmp_path: Path, new_settings: Callable[[str], Settings]
) -> None:
    from viking_mcp.engine.export_import import export_tree, import_tree

    before = [(h.uri, h.text) for h in conversation.search("adoption pottery", session_id="c1").results]
    export_tree(conversation, tmp_path / "tree")
    other = Engine(new_settings("other"))
    try:
        import_tree(other, tmp_path / "tree")
        after = [(h.uri, h.text) for h in other.search("adoption pottery", session_id="c1").results]
    finally:
        other.close()
    assert after == before


@pytest.mark.anyio
async def test_search_over_mcp_is_one_text_within_the_budget(conversation: Engine) -> None:
    async with Client(build_server(conversation.settings, engine=conversation)) as client:
        result = await client.call_tool("search", {"query": "What did Caroline research?", "token_budget": 400})
        text = result.content[0].text  # type: ignore[union-attr]
        assert result.structured_content == {"results": text}
        assert text.startswith("best first for 'What did Caroline research?'")
        assert "I researched adoption agencies yesterday (7 May 2023)" in text
        assert conversation.tokens.count(text) <= 400
        small = await client.call_tool("search", {"query": "What did Caroline research?", "token_budget": 150})
        assert conversation.tokens.count(json.dumps(small.structured_content, ensure_ascii=False)) <= 150
        for budget in (200, 230, 260, 300, 500):
            cut = await client.call_tool("search", {"query": "adoption pottery happy", "token_budget": budget})
            text = cut.content[0].text  # type: ignore[union-attr]
            assert (
                max(
                    conversation.tokens.count(text),
                    conversation.tokens.count(json.dumps(cut.structured_content, ensure_ascii=False)),
                )
                <= budget
            )
            assert "nothing matches" not in text
        too_small = await client.call_tool("search", {"query": "adoption", "token_budget": 50})
        assert too_small.is_error and "token_budget" in too_small.content[0].text  # type: ignore[union-attr]
        nothing = await client.call_tool("search", {"query": "xylophone quasar"})
        assert nothing.content[0].text == "(nothing matches 'xylophone quasar')"  # type: ignore[union-attr]
        asked = await client.call_tool(
            "get_context", {"session_id": "c1", "token_budget": 400, "query": "pottery class"}
        )
        assert "<archived relevant-to-query" in asked.content[0].text  # type: ignore[union-attr]
        bad = await client.call_tool("search", {"query": "x", "kinds": ["files"]})
        assert bad.is_error


@pytest.mark.sqlite_only
def test_stems_agree_with_sqlite_fts5_porter() -> None:
    words = ["researched", "researching", "adoption", "agencies", "happily", "hiking", "painted", "running"]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE f USING fts5 (body, tokenize = 'porter unicode61')")
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab (f, 'row')")
    db.executemany("INSERT INTO f (body) VALUES (?)", [(w,) for w in words])
    assert {row[0] for row in db.execute("SELECT term FROM v")} == {stem(w) for w in words}


@pytest.mark.sqlite_only
def test_a_store_from_before_recall_is_indexed_when_it_opens(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "old")
    engine = Engine(settings)
    talk(engine, "old", CAROLINE, "2023-05-08")
    archived(engine, "old")
    engine.close()
    # Back to schema 5, as a database written before migration 6 is.
    db = sqlite3.connect(tmp_path / "old" / "viking.db")
    db.executescript(
        "DROP TABLE recall_vocab; DROP TABLE recall_fts; DROP TRIGGER sessions_doc_base; "
        "DROP INDEX sessions_by_doc_base; ALTER TABLE sessions DROP COLUMN doc_base; "
        "DROP INDEX sessions_recall_backlog; ALTER TABLE sessions DROP COLUMN indexed_through; PRAGMA user_version = 5;"
    )
    db.close()
    engine = Engine(settings)
    try:
        assert engine.store.schema_version() == len(MIGRATIONS)
        kinds = {hit.kind for hit in engine.search("adoption agencies", session_id="old").results}
        assert kinds == {"message", "archive"}
        talk(engine, "new", [("user", "adoption day!")], "2023-09-09")  # new sessions get their own range
        assert {h.session_id for h in engine.search("adoption", kinds=["message"]).results} == {"old", "new"}
        with engine.store._read() as tx:  # type: ignore[attr-defined]
            documents = tx.execute("SELECT count(*) AS n FROM recall_fts").fetchone()["n"]
        assert documents == len(CAROLINE) + 1 + 1  # each message and the archive once: none indexed twice
    finally:
        engine.close()


@pytest.mark.sqlite_only
def test_messages_are_indexed_in_batches_off_the_append(engine: Engine) -> None:
    """An append does not write the index (FTS5 writes a segment per transaction); the store's
    own thread indexes when writes pause, and a search indexes what is left first."""
    store = engine.store

    def behind() -> int:
        with store._read() as tx:  # type: ignore[attr-defined]
            row = tx.execute(
                "SELECT next_seq - 1 - indexed_through AS n FROM sessions WHERE session_id = 'b'"
            ).fetchone()
        return int(row["n"])

    for i in range(250):
        engine.add_message("b", "user", content=f"note {i}: the heron flew over pond {i}")
    assert behind() > 0 or store._checkpointer is not None  # type: ignore[attr-defined]
    for _ in range(300):  # the thread's pause is half a second
        if behind() == 0:
            break
        threading.Event().wait(0.01)
    assert behind() == 0
    engine.add_message("b", "user", content="the quetzal arrived at last")
    assert behind() == 1
    assert engine.search("quetzal", session_id="b").results[0].text.endswith("the quetzal arrived at last")
    assert behind() == 0


@pytest.mark.sqlite_only
@pytest.mark.slow
def test_a_process_that_never_closes_its_store_exits_cleanly(tmp_path: Path) -> None:
    """The store's thread may be indexing for search when a script ends without closing its
    engine: it is stopped before the interpreter is torn down (it was a segmentation fault)."""
    script = (
        "import pathlib, sys, time\n"
        "from viking_mcp.config import Settings\n"
        "from viking_mcp.engine import Engine\n"
        "engine = Engine(Settings(home=pathlib.Path(sys.argv[1])))\n"
        "for i in range(3000):\n"
        "    engine.add_message('s', 'user', content=f'note {i}: the heron flew over the pond yesterday ' * 3)\n"
        "time.sleep(float(sys.argv[2]))\n"
    )
    for pause in (0.45, 0.55, 0.65):
        run = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"home-{pause}"), str(pause)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert run.returncode == 0, (pause, run.returncode, run.stderr[-2000:])
