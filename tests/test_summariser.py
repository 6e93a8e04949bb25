"""The offline extractive summariser, on real long conversations (LoCoMo)."""

from __future__ import annotations

import itertools
import json
import re
import zipfile
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from tests.conftest import REPO
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.summarize.dates import resolve_relative_dates, strip_date_notes
from viking_mcp.summarize.extractive import ExtractiveSummariser, clean_sentence, split_sentences

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
    # Once there is more to say than the bound, the longest rendering (what the next commit
    # carries forward) is filled to it.
    assert all(a.overview_renderings[0].tokens >= 0.9 * 600 for a in archives[2:])
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


# --- what the extractive summariser keeps, and how ---------------------------------------------


def summarise_turns(turns: list[tuple[str, str]], created_at: str, **bounds: int) -> Any:
    from viking_mcp.models import Message, TextPart
    from viking_mcp.summarize.base import ArchiveInput
    from viking_mcp.tokens import TokenCounter

    summariser = ExtractiveSummariser(TokenCounter(), **bounds)
    messages = [
        Message(id=f"m{i}", role="user" if speaker == "Ada" else "assistant",
                parts=[TextPart(text=f"{speaker}: {text}")], created_at=created_at)
        for i, (speaker, text) in enumerate(turns)
    ]  # fmt: skip
    return summariser.summarise(ArchiveInput("s", "archive_001", messages, previous_overview=""))


def test_relative_dates_are_written_out_from_when_they_were_said() -> None:
    # 8 May 2023 was a Monday.
    summary = summarise_turns(
        [
            ("Ada", "I went to a pottery workshop in Porto yesterday with my sister Ines."),
            ("Bo", "I ran the Lisbon half marathon last Friday in 1 hour 52 minutes."),
            ("Ada", "We moved to Braga last month after my job at Critical Software started."),
            ("Bo", "I adopted a greyhound called Pixel last year from the Setubal shelter."),
            ("Ada", "My brother Tiago visited us in Braga last week for the Sao Joao festival."),
        ],
        "2023-05-08T14:00:00Z",
    )
    overview = summary.overviews[0]
    written_out = {
        "yesterday": "yesterday (7 May 2023)",
        "last Friday": "last Friday (5 May 2023)",
        "last month": "last month (April 2023)",
        "last year": "last year (2022)",
        "last week": "last week (the week before 8 May 2023)",
    }
    kept = [said for said in written_out if said in overview]
    assert len(kept) >= 3, overview  # the newest section keeps most of what was said
    for said in kept:
        assert written_out[said] in overview
    assert "## archive_001 · 8 May 2023" in overview


@pytest.mark.parametrize(
    ("said", "resolved"),
    [
        ("I went there yesterday.", "I went there yesterday (7 May 2023)."),
        ("We left the day before yesterday.", "We left the day before yesterday (6 May 2023)."),
        ("It opened last Friday.", "It opened last Friday (5 May 2023)."),
        ("We met last Monday.", "We met last Monday (1 May 2023)."),  # not the day it was said
        ("We moved last month.", "We moved last month (April 2023)."),
        ("She was born last year.", "She was born last year (2022)."),
        ("A concert last week!", "A concert last week (the week before 8 May 2023)!"),
        ("I quit two days ago.", "I quit two days ago (6 May 2023)."),
        ("I started 3 years ago.", "I started 3 years ago (2020)."),
        ("We camped two weeks ago.", "We camped two weeks ago (the week of 24 April 2023)."),
        (
            "We camped a few weeks ago.",
            "We camped a few weeks ago (a few weeks before 8 May 2023).",
        ),  # vague stays vague
        ("Back in January it snowed.", "Back in January it snowed."),  # nothing relative: left alone
        ("yesterday (7 May 2023)", "yesterday (7 May 2023)"),  # never twice
        ("We hiked this past weekend.", "We hiked this past weekend (the weekend before 8 May 2023)."),
        ("This weekend I will hike.", "This weekend I will hike."),  # said on a Monday: maybe the next one
        ("We go on the weekend.", "We go on the weekend."),
    ],
)
def test_relative_dates_resolve_against_the_day_they_were_said(said: str, resolved: str) -> None:
    from datetime import date

    from viking_mcp.summarize.dates import resolve_relative_dates

    assert resolve_relative_dates(said, date(2023, 5, 8)) == resolved
    assert resolve_relative_dates(said, None) == said


def test_relative_dates_cross_the_year_the_way_they_point() -> None:
    """Every expression the summariser resolves says its own direction ("next", "last",
    "ago"): none is a bare day and month, so none can land in the wrong year."""
    from datetime import date

    from viking_mcp.summarize.dates import resolve_relative_dates

    assert resolve_relative_dates("I start next month, tomorrow, next year.", date(2026, 12, 31)) == (
        "I start next month (January 2027), tomorrow (1 January 2027), next year (2027)."
    )
    assert resolve_relative_dates("We met last month, last Friday, two months ago.", date(2027, 1, 1)) == (
        "We met last month (December 2026), last Friday (25 December 2026), two months ago (November 2026)."
    )


def test_opening_interjections_and_small_talk_are_cut() -> None:
    summary = summarise_turns(
        [
            ("Ada", "Hey Bo! Long time no see!"),
            ("Bo", "Wow, I finally finished the Lisbon marathon in 3 hours 58 minutes!"),
            ("Ada", "That's so awesome, I'm really proud of you!"),
            ("Bo", "Thanks so much, you're the best!"),
            ("Ada", "Haha, I started learning Portuguese with a tutor named Rita in March."),
        ],
        "2023-05-08T14:00:00Z",
    )
    overview = summary.overviews[0]
    assert "Bo: I finally finished the Lisbon marathon" in overview
    assert "Ada: I started learning Portuguese" in overview
    for chit_chat in ("Wow", "Haha", "proud of you", "Long time", "the best"):
        assert chit_chat not in overview
    assert "Lisbon marathon" in summary.abstract or "Portuguese" in summary.abstract


def test_a_repeated_sentence_is_kept_once() -> None:
    said = "I booked the ferry to Madeira for 14 June with my cousin Marta."
    summary = summarise_turns([("Ada", said), ("Bo", "Sounds lovely!"), ("Ada", said)], "2023-05-08T14:00:00Z")
    assert summary.overviews[0].count("ferry to Madeira") == 1


def test_renderings_come_at_many_lengths_each_exactly_counted(small_engine: Engine) -> None:
    data = locomo("30")
    session_id = ingest(small_engine, data, sessions=4)
    for archive in small_engine.store.list_archives(session_id):
        sizes = [r.tokens for r in archive.overview_renderings]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] <= 600
        assert all(small_engine.tokens.count(r.text) == r.tokens for r in archive.overview_renderings)
        # Steps of about three quarters: no gap wider than half the longer rendering.
        assert all(shorter >= longer // 2 for longer, shorter in itertools.pairwise(sizes))
        assert 1 <= len(split_sentences(archive.abstract)) <= 2


@pytest.fixture(scope="module")
def locomo_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A LoCoMo conversation of eight sessions, with the default bounds."""
    engine = Engine(Settings(home=tmp_path_factory.mktemp("locomo")))
    ingest(engine, locomo("26"), sessions=8)
    engine.add_message("locomo", "user", content="Caroline: One more thing before I go.")
    yield engine
    engine.close()


@given(budget=st.integers(min_value=0, max_value=12_000))
@hypothesis_settings(max_examples=150, deadline=None)
def test_get_context_is_never_over_its_budget(locomo_engine: Engine, budget: int) -> None:
    context = locomo_engine.get_context("locomo", budget)
    counted = locomo_engine.tokens.count(context.latest_archive_overview) + sum(
        locomo_engine.tokens.count(a.abstract) for a in context.pre_archive_abstracts
    )
    assert context.stats.archiveTokens == counted
    assert context.estimatedTokens == context.stats.activeTokens + counted
    assert context.estimatedTokens <= max(budget, context.stats.activeTokens)
    archive = locomo_engine.store.get_archive("locomo", 8)
    assert archive is not None
    fitting = [r.tokens for r in archive.overview_renderings if r.tokens <= budget - context.stats.activeTokens]
    assert context.stats.archiveTokens - sum(
        locomo_engine.tokens.count(a.abstract) for a in context.pre_archive_abstracts
    ) == max(fitting, default=0)


@pytest.mark.parametrize(
    ("said", "kept"),
    [
        ("Wow, I finally finished the marathon.", "I finally finished the marathon."),
        ("Oh, wow! Great Barrier Reef was amazing.", "Great Barrier Reef was amazing."),
        ("Haha, that was a long day at work.", "That was a long day at work."),
        ("Great Barrier Reef was the best dive.", "Great Barrier Reef was the best dive."),  # a name, not "Great!"
        ("Yes Man is the movie I liked.", "Yes Man is the movie I liked."),
        ("OK Computer by Radiohead is on repeat.", "OK Computer by Radiohead is on repeat."),
        ("Sure enough it rained all week.", "Sure enough it rained all week."),
    ],
)
def test_only_interjections_followed_by_punctuation_are_cut(said: str, kept: str) -> None:
    assert clean_sentence(said, None) == kept


def test_scoring_reads_past_the_written_out_dates() -> None:
    """The dates written beside "yesterday" are for the reader: a dated line of small talk
    must not outrank a fact for them."""
    said = date(2023, 5, 8)
    for text in ("I went to a pottery workshop in Porto yesterday with Ines.", "We moved last month to Braga."):
        resolved = resolve_relative_dates(text, said)
        assert resolved != text and strip_date_notes(resolved) == text


# --- who said what ---------------------------------------------------------------------------


def ingest_conversation(
    engine: Engine, data: dict[str, Any], *, named: bool, agent_overviews: tuple[int, ...] = ()
) -> list[tuple[str, str]]:
    """Every session of a LoCoMo conversation as messages (speaker_a as user, speaker_b as
    assistant; `named`: the text prefixed with the speaker's name), each committed as one
    archive; on the sessions numbered in `agent_overviews` the agent supplies the overview.
    Returns what was said, as (who, text), by the name the summaries should give."""
    said = []
    number = 1
    while data.get(f"session_{number}"):
        when = datetime.strptime(data[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y").isoformat()
        turns = data[f"session_{number}"]
        for turn in turns:
            role = "user" if turn["speaker"] == data["speaker_a"] else "assistant"
            content = f"{turn['speaker']}: {turn['text']}" if named else turn["text"]
            engine.add_message("locomo", role, content=content, created_at=when)
            said.append((turn["speaker"] if named else role.capitalize(), turn["text"]))
        overview = None
        if number in agent_overviews:
            # markdown of the agent's own, and two turns quoted under their speakers' names
            quoted = "\n".join(f"{t['speaker']}: {t['text']}" for t in turns[2:4])
            overview = f"### Session {number}\n\n{quoted}\n\n- The agent noted {len(turns)} turns.\n- Nothing booked."
        engine.commit("locomo", overview=overview)
        engine.run_pending_phase2()
        number += 1
    return said


@pytest.mark.parametrize("ingestion", ["roles", "names", "names, agent overviews"])
def test_every_summary_sentence_names_who_said_it_after_every_carry_forward(tmp_path: Path, ingestion: str) -> None:
    """LoCoMo conversation 30, all 19 sessions: in every rendering of every archive's
    overview, and in every abstract, each sentence's line names the speaker of the message
    it comes from; 18 carry-forwards later, too."""
    from benchmarks.attribution import Attribution, SpeakerIndex

    data = locomo("30")
    engine = Engine(Settings(home=tmp_path))
    try:
        agent_overviews = (5, 10, 15) if "agent" in ingestion else ()
        said = ingest_conversation(engine, data, named=ingestion != "roles", agent_overviews=agent_overviews)
        speakers = {"User", "Assistant"} if ingestion == "roles" else {data["speaker_a"], data["speaker_b"]}
        index = SpeakerIndex(said, speakers)
        overviews, abstracts = Attribution(), Attribution()
        archives = engine.store.list_archives("locomo")
        assert [a.status for a in archives] == ["completed"] * 19
        for archive in archives:
            for rendering in archive.overview_renderings:
                overviews.add(index.check(rendering.text))
            abstracts.add(index.check(archive.abstract, within_line=True))
        assert overviews.mistakes == [] and abstracts.mistakes == []
        assert overviews.correct == overviews.checked > 5_000
        assert abstracts.correct == abstracts.checked >= 19
        latest = archives[-1].overview
        if agent_overviews:
            # the agent's markdown is carried forward in its archive's section, its lines kept
            assert "## archive_005 · " in latest and "\n### Session 5\n" in latest
            assert "\n- The agent noted " in latest and "## Earlier" not in latest
    finally:
        engine.close()


def test_overviews_of_earlier_versions_are_read_back_by_speaker() -> None:
    """An overview stored by an earlier version (one paragraph per section, the speaker named
    where it changes, even after a sentence that ends without punctuation) is carried forward
    with every sentence under its own speaker."""
    from viking_mcp.models import Message, TextPart
    from viking_mcp.summarize.base import ArchiveInput
    from viking_mcp.tokens import TokenCounter

    previous = (
        "# Session overview\n\n## archive_001 · 8 May 2023\n\n"
        "User: Winning first place at the Lisbon regionals in 2019 was amazing 🎉 Assistant: We just did a "
        "contemporary piece called Finding Freedom at the Porto festival. It was really emotional and powerful. "
        "User: My team trained for 6 months with coach Marta Silva.\n"
    )
    message = Message(id="m1", role="user", parts=[TextPart(text="I start at the Braga dance school on 3 June.")],
                      created_at="2023-05-20T10:00:00Z")  # fmt: skip
    summariser = ExtractiveSummariser(TokenCounter(), overview_max_tokens=400)
    summary = summariser.summarise(ArchiveInput("s", "archive_002", [message], previous_overview=previous))
    longest = summary.overviews[0]
    assert "\nUser: Winning first place at the Lisbon regionals in 2019 was amazing 🎉\n" in longest
    assert (
        "\nAssistant: We just did a contemporary piece called Finding Freedom at the Porto festival. "
        "It was really emotional and powerful.\n" in longest
    )
    assert "\nUser: My team trained for 6 months with coach Marta Silva.\n" in longest
    for rendering in summary.overviews:
        for line in rendering.splitlines():
            if "Finding Freedom" in line or "emotional" in line:
                assert line.startswith("Assistant: "), rendering


def test_a_line_named_for_someone_no_longer_speaking_stays_whole() -> None:
    """A speaker named on one line only of the previous overview, who says nothing in the new
    archive, is not known as a speaker: their line is kept whole or not at all, never a
    sentence of it without their name."""
    from viking_mcp.models import Message, TextPart
    from viking_mcp.summarize.base import ArchiveInput
    from viking_mcp.tokens import TokenCounter

    previous = (
        "# Session overview\n\n## archive_001 · 8 May 2023\n\n"
        "User: I moved to Oslo in 2019 for a job at Equinor.\n"
        "Bea Lund: I sold the Bergen flat in March 2021. I bought a cabin in Geilo with 2 bedrooms.\n"
        "User: I run the Holmenkollen relay every June with 4 colleagues.\n"
    )
    messages = [
        Message(id=f"m{i}", role="user", parts=[TextPart(text=text)], created_at="2023-06-01T10:00:00Z")
        for i, text in enumerate(["I adopted a cat named Pixel from the Oslo shelter.", "Pixel is 3 years old."])
    ]
    summariser = ExtractiveSummariser(TokenCounter(), overview_max_tokens=300)
    summary = summariser.summarise(ArchiveInput("s", "archive_002", messages, previous_overview=previous))
    assert len(summary.overviews) >= 2
    for rendering in summary.overviews:
        for line in rendering.splitlines():
            if "Geilo" in line or "Bergen" in line:
                assert (
                    line == "Bea Lund: I sold the Bergen flat in March 2021. I bought a cabin in Geilo with 2 bedrooms."
                )


# --- text beside a tool call, and overviews the agent writes -------------------------------------


def test_the_text_beside_a_tool_call_is_kept(small_engine: Engine) -> None:
    """The README's booking: a short sentence that carries a fact (a flight number) is kept
    in the overview, on its speaker's line, beside the tool's own line, and in the abstract."""
    small_engine.add_message("trip", "user", content="I fly to Lisbon on 3 May.")
    small_engine.add_message("trip", "assistant", parts=[
        {"type": "text", "text": "Booked TP1351."},
        {"type": "tool", "tool_id": "c1", "tool_name": "book", "tool_status": "completed", "tool_output": "ok"},
    ])  # fmt: skip
    small_engine.commit("trip")
    small_engine.run_pending_phase2()
    archive = small_engine.store.get_archive("trip", 1)
    assert archive is not None
    lines = archive.overview.splitlines()
    assert "User: I fly to Lisbon on 3 May." in lines
    assert "Assistant: Booked TP1351." in lines
    assert "Tool book (completed): ok" in lines
    assert "Booked TP1351" in archive.abstract and "Lisbon" in archive.abstract
    assert 1 <= len(split_sentences(archive.abstract)) <= 2


AGENT_OVERVIEW = """# Trip planning

## Bookings
- Flight TP1351 to Lisbon on 3 May, seat 14C.
- Hotel Avenida Palace for 3 nights, breakfast included.
1. Taxi to the airport at 6:00 booked with Uber.
2. Dinner at Belcanto on 4 May at 20:30, a table for 2.

## People
- Ada prefers window seats. She is vegetarian and allergic to peanuts.
- Bea, her sister, joins in Porto on 6 May by the Alfa Pendular train.

Still open: the museum pass for the Gulbenkian and the Sintra day trip on 5 May."""


def test_an_agents_overview_keeps_its_lines_and_leaves_its_budget_to_older_archives(small_engine: Engine) -> None:
    """A short overview supplied at commit is the archive's overview as written; get_context
    shows it whole after the earlier archives' built-in sections when the budget allows,
    alone (or shorter) when it does not; its lines stay lines in every rendering, its
    headings become ours only as `###`; and the next offline overview carries it forward
    under its archive's heading, the built-in history continuing."""
    data = locomo("26")
    ingest(small_engine, data, sessions=3)
    small_engine.add_message("locomo", "user", content="Caroline: I booked the Lisbon trip with Ada.")
    small_engine.commit("locomo", overview=AGENT_OVERVIEW)
    small_engine.run_pending_phase2()
    archive = small_engine.store.get_archive("locomo", 4)
    assert archive is not None and archive.overview == AGENT_OVERVIEW
    assert small_engine.expand_archive("locomo", "archive_004").overview == AGENT_OVERVIEW
    renderings = archive.overview_renderings
    sizes = [r.tokens for r in renderings]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] <= 600
    assert all(small_engine.tokens.count(r.text) == r.tokens for r in renderings)
    own = small_engine.tokens.count(AGENT_OVERVIEW)
    assert AGENT_OVERVIEW in [r.text for r in renderings]

    longer = [r.text for r in renderings if r.tokens > own]
    assert longer, sizes
    demoted = re.sub(r"^#{1,2} ", "### ", AGENT_OVERVIEW, flags=re.MULTILINE)
    for text in longer:  # the agent's overview whole, as archive_004's section, after older ones
        head, section = text.split("\n## archive_004 · ")
        assert "\n## archive_00" in head and section.split("\n", 2)[2] == demoted + "\n"
    wide = small_engine.get_context("locomo", 600)
    assert wide.latest_archive_overview == longer[0] and wide.stats.archiveTokens > 2 * own
    assert small_engine.get_context("locomo", own).latest_archive_overview == AGENT_OVERVIEW

    shorter = [r.text for r in renderings if r.tokens < own]
    assert shorter
    for text in shorter:  # lines of the agent's, whole, under this archive's heading
        assert text.startswith("# Session overview\n\n## archive_004 · ")
        assert "\n## Bookings" not in text and "\n# Trip" not in text
        for line in text.splitlines()[4:]:  # each a line of the agent's, or a sentence opening one
            assert any(whole.startswith(line) for whole in demoted.splitlines()), line

    small_engine.add_message("locomo", "user", content="Caroline: The Lisbon flight leaves from gate 12 at 7:10.")
    small_engine.commit("locomo")
    small_engine.run_pending_phase2()
    carried = small_engine.store.get_archive("locomo", 5)
    assert carried is not None
    overview = carried.overview
    assert "\n## archive_001 · " in overview and "\n## archive_004 · " in overview and "## Earlier" not in overview
    assert "\n- Flight TP1351 to Lisbon on 3 May, seat 14C.\n" in overview
    assert "\n### Bookings\n" in overview and "\n## Bookings" not in overview
