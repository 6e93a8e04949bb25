"""The offline extractive summariser, on real long conversations (LoCoMo)."""

from __future__ import annotations

import json
import re
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.summarize.extractive import ExtractiveSummariser, split_sentences

LOCOMO = REPO.parent / "shared" / "data" / "locomo10.zip"


def locomo(conversation: str = "26") -> dict[str, Any]:
    if not LOCOMO.exists():
        pytest.skip(f"{LOCOMO} not present")
    with zipfile.ZipFile(LOCOMO) as archive:
        data: dict[str, Any] = json.loads(archive.read(f"data/multimodal_dialog/locomo10_v2/{conversation}.json"))
    return data


def ingest(engine: Engine, data: dict[str, Any], sessions: int) -> str:
    """Each LoCoMo session as messages, committed as one archive."""
    session_id = "locomo"
    for n in range(1, sessions + 1):
        when = datetime.strptime(data[f"session_{n}_date_time"], "%I:%M %p on %d %B, %Y").isoformat()
        for turn in data[f"session_{n}"]:
            role = "user" if turn["speaker"] == data["speaker_a"] else "assistant"
            engine.add_message(session_id, role, content=f"{turn['speaker']}: {turn['text']}", created_at=when)
        engine.commit(session_id)
        engine.run_pending_phase2()
    return session_id


@pytest.fixture
def small_engine(tmp_path: Path) -> Any:
    engine = Engine(Settings(home=tmp_path, overview_max_tokens=600, abstract_max_tokens=60))
    yield engine
    engine.close()


def test_overviews_stay_bounded_and_carry_the_past_forward(small_engine: Engine) -> None:
    data = locomo()
    session_id = ingest(small_engine, data, sessions=6)
    archives = small_engine.store.list_archives(session_id)
    assert [a.status for a in archives] == ["completed"] * 6
    for archive in archives:
        sizes = [r.tokens for r in archive.overview_renderings]
        assert sizes[0] <= 600 and sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
        assert all(small_engine.tokens.count(r.text) == r.tokens for r in archive.overview_renderings)
        assert small_engine.tokens.count(archive.abstract) <= 60
        assert 1 <= len(split_sentences(archive.abstract)) <= 2
    latest = archives[-1].overview
    # The latest overview still speaks of earlier archives, in prose under dated headings.
    headings = re.findall(r"^## (archive_\d+) · (\d{1,2} [A-Z][a-z]+ \d{4})", latest, re.MULTILINE)
    assert headings[-1][0] == "archive_006"
    assert len(headings) >= 3
    assert "Caroline" in latest and "Melanie" in latest


def test_summaries_are_deterministic(tmp_path: Path) -> None:
    data = locomo("30")
    results = []
    for run in range(2):
        engine = Engine(Settings(home=tmp_path / str(run)))
        try:
            session_id = ingest(engine, data, sessions=2)
            results.append([(a.abstract, a.overview) for a in engine.store.list_archives(session_id)])
        finally:
            engine.close()
    assert results[0] == results[1]


def test_chit_chat_gives_way_to_facts(small_engine: Engine) -> None:
    turns = [
        "Hey! How are you?",
        "Good, thanks! You?",
        "Great, thanks for asking!",
        "I adopted a greyhound named Pixel from the Oakland shelter on 12 March 2024.",
        "Haha nice :)",
        "Ok cool.",
    ]
    for i, text in enumerate(turns):
        small_engine.add_message("s", "user" if i % 2 == 0 else "assistant", content=text)
    small_engine.commit("s")
    small_engine.run_pending_phase2()
    archive = small_engine.store.get_archive("s", 1)
    assert archive is not None
    smallest = archive.overview_renderings[-1].text
    assert "Pixel" in smallest and "Oakland" in smallest
    assert "Haha" not in archive.overview
    assert "Pixel" in archive.abstract


def test_a_summariser_alone_is_usable_without_an_engine() -> None:
    from viking_mcp.models import Message, TextPart
    from viking_mcp.summarize.base import ArchiveInput
    from viking_mcp.tokens import TokenCounter

    summariser = ExtractiveSummariser(TokenCounter(), overview_max_tokens=200)
    message = Message(id="m1", role="user", parts=[TextPart(text="Ada joined Tekla in Oslo on 3 May 2022.")],
                      created_at="2022-05-03T10:00:00.000000Z")  # fmt: skip
    summary = summariser.summarise(ArchiveInput("s", "archive_001", [message], previous_overview=""))
    assert "Tekla" in summary.abstract and "3 May 2022" in summary.abstract
    assert summary.overviews[0].startswith("# Session overview")


def test_summaries_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys, hashlib\n"
        "from pathlib import Path\n"
        "from tests.test_summariser import locomo, ingest\n"
        "from viking_mcp.config import Settings\n"
        "from viking_mcp.engine import Engine\n"
        "e = Engine(Settings(home=Path(sys.argv[1])))\n"
        "sid = ingest(e, locomo('30'), 3)\n"
        "text = ''.join(a.abstract + a.overview for a in e.store.list_archives(sid))\n"
        "print(hashlib.sha256(text.encode()).hexdigest())\n"
    )
    digests = set()
    for seed in ("0", "1", "42"):
        run = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / seed)],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        digests.add(run.stdout.strip())
    assert len(digests) == 1
