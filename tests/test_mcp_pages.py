"""What the model reads stays bounded: the MCP tools whose results can grow (expand_archive,
search_memories, list_sessions, list_tasks) answer one compact text, the same in `content`
and in `structuredContent`, within the server's cap in every form a host may hand over,
and page on: the next page starts exactly where the last stopped, nothing lost or repeated.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult

from tests.conftest import listed_ids, shown_messages
from viking_mcp.config import Settings, settings_from_env
from viking_mcp.engine import Engine
from viking_mcp.errors import InvalidArgument
from viking_mcp.mcp.server import build_server, result_text
from viking_mcp.tokens import TokenCounter

pytestmark = pytest.mark.anyio

CAP = 1_000  # the smallest cap the setting allows: a few pages from little data
CL100K = TokenCounter("cl100k_base")
# Words with non-ASCII, kept as such in the JSON hosts write (JSON.stringify).
WORDS = "Lisbon café, Zürich Straße, 東京の駅, naïve façade, Porto"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(Settings(home=tmp_path / "home", max_result_tokens=CAP, phase2_workers=0))
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Client]:
    async with Client(build_server(engine=engine)) as client:
        yield client


def bounded(result: CallToolResult, key: str) -> dict[str, Any]:
    """The result's structured content, after checking it is the compact text `content`
    carries, within the cap as text and as JSON as hosts write it (non-ASCII kept: Python's
    json.dumps would escape it, which no host sends a model)."""
    assert not result.is_error, result_text(result)
    structured = result.structured_content
    assert structured is not None
    text = result_text(result)
    assert structured[key] == text
    assert "\n  {" not in text and '\n  "' not in text  # lines, not indented JSON
    for form in (text, json.dumps(structured, ensure_ascii=False)):
        assert CL100K.count(form) <= CAP, (CL100K.count(form), form[:200])
    return structured


async def pages(client: Client, tool: str, key: str, position: str, **arguments: Any) -> list[dict[str, Any]]:
    """Every page of a tool's answer: each one's `next_<position>` passed back as `<position>`."""
    found: list[dict[str, Any]] = []
    at: Any = None
    while True:
        given = {**arguments, position: at} if at is not None else arguments
        page = bounded(await client.call_tool(tool, given), key)
        found.append(page)
        at = page[f"next_{position}"]
        if at is None:
            return found
        assert f"{position}={at}" in page[key] or f'{position}="{at}"' in page[key]  # a text reader pages too
        assert len(found) < 200, "paging does not end"


async def test_expand_archive_pages_whole_messages_and_cuts_only_what_no_page_holds(
    client: Client, engine: Engine
) -> None:
    said = {i: f"note {i:03d}: {WORDS}, {i} " + "and more of it " * 8 for i in range(80)}
    said[0] = "note 000: " + "a long opening message " * 190  # fits a page alone, not after the summaries
    said[40] = "note 040: " + "far longer than any page " * 700  # fits no page
    for i, text in said.items():
        engine.add_message("long", "user" if i % 2 == 0 else "assistant", content=text)
    overview = "\n\n".join(f"## part {n}\nWhat was decided about {WORDS}, step {n}." for n in range(200))
    engine.commit("long", abstract="Eighty notes about travel.", overview=overview)
    engine.run_pending_phase2()
    uri = "viking://session/long/history/archive_001"

    found = await pages(client, "expand_archive", "archive", "offset", session_id="long", archive_id="archive_001")
    first, *later = (page["archive"] for page in found)
    assert first.startswith(f"archive_001 of session long ({uri}): completed, 80 messages\n")
    assert "\nabstract: Eighty notes about travel.\n" in first
    assert "\noverview:\n## part 0\nWhat was decided" in first  # blank lines between sections dropped
    assert f"(overview cut short: read it whole at {uri}/.overview.md)" in first
    assert all("\nabstract: " not in page and "\noverview:" not in page for page in later)
    assert all(page.startswith(f"archive_001 of session long ({uri}):\n") for page in later)

    shown = [line for page in found for line in shown_messages(page["archive"])]
    numbers = [int(re.match(r"\w+: note (\d+)", line).group(1)) for line in shown]  # type: ignore[union-attr]
    assert numbers == list(range(80))  # every message once, in order
    for i, line in zip(numbers, shown, strict=True):
        role = "user" if i % 2 == 0 else "assistant"
        if i in (0, 40):  # their start, where to read them whole; the next page goes on after them
            assert line.startswith(f"{role}: note {i:03d}: ") and line.endswith(" …")
            page = next(p for p in found if line in shown_messages(p["archive"]))
            note = f"(message {i + 1} is cut short; read it whole at {uri}/messages.jsonl, line {i + 1})"
            assert note in page["archive"] and page["next_offset"] == i + 1
        else:
            assert line == f"{role}: {said[i]}"  # whole
    assert len(found) > 5
    whole = (await client.read_resource(f"{uri}/messages.jsonl")).contents[0].text  # type: ignore[union-attr]
    assert json.loads(whole.splitlines()[40])["parts"] == [{"type": "text", "text": said[40]}]

    # A limit bounds a page too; the cap may stop it sooner.
    small = await pages(
        client, "expand_archive", "archive", "offset", session_id="long", archive_id="archive_001", offset=1, limit=3
    )
    assert all(len(shown_messages(page["archive"])) <= 3 for page in small)
    assert sum(len(shown_messages(page["archive"])) for page in small) == 79


async def test_list_sessions_pages_within_the_cap(client: Client, engine: Engine) -> None:
    for i in range(120):
        engine.create_session(f"trip-{i:03d}", {"topic": f"{WORDS} {i}", "tags": ["plan", "book", i]})
    engine.create_session("huge-metadata", {"notes": "a very long note " * 3000})
    expected = [s.session_id for s in engine.list_sessions(500).sessions]

    found = await pages(client, "list_sessions", "sessions", "cursor", limit=500)
    listed = [session_id for page in found for session_id in listed_ids(page["sessions"])]
    assert listed == expected and len(found) > 5
    first = found[0]["sessions"].splitlines()
    assert first[0] == "sessions, newest first:"
    assert first[1].startswith("huge-metadata: 0 live messages, created ")
    assert first[1].endswith(" … (cut short: get_session shows it whole)")
    assert f'"topic":"{WORDS} 119","tags":["plan","book",119]' in first[2]  # compact, non-ASCII as is

    # Pages of a few: the limit, then the cursor, as before.
    few = await pages(client, "list_sessions", "sessions", "cursor", limit=7)
    assert [session_id for page in few for session_id in listed_ids(page["sessions"])] == expected
    assert all(len(listed_ids(page["sessions"])) <= 7 for page in few)


async def test_list_tasks_pages_within_the_cap(client: Client, engine: Engine) -> None:
    for i in range(40):
        engine.add_message(f"s{i:02d}", "user", content=f"{WORDS} {i}")
        engine.commit(f"s{i:02d}")
    engine.run_pending_phase2()
    expected = [t.task_id for t in engine.list_tasks(limit=500).tasks]
    assert len(expected) == 40

    found = await pages(client, "list_tasks", "tasks", "offset", limit=500)
    listed = [task_id for page in found for task_id in listed_ids(page["tasks"])]
    assert listed == expected and len(found) > 3
    line = found[0]["tasks"].splitlines()[1]
    assert line.startswith(f"{expected[0]}: session_commit completed, session s39, created ")
    assert ', result {"archive_id":"archive_001",' in line

    few = await pages(client, "list_tasks", "tasks", "offset", limit=6)
    assert [task_id for page in few for task_id in listed_ids(page["tasks"])] == expected
    assert all(len(listed_ids(page["tasks"])) <= 6 for page in few)
    last = bounded(await client.call_tool("list_tasks", {"offset": 40}), "tasks")
    assert last == {"tasks": "(no tasks after the first 40)", "next_offset": None}


async def test_search_memories_pages_within_the_cap(client: Client, engine: Engine) -> None:
    memories = [
        {"category": "entities", "name": f"place {i}", "abstract": f"Place {i} near Porto: {WORDS}. " * 6}
        for i in range(59)
    ]
    long_abstract = "Porto, " + "東京の駅" * 240  # a thousand characters, a thousand tokens and more
    memories.append({"category": "entities", "name": "long", "abstract": long_abstract})
    engine.add_message("s", "user", content="Places we liked near Porto.")
    engine.commit("s", memories=memories)
    engine.run_pending_phase2()
    expected = engine.search_memories("Porto", limit=100).memories
    assert len(expected) == 60

    found = await pages(client, "search_memories", "memories", "offset", query="Porto", limit=100)
    lines = [line for page in found for line in page["memories"].splitlines()[1:] if not line.startswith("(")]
    assert len(found) > 5
    assert [line.split(" (", 1)[0] for line in lines] == [hit.uri for hit in expected]
    for line, hit in zip(lines, expected, strict=True):
        whole = f"{hit.uri} (entities, score {hit.score:.2f}): {' '.join(hit.abstract.split())}"
        if hit.abstract == long_abstract:  # its start, and where to read it whole
            start = line.removesuffix(" … (cut short: read it at its uri)")
            assert start != line and whole.startswith(start) and len(start) < len(whole)
        else:
            assert line == whole
    assert found[0]["memories"].startswith("memories matching 'Porto', best first:\n")
    assert " (entities, score 1.00): " in lines[0]
    done = bounded(
        await client.call_tool("search_memories", {"query": "Porto", "limit": 100, "offset": 60}), "memories"
    )
    assert done == {"memories": "(no memories match 'Porto' after the first 60)", "next_offset": None}
    none = bounded(await client.call_tool("search_memories", {"query": "Atlantis"}), "memories")
    assert none == {"memories": "(no memories match 'Atlantis')", "next_offset": None}


def test_the_cap_is_a_setting() -> None:
    assert Settings().max_result_tokens == 10_000
    assert settings_from_env({"VIKING_MCP_MAX_RESULT_TOKENS": "4000"}).max_result_tokens == 4_000
    for bad in ("999", "lots", "2000000"):
        with pytest.raises(InvalidArgument, match="VIKING_MCP_MAX_RESULT_TOKENS"):
            settings_from_env({"VIKING_MCP_MAX_RESULT_TOKENS": bad})
