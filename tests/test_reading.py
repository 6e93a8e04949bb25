"""What the model reads from get_context over MCP: within the budget, whichever part a host
hands it, and no archive twice.

Claude Code and VS Code hand the model `JSON.stringify(structuredContent)`; other hosts the
`content` text. Both are counted here with cl100k, as the model would read them, against
the budget the agent asked for, on the real server spawned over stdio.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.conftest import stdio_params
from tests.test_summariser import locomo
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.tokens import TokenCounter

COUNTER = TokenCounter()


def framing(budget: int) -> int:
    """The framing the contract allows beyond the budget: 2% or 50 tokens."""
    return max(50, budget // 50)


def ingest_locomo(engine: Engine, session_id: str, conversation: str = "30", *, named: bool = False) -> None:
    """Each LoCoMo session as messages (role by speaker), committed as one archive."""
    data = locomo(conversation)
    number = 1
    while data.get(f"session_{number}"):
        when = datetime.strptime(data[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y").isoformat()
        for turn in data[f"session_{number}"]:
            role = "user" if turn["speaker"] == data["speaker_a"] else "assistant"
            content = f"{turn['speaker']}: {turn['text']}" if named else turn["text"]
            engine.add_message(session_id, role, content=content, created_at=when)
        engine.commit(session_id)
        engine.run_pending_phase2()
        number += 1


@pytest.fixture(scope="module")
def locomo_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Conversation 30 in 19 archives, then 600 short live messages."""
    home = tmp_path_factory.mktemp("reading")
    engine = Engine(Settings(home=home))
    try:
        ingest_locomo(engine, "jon-gina")
        assert len(engine.store.list_archives("jon-gina")) == 19
        for n in range(600):
            role = "user" if n % 2 else "assistant"
            engine.add_message("jon-gina", role, content=f"Message {n}: shall we meet at {n % 12 + 1} pm?")
    finally:
        engine.close()
    yield home


def counts(result: Any) -> dict[str, int]:
    text = "".join(block.text for block in result.content)
    return {
        "content": COUNTER.count(text),
        "json": COUNTER.count(json.dumps(result.structured_content)),
        "json_unescaped": COUNTER.count(json.dumps(result.structured_content, ensure_ascii=False)),
    }


@pytest.mark.anyio
@pytest.mark.slow
async def test_what_either_host_hands_the_model_fits_the_budget_over_stdio(locomo_home: Path) -> None:
    async with Client(stdio_params(locomo_home)) as client:
        for budget in (500, 2_000, 8_000, 20_000):
            result = await client.call_tool("get_context", {"session_id": "jon-gina", "token_budget": budget})
            assert not result.is_error, result.content
            structured = result.structured_content
            assert set(structured) == {"context", "estimatedTokens"}  # no typed fields repeating the text
            estimated = structured["estimatedTokens"]
            counted = counts(result)
            for form, count in counted.items():
                assert count <= budget + framing(budget), (budget, form, count)
            # The estimate is the JSON a JavaScript host hands the model; the text is never
            # more. (It is a few percent less on short lines: JSON escapes "?\n" apart.)
            assert estimated == counted["json_unescaped"]
            # Python's json.dumps escapes non-ASCII (no host does): here, a few emoji.
            assert abs(counted["json"] - estimated) <= 0.02 * estimated
            assert 0.9 * estimated <= counted["content"] <= estimated
            text = result.content[0].text
            # The newest live messages that fit, and one line about the older ones left out.
            assert "Message 599:" in text
            left_out = re.search(r"\((\d+) older messages not shown: ", text)
            if budget < 20_000:  # at 20,000 all 600 fit, beside the overview
                assert left_out is not None and 0 < int(left_out.group(1)) < 600
                assert f"Message {int(left_out.group(1)) - 1}:" not in text
                assert f"Message {int(left_out.group(1))}:" in text
            else:
                assert left_out is None and "Message 0:" in text and "<overview>" in text


@pytest.fixture(scope="module")
def archives_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = Engine(Settings(home=tmp_path_factory.mktemp("archives-only")))
    ingest_locomo(engine, "jon-gina")
    yield engine
    engine.close()


@pytest.mark.parametrize("budget", [500, 1_000, 2_000, 4_000, 8_000])
def test_no_archive_is_shown_twice(archives_only: Engine, budget: int) -> None:
    text = archives_only.read_context("jon-gina", budget).text
    ids = re.findall(r"archive_\d{3}", text)
    assert ids and len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert COUNTER.count(text) <= budget


def test_at_2000_tokens_the_premise_is_kept(archives_only: Engine) -> None:
    """LoCoMo conversation 30 opens with Jon losing his banking job: what every later
    archive builds on must not be the first thing a tight budget drops."""
    text = archives_only.read_context("jon-gina", 2_000).text
    assert re.search(r"\bbank(er|ing)\b[^\n]*", text, re.IGNORECASE), text
    ids = re.findall(r"archive_\d{3}", text)
    assert len(ids) == len(set(ids))


def test_the_http_shape_keeps_the_seeds_abstracts(archives_only: Engine) -> None:
    """HTTP and the embedded client keep the seed's shape: beside the overview, the latest
    archive's abstract and the earlier ones, newest first, the oldest dropped first."""
    context = archives_only.get_context("jon-gina", 1_000_000)
    assert [a.archive_id for a in context.pre_archive_abstracts] == [f"archive_{n:03d}" for n in range(19, 0, -1)]
    context = archives_only.get_context("jon-gina", 2_000)
    ids = [a.archive_id for a in context.pre_archive_abstracts]
    assert ids == [f"archive_{n:03d}" for n in range(19, 19 - len(ids), -1)]


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Engine]:
    """An empty engine of its own (the tests below build their sessions in it)."""
    engine = Engine(Settings(home=tmp_path))
    yield engine
    engine.close()


def forms_within(read: Any, budget: int) -> None:
    """The text and the JSON hosts write are within the budget and its framing allowance."""
    for form in (read.text, json.dumps(read.structured, ensure_ascii=False)):
        assert COUNTER.count(form) <= budget + framing(budget), (budget, COUNTER.count(form), form[:300])


@pytest.mark.parametrize(
    "line",
    [
        "Мы обсудили проект и завтрашнюю встречу, номер {n}.",
        "東京の駅で会いましょう、{n}番目のメッセージです。",
        "🚀🎉 party {n} 🥳🎂",
    ],
    ids=["cyrillic", "japanese", "emoji"],
)
def test_text_in_any_script_is_shown(fresh: Engine, line: str) -> None:
    """Python's json.dumps escapes non-ASCII (a Cyrillic word at four times its tokens);
    no host sends that to a model, and it no longer shrinks the context to nothing."""
    for n in range(300):
        fresh.add_message("s", "user", content=line.format(n=n))
    for budget in (200, 2_000, 20_000):
        read = fresh.read_context("s", budget)
        forms_within(read, budget)
        assert line.format(n=299) in read.text, budget
        assert COUNTER.count(json.dumps(read.structured, ensure_ascii=False)) > budget * 0.5 or "(" not in read.text


def test_a_huge_newest_message_is_cut_not_hiding_everything(fresh: Engine) -> None:
    for n in range(5):
        fresh.add_message("s", "user", content=f"Short message number {n}.")
    huge = "\n".join(f"line {n}: the quick brown fox jumps over the lazy dog" for n in range(5_000))
    fresh.add_message("s", "assistant", content=huge)
    read = fresh.read_context("s", 20_000)
    forms_within(read, 20_000)
    assert "line 0: the quick brown fox" in read.text and "cut to fit" in read.text
    assert "(5 older messages not shown" in read.text


def test_tiny_budgets_and_long_ids_stay_within_the_framing(fresh: Engine) -> None:
    long_id = "s" * 128
    for n in range(3):
        fresh.add_message(long_id, "user", content=f"message {n}")
    for budget in (0, 10, 80, 200):
        forms_within(fresh.read_context(long_id, budget), budget)
    assert "message 2" in fresh.read_context(long_id, 200).text


def test_at_a_small_budget_the_live_message_goes_before_the_archives(fresh: Engine) -> None:
    for n in range(25):
        fresh.add_message("s", "user", content=f"Archive {n} talked about trains to Porto.")
        fresh.commit("s")
    fresh.run_pending_phase2()
    fresh.add_message("s", "user", content="live")
    read = fresh.read_context("s", 100)
    forms_within(read, 100)
    assert "user: live" in read.text and "not shown" not in read.text.split("</messages>")[0]


def test_an_agents_overview_keeps_its_lines_and_its_own_archive_headings(fresh: Engine) -> None:
    overview = (
        "## Status\nProject: Atlas.\nOwner: Alice\nDeadline: Friday.\n## archive_001 notes\n- kick-off went well."
    )
    for n in range(4):
        fresh.add_message("s", "user", content=f"Step {n} of the Atlas project.")
        fresh.commit("s", abstract=f"Step {n}.", overview=overview)
    fresh.run_pending_phase2()
    read = fresh.read_context("s", 2_000)
    assert "Project: Atlas.\nOwner: Alice\nDeadline: Friday." in read.text  # its lines, not one paragraph
    for budget in range(40, 200, 5):
        read = fresh.read_context("s", budget)
        forms_within(read, budget)
        ids = re.findall(r"archive_\d{3}(?! notes)", read.text)
        assert len(ids) == len(set(ids)), (budget, read.text)
        if "<overview" in read.text:
            # the agent's "## archive_001 notes" is not archive_001's section: archive_004's
            # overview is shown, and counted so
            assert read.stats.droppedArchives <= 3, (budget, read.text)
            if "<overview>" not in read.text:
                assert '<overview of="archive_004 and before">' in read.text


def test_every_budget_is_filled_and_never_passed(fresh: Engine) -> None:
    """Stored counts misjudge the rendered lines (JSON escapes "?\\n" apart): whatever the
    budget, the result is recomposed until it fits, and it still shows the newest messages
    and uses most of the budget (a try that was over by a few tokens used to pick the same
    messages again, six times, and fall back to none)."""
    for n in range(300):
        ending = "?!."[n % 3]
        fresh.add_message("s", "user" if n % 2 else "assistant", content=f"Line {n} says {'so ' * (n % 7)}much{ending}")
    for budget in range(100, 3_000, 97):
        read = fresh.read_context("s", budget)
        forms = [read.text, json.dumps(read.structured, ensure_ascii=False)]
        worst = max(COUNTER.count(form) for form in forms)
        assert worst <= budget, (budget, worst)
        assert "Line 299 says" in read.text, budget
        assert budget - worst <= max(60, budget // 10), (budget, worst)
