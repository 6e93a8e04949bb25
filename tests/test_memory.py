"""Long-term memory: merge rules category by category, agent-supplied memories, the
offline extractor on a real LoCoMo conversation, search, extract, and no network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_summariser import ingest, locomo
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.errors import InvalidArgument
from viking_mcp.models import Owner, StoredMemory

# The engine behaves the same on both stores.
pytestmark = pytest.mark.both_stores


def commit_memories(
    engine: Engine, session: str, memories: list[dict[str, Any]], text: str = "noted"
) -> dict[str, Any]:
    """One commit whose memories the agent supplies; returns the archive's memory diff."""
    engine.add_message(session, "user", content=text)
    result = engine.commit(session, abstract="a", overview="o", memories=memories)
    engine.run_pending_phase2()
    archive = engine.store.get_archive(session, int((result.archive_id or "")[-3:]))
    assert archive is not None and archive.status == "completed" and archive.memory_diff is not None
    return archive.memory_diff


def stored(engine: Engine, category: str | None = None, scope: str = "user") -> list[StoredMemory]:
    owner = "default"
    return engine.store.list_memories("default", scope, owner, category, 1000)


# --- merge rules, category by category ----------------------------------------------------------


def test_a_restated_preference_updates_it_with_before_and_after(engine: Engine) -> None:
    first = commit_memories(
        engine, "s", [{"category": "preferences", "name": "coffee", "abstract": "Likes flat whites."}]
    )
    assert [a["uri"] for a in first["adds"]] == ["viking://user/default/memories/preferences/coffee.md"]
    second = commit_memories(
        engine, "s", [{"category": "preferences", "name": "coffee", "abstract": "Now prefers black coffee, no milk."}]
    )
    assert second["adds"] == []
    [update] = second["updates"]
    assert update["uri"] == "viking://user/default/memories/preferences/coffee.md"
    assert update["before"]["abstract"] == "Likes flat whites."
    assert update["after"]["abstract"] == "Now prefers black coffee, no milk."
    assert "Likes flat whites." in update["after"]["content"]  # the history is kept
    [memory] = stored(engine, "preferences")
    assert memory.abstract == "Now prefers black coffee, no milk." and memory.version == 2


def test_a_preference_without_a_topic_merges_when_similar(engine: Engine) -> None:
    commit_memories(engine, "s", [{"category": "preferences", "abstract": "Prefers window seats on long flights"}])
    diff = commit_memories(engine, "s", [{"category": "preferences", "abstract": "Prefers window seats on flights"}])
    assert len(diff["updates"]) == 1 and diff["adds"] == []
    commit_memories(engine, "s", [{"category": "preferences", "abstract": "Hates early morning meetings"}])
    assert len(stored(engine, "preferences")) == 2


def test_a_second_event_adds_a_memory_and_the_same_event_twice_is_one(engine: Engine) -> None:
    event = {"category": "events", "abstract": "Ran the Lisbon half marathon.", "when": "2024-03-17"}
    commit_memories(engine, "s", [event])
    diff = commit_memories(
        engine, "s", [{"category": "events", "abstract": "Adopted a cat named Miso.", "when": "2024-04-02"}]
    )
    assert len(diff["adds"]) == 1 and diff["updates"] == []
    repeat = commit_memories(engine, "s", [event])
    assert repeat["adds"] == [] and repeat["updates"] == []
    assert len(stored(engine, "events")) == 2
    uris = sorted(m.uri for m in stored(engine, "events"))
    assert uris[0].startswith("viking://user/default/memories/events/2024-03-17-ran-the-lisbon")


def test_the_profile_stays_one_memory(engine: Engine) -> None:
    commit_memories(engine, "s", [{"category": "profile", "abstract": "Ada, data engineer in Lisbon.",
                                   "content": "- Name: Ada\n- Job: data engineer"}])  # fmt: skip
    diff = commit_memories(engine, "s", [{"category": "profile", "abstract": "Ada, data engineer, two cats.",
                                          "content": "- Job: data engineer\n- Pets: two cats"}])  # fmt: skip
    [profile] = stored(engine, "profile")
    assert profile.uri == "viking://user/default/memories/profile.md"
    assert profile.content == "- Name: Ada\n- Job: data engineer\n- Pets: two cats"
    assert [u["uri"] for u in diff["updates"]] == [profile.uri]
    commit_memories(engine, "other-session", [{"category": "profile", "abstract": "Ada.", "content": "- Name: Ada"}])
    assert len(stored(engine, "profile")) == 1


def test_entities_merge_by_name(engine: Engine) -> None:
    commit_memories(engine, "s", [{"category": "entities", "name": "Bea", "abstract": "Bea: Ada's sister.",
                                   "content": "- Lives in Porto."}])  # fmt: skip
    commit_memories(engine, "s", [{"category": "entities", "name": "bea", "abstract": "Bea: Ada's sister, a nurse.",
                                   "content": "- Works as a nurse.\n- Lives in Porto."}])  # fmt: skip
    [bea] = stored(engine, "entities")
    assert bea.uri.endswith("/entities/bea.md")
    assert bea.content == "- Lives in Porto.\n- Works as a nurse."


def test_a_memory_merged_at_every_commit_stays_bounded(engine: Engine) -> None:
    """An entity mentioned in every archive of a long session: the oldest lines go past the
    caps, so the memory and each archive's memory diff (its before and after) stay small."""
    from viking_mcp.memory.merge import MAX_CONTENT_CHARS, MAX_CONTENT_LINES

    for n in range(MAX_CONTENT_LINES + 15):
        diff = commit_memories(engine, "s", [{"category": "entities", "name": "Bea", "abstract": "Bea: Ada's sister.",
                                              "content": f"- Fact {n:03d}: " + "x" * 40}])  # fmt: skip
    [bea] = stored(engine, "entities")
    lines = bea.content.splitlines()
    assert len(lines) == MAX_CONTENT_LINES and len(bea.content) <= MAX_CONTENT_CHARS
    assert lines[0].startswith("- Fact 015:") and lines[-1].startswith(f"- Fact {MAX_CONTENT_LINES + 14:03d}:")
    [update] = diff["updates"]
    assert len(json.dumps(update)) < 3 * MAX_CONTENT_CHARS
    long_line = "y" * (MAX_CONTENT_CHARS // 4)
    commit_memories(engine, "s", [{"category": "entities", "name": "Bea", "abstract": "Bea: Ada's sister.",
                                   "content": "\n".join(f"- {i} {long_line}" for i in range(6))}])  # fmt: skip
    [bea] = stored(engine, "entities")
    assert len(bea.content) <= MAX_CONTENT_CHARS and bea.content.splitlines()[-1].startswith("- 5 ")


def test_cases_are_never_merged_and_patterns_merge_when_similar(engine: Engine) -> None:
    cases = [
        {"category": "cases", "abstract": "pip install failed offline: used the wheel cache."},
        {"category": "cases", "abstract": "pip install failed behind a proxy: set HTTPS_PROXY."},
    ]
    commit_memories(engine, "s", cases)
    commit_memories(engine, "s", [{"category": "patterns", "abstract": "Run the tests before every commit"}])
    commit_memories(engine, "s", [{"category": "patterns", "abstract": "Run all the tests before each commit"}])
    assert len(stored(engine, "cases", "agent")) == 2
    assert len(stored(engine, "patterns", "agent")) == 1
    assert all(m.uri.startswith("viking://agent/default/memories/") for m in stored(engine, None, "agent"))


def test_tool_and_skill_usage_is_counted_and_summed(engine: Engine) -> None:
    for run, status in enumerate(["completed", "error"]):
        engine.add_message("s", "assistant", parts=[
            {"type": "tool", "tool_id": f"c{run}a", "tool_name": "web_search", "tool_status": "pending"},
        ])  # fmt: skip
        engine.add_message("s", "assistant", parts=[
            {"type": "tool", "tool_id": f"c{run}a", "tool_name": "web_search", "tool_status": status,
             "tool_output": "results"},
            {"type": "tool", "tool_id": f"c{run}b", "tool_name": "calculator", "tool_status": "completed"},
        ])  # fmt: skip
        engine.record_usage("s", skill={"uri": "viking://agent/default/skills/pdf-reader", "success": run == 0})
        engine.commit("s")
        engine.run_pending_phase2()
    tools = {m.name: m for m in stored(engine, "tools", "agent")}
    assert tools["web_search"].stats == {"calls": 2, "completed": 1, "errors": 1}
    assert tools["calculator"].stats == {"calls": 2, "completed": 2, "errors": 0}
    [skill] = stored(engine, "skills", "agent")
    assert skill.name == "pdf-reader" and skill.stats == {"calls": 2, "failures": 1, "successes": 1}
    info = engine.get_session("s")
    assert info.memories_extracted["tools"] == 4 and info.memories_extracted["skills"] == 2


# --- agent-supplied, verbatim -------------------------------------------------------------------


def test_an_agent_supplied_commit_is_stored_verbatim_without_an_llm(engine: Engine) -> None:
    assert engine.llm is None
    engine.add_message("s", "user", content="I'm Ada. I just moved to Lisbon and I love flat whites.")
    memories = [
        {
            "category": "profile",
            "abstract": "Ada lives in Lisbon.",
            "overview": "Moved in May.",
            "content": "- Ada\n- Lisbon",
        },
        {"category": "preferences", "name": "coffee", "abstract": "Loves flat whites."},
    ]
    result = engine.commit(
        "s", abstract="Ada introduced herself.", overview="## Ada\nMoved to Lisbon.", memories=memories
    )
    engine.run_pending_phase2()
    detail = engine.expand_archive("s", result.archive_id or "")
    assert (detail.abstract, detail.overview) == ("Ada introduced herself.", "## Ada\nMoved to Lisbon.")
    by_category = {m.category: m for m in stored(engine)}
    assert set(by_category) == {"profile", "preferences"}  # nothing extracted besides what was given
    profile = by_category["profile"]
    assert (profile.abstract, profile.overview, profile.content) == (
        "Ada lives in Lisbon.",
        "Moved in May.",
        "- Ada\n- Lisbon",
    )
    task = engine.get_task(result.task_id or "")
    assert task.result is not None and task.result.memories_extracted["total"] == 2
    assert engine.get_session("s").llm_token_usage.total == 0


def test_bad_agent_memories_are_refused_before_anything_is_archived(engine: Engine) -> None:
    engine.add_message("s", "user", content="x")
    with pytest.raises(InvalidArgument, match="category"):
        engine.commit("s", memories=[{"category": "hobbies", "abstract": "x"}])
    with pytest.raises(InvalidArgument):
        engine.commit("s", memories=[{"category": "events"}])
    assert engine.get_session("s").commit_count == 0


# --- search, extract, active counts -------------------------------------------------------------


def test_search_ranks_and_filters(engine: Engine) -> None:
    commit_memories(engine, "s", [
        {"category": "events", "abstract": "Ran the Lisbon half marathon in 1:52.", "when": "2024-03-17"},
        {"category": "preferences", "name": "running", "abstract": "Likes running along the river at dawn."},
        {"category": "entities", "name": "Bea", "abstract": "Bea: Ada's sister, lives in Porto."},
    ])  # fmt: skip
    hits = engine.search_memories("When did Ada run the half marathon?").memories
    assert hits[0].abstract.startswith("Ran the Lisbon half marathon")
    assert hits[0].score > 0 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert [h.category for h in engine.search_memories("Porto sister", category="entities").memories] == ["entities"]
    assert engine.search_memories("running", category="events").memories == []
    # Free text is never FTS syntax.
    for query in ['"unbalanced', "NEAR(a b", "a* OR", "-- ; drop table", "✈️ 東京"]:
        engine.search_memories(query)
    with pytest.raises(InvalidArgument):
        engine.search_memories("   ")


def test_record_usage_feeds_active_count_at_commit(engine: Engine) -> None:
    commit_memories(engine, "s", [
        {"category": "preferences", "name": "tea", "abstract": "Drinks green tea in the afternoon."},
        {"category": "preferences", "name": "tea-brand", "abstract": "Buys green tea from Kyoto."},
    ])  # fmt: skip
    tied = engine.search_memories("green tea").memories
    assert {h.active_count for h in tied} == {0}
    used = "viking://user/default/memories/preferences/tea-brand.md"
    engine.record_usage("s", contexts=[used, "viking://resources/tea-guide"])
    engine.add_message("s", "user", content="Which tea again?")
    commit = engine.commit("s")
    engine.run_pending_phase2()
    task = engine.get_task(commit.task_id or "")
    assert task.result is not None and task.result.active_count_updated == 2
    hits = {h.uri: h.active_count for h in engine.search_memories("green tea").memories}
    assert hits[used] == 1


def test_extract_now_and_again_adds_no_duplicates(engine: Engine) -> None:
    engine.add_message("s", "user", content="I'm a nurse and I live in Porto. I love hiking in the Geres mountains.")
    engine.add_message("s", "user", content="Yesterday I adopted a dog named Pixel.", created_at="2024-05-02T10:00:00Z")
    first = engine.extract("s")
    categories = {m.category for m in first.memories}
    assert {"profile", "preferences", "events"} <= categories
    assert engine.get_task(first.task_id).task_type == "session_extract"
    again = engine.extract("s")
    assert again.memories == []
    events = [m.abstract for m in stored(engine, "events")]
    assert events == ["1 May 2024: User: Yesterday I adopted a dog named Pixel."]
    engine.commit("s")
    engine.run_pending_phase2()
    assert [m.abstract for m in stored(engine, "events")] == events  # the commit found nothing new


# --- a real conversation, offline -----------------------------------------------------------------


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_locomo_conversation_offline(
    new_settings: Callable[[str], Settings], store_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = locomo("26")
    engine = Engine(new_settings("home"))
    try:
        sessions = sum(1 for key in data if re.fullmatch(r"session_\d+", key))
        ingest(engine, data, sessions)
        speakers = [data["speaker_a"], data["speaker_b"]]
        [profile] = stored(engine, "profile")
        entities = {m.name for m in stored(engine, "entities")}
        events = [m.abstract for m in stored(engine, "events")]
        for speaker in speakers:
            assert f"- {speaker}: " in profile.content, speaker
            assert speaker in entities, speaker
            assert sum(1 for e in events if f": {speaker}: " in e) >= 3, speaker

        answered = []
        for qa in data["qa"]:
            if qa.get("category") not in (1, 2) or len(_words(str(qa["answer"]))) < 2:
                continue
            for hit in engine.search_memories(qa["question"], limit=3).memories:
                memory = engine.store.memories_by_uri("default", [hit.uri])[hit.uri]
                if _words(str(qa["answer"])) <= _words(f"{memory.abstract} {memory.content}"):
                    answered.append(f"{qa['question']} -> {qa['answer']}\n    found: {hit.abstract[:110]}")
                    break
        with capsys.disabled():
            print(f"\nsearch_memories answered {len(answered)} LoCoMo questions (conversation 26, {store_backend}):")
            print("\n".join(f"  {line}" for line in answered))
        assert len(answered) >= 5
    finally:
        engine.close()


# --- the network ----------------------------------------------------------------------------------


def test_the_default_configuration_never_touches_the_network(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import socket, sys
        def refuse(*args, **kwargs):
            raise AssertionError("network used: %r" % (args,))
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from pathlib import Path
        from viking_mcp.config import settings_from_env
        from viking_mcp.engine import Engine
        engine = Engine(settings_from_env())
        assert engine.llm is None
        engine.add_message("s", "user", content="I'm Ada, I moved to Lisbon last week and I love tram 28.")
        engine.commit("s", wait=True)
        engine.extract("s")
        hits = engine.search_memories("Lisbon").memories
        print(len(hits), engine.get_session("s").commit_count)
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "VIKING_MCP_HOME": str(tmp_path / "home"),
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "c"),
    }
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    hits, commits = result.stdout.split()
    assert int(hits) >= 1 and commits == "1"


def test_memory_diff_is_readable_per_archive(engine: Engine) -> None:
    diff = commit_memories(engine, "s", [{"category": "events", "abstract": "Bought a bike.", "when": "2024-06-01"}])
    on_disk = json.loads(json.dumps(diff))
    assert set(on_disk) == {"archive_id", "adds", "updates", "deletes"}
    assert on_disk["archive_id"] == "archive_001"


# --- found in review: tenancy of agent memories, counting once, names, dates ---------------------


def test_one_users_agent_memories_are_not_anothers(engine: Engine) -> None:
    from viking_mcp.engine.uris import read_node
    from viking_mcp.errors import NotFound

    ada, bob = Owner("acme", "ada", "claude"), Owner("acme", "bob", "claude")
    engine.add_message("ada-s", "user", content="My insurance claim 12345 was refused.", actor=ada)
    case = {"category": "cases", "abstract": "Insurance claim 12345 refused: appealed."}
    commit = engine.commit("ada-s", abstract="a", overview="o", actor=ada, memories=[case])
    engine.run_pending_phase2()
    assert engine.get_task(commit.task_id or "", actor=ada).status == "completed"
    [hit] = engine.search_memories("insurance claim", actor=ada).memories
    assert engine.search_memories("insurance claim", actor=bob).memories == []
    read_node(engine, hit.uri, ada)
    with pytest.raises(NotFound):
        read_node(engine, hit.uri, bob)


def test_tool_usage_is_counted_once_across_extract_commit_and_archives(engine: Engine) -> None:
    def tool(status: str) -> list[dict[str, Any]]:
        return [{"type": "tool", "tool_id": "call-1", "tool_name": "read_file", "tool_status": status}]

    engine.add_message("s", "assistant", parts=tool("running"))
    engine.extract("s")
    engine.commit("s")  # the call is still running: not counted yet
    engine.run_pending_phase2()
    engine.add_message("s", "assistant", parts=tool("completed"))
    engine.extract("s")
    engine.extract("s")
    engine.commit("s")
    engine.run_pending_phase2()
    [memory] = stored(engine, "tools", "agent")
    assert memory.stats == {"calls": 1, "completed": 1, "errors": 0}


def test_names_that_slug_alike_stay_apart(engine: Engine) -> None:
    names = ["read_file", "read-file", "C++", "C#", "Bea", "bea!"]
    commit_memories(engine, "s", [{"category": "entities", "name": n, "abstract": f"{n}."} for n in names])
    assert len(stored(engine, "entities")) == len(names)
    commit_memories(engine, "s", [{"category": "entities", "name": " BEA ", "abstract": "Bea again."}])
    assert len(stored(engine, "entities")) == len(names)  # casefold and spaces: the same Bea


def test_a_restated_preference_with_other_words_is_one_memory(engine: Engine) -> None:
    for text in ("I love hiking in the hills near Sintra.", "I really love hiking.", "I love hiking on weekends."):
        engine.add_message("s", "user", content=text)
    engine.commit("s")
    engine.run_pending_phase2()
    [preference] = stored(engine, "preferences")
    assert preference.content.count("hiking") == 3


def test_dates_without_a_year_do_not_jump_into_the_future() -> None:
    from datetime import date

    from viking_mcp.memory.offline import resolve_when

    assert resolve_when("We had a party on December 31.", date(2024, 1, 2)) == "2023-12-31"
    assert resolve_when("We will travel on December 31.", date(2024, 1, 2)) == "2024-12-31"
    assert resolve_when("Last Friday I ran 10k.", date(2024, 5, 3)) == "2024-04-26"  # said on a Friday
    assert resolve_when("On February 30 or so, well, yesterday, I moved.", date(2024, 3, 2)) == "2024-03-01"


@pytest.mark.parametrize(
    ("sentence", "said_on", "dated"),
    [
        # The words point forward: the first such day on or after the day it was said.
        ("I fly to Lisbon on 3 May.", "2026-12-02", "2027-05-03"),
        ("I'm flying to Lisbon on 3 May.", "2026-12-02", "2027-05-03"),
        ("We leave for Porto on May 3rd!", "2026-12-02", "2027-05-03"),
        ("I'm starting my new job on 3 May.", "2026-12-02", "2027-05-03"),
        ("I\u2019ll be in Porto on 3 May.", "2026-12-02", "2027-05-03"),  # a typed apostrophe
        ("My exam is on 10 January.", "2027-01-05", "2027-01-10"),
        ("See you on 2 December, I will be there.", "2026-12-02", "2026-12-02"),  # the same day counts
        # ... backward: the last such day on or before it.
        ("I flew to Lisbon on 3 May.", "2026-12-02", "2026-05-03"),
        ("We had a party on 31 December.", "2027-01-02", "2026-12-31"),
        ("On 31 December we visited my aunt.", "2027-01-02", "2026-12-31"),
        ("We got married on 3 May.", "2026-12-02", "2026-05-03"),
        ("We're getting married on 3 May.", "2026-12-02", "2027-05-03"),
        # Both: the clause that holds the date decides.
        ("We went there last week and will go again on 3 May.", "2026-12-02", "2027-05-03"),
        ("I flew to Lisbon on 3 May and I'm going back next year.", "2026-12-02", "2026-05-03"),
        ("The next day, 3 May, we hiked.", "2026-12-02", "2026-05-03"),  # "the next day" tells a story
        # Neither: the nearest, within half a year.
        ("Party on 3 May!", "2026-12-02", "2027-05-03"),
        ("My birthday: 3 June.", "2026-12-02", "2026-06-03"),
        # A year given is the year; 29 February is a leap year's.
        ("On May 3, 2025 I fly again.", "2026-12-02", "2025-05-03"),
        ("I was born on 29 February.", "2026-12-02", "2024-02-29"),
        ("We marry on 29 February.", "2026-12-02", "2028-02-29"),
        ("It was 29 February.", "2028-02-29", "2028-02-29"),
    ],
)
def test_a_date_without_a_year_is_the_one_the_words_point_to(sentence: str, said_on: str, dated: str) -> None:
    from datetime import date

    from viking_mcp.memory.offline import resolve_when

    assert resolve_when(sentence, date.fromisoformat(said_on)) == dated


def test_a_trip_announced_in_december_is_remembered_in_next_year(engine: Engine) -> None:
    engine.add_message("s", "user", content="I fly to Lisbon on 3 May.", created_at="2026-12-02T10:00:00Z")
    engine.add_message("s", "user", content="I flew to Porto on 3 May.", created_at="2026-12-02T10:01:00Z")
    engine.commit("s")
    engine.run_pending_phase2()
    events = {m.abstract for m in stored(engine, "events")}
    assert "3 May 2027: User: I fly to Lisbon on 3 May." in events
    assert "3 May 2026: User: I flew to Porto on 3 May." in events


def test_active_count_counts_each_context_once_and_only_the_owners(engine: Engine) -> None:

    ada, bob = Owner("default", "ada", "default"), Owner("default", "bob", "default")
    engine.add_message("ada-s", "user", content="x", actor=ada)
    engine.commit("ada-s", abstract="a", overview="o", actor=ada,
                  memories=[{"category": "preferences", "name": "tea", "abstract": "Likes green tea."}])  # fmt: skip
    engine.run_pending_phase2()
    [hit] = engine.search_memories("green tea", actor=ada).memories
    engine.add_message("bob-s", "user", content="y", actor=bob)
    engine.record_usage("bob-s", contexts=[hit.uri] * 5, actor=bob)  # not bob's memory
    engine.commit("bob-s", actor=bob)
    engine.add_message("ada-s", "user", content="z", actor=ada)
    engine.record_usage("ada-s", contexts=[hit.uri] * 5, actor=ada)
    engine.commit("ada-s", actor=ada)
    engine.run_pending_phase2()
    [hit] = engine.search_memories("green tea", actor=ada).memories
    assert hit.active_count == 1
