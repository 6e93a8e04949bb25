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


def test_the_http_shape_keeps_every_message_and_lists_the_latest_abstract(archives_only: Engine) -> None:
    # With room for everything: the whole overview (every archive's section) and beside it
    # the latest archive's abstract, as in the seed's example, and no other.
    context = archives_only.get_context("jon-gina", 1_000_000)
    assert [a.archive_id for a in context.pre_archive_abstracts] == [context.latest_archive_id] == ["archive_019"]
    for budget in (500, 2_000, 4_000):
        context = archives_only.get_context("jon-gina", budget)
        shown = set(re.findall(r"^## (archive_\d{3})", context.latest_archive_overview, re.MULTILINE))
        others = {a.archive_id for a in context.pre_archive_abstracts} - {"archive_019"}
        assert not shown & others, budget


def test_every_budget_is_filled_and_never_passed(tmp_path: Path) -> None:
    """Stored counts misjudge the rendered lines (JSON escapes "?\\n" apart): whatever the
    budget, the result is recomposed until it fits, and it still shows the newest messages
    and uses most of the budget (a try that was over by a few tokens used to pick the same
    messages again, six times, and fall back to none)."""
    engine = Engine(Settings(home=tmp_path))
    try:
        for n in range(300):
            ending = "?!."[n % 3]
            engine.add_message(
                "s", "user" if n % 2 else "assistant", content=f"Line {n} says {'so ' * (n % 7)}much{ending}"
            )
        for budget in range(100, 3_000, 97):
            read = engine.read_context("s", budget)
            forms = [read.text, json.dumps(read.structured, ensure_ascii=False)]
            worst = max(COUNTER.count(form) for form in forms)
            assert worst <= budget, (budget, worst)
            assert "Line 299 says" in read.text, budget
            assert budget - worst <= max(60, budget // 10), (budget, worst)
    finally:
        engine.close()
