"""The offline default: an extractive summariser that needs no network and is deterministic.

It keeps the sentences that carry facts and drops chit-chat. A sentence is worth what it
tells: words that are rare in the conversation (inverse sentence frequency), names and
places (capitalised words that are not the speakers'), numbers, codes and dates, per token
it costs. Greetings, thanks, acknowledgements and bare questions score nothing or little;
a short sentence counts only when it carries a fact ("Booked TP1351."). Interjections that
open a sentence ("Wow, ", "Yeah! ") are cut, relative dates are made absolute
("yesterday (7 May 2023)"), and a sentence that repeats another is kept once.

The overview is markdown, one section per archive under its heading
(`## archive_NNN · date`), oldest first. Inside a section each run of one speaker's
sentences is a line of its own that opens with their name ("Caroline: ..."), so that who
said what survives any cut: every sentence on a line is the named speaker's. A tool result
or a context used is a line of its own, and so is each line of an overview written by the
agent or an LLM (its bullet, number or heading marker kept). The overview carries the
previous one forward, and its sentences go in best first whatever their archive, with
barely a thought for age: a fact said long ago is as likely to be needed as one said last
week. It is rendered at many lengths, each about three quarters of the one before, so that
get_context can return one that nearly fills whatever is left of a budget.

An overview written by the agent or an LLM is kept as written; `renderings_for` adds
shorter renderings of it, and longer ones that put it whole, as its archive's section,
after the best of the earlier archives' sections carried forward.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import cache, lru_cache

from viking_mcp.models import ContextPart, Message, TextPart, ToolPart, plural
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary
from viking_mcp.summarize.dates import MONTHS, WEEKDAYS, day, parse_day, resolve_relative_dates, strip_date_notes
from viking_mcp.tokens import TokenCounter

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d+(?:[.,:/-]\d+)*")
# Our sections' headings: `## archive_001 · 8 May 2023` (`## Earlier` in overviews of old
# versions). Any other `## ` line is an agent's markdown, and is demoted inside our overview.
_AFTER_ARCHIVE = r"(?: · [^\n]*)?"  # the dates
_SECTION = re.compile(rf"^## ((?:archive_\d+{_AFTER_ARCHIVE}|Earlier)) *$", re.MULTILINE)
# An archive's section in a rendering, its number captured (get_context reads which archives
# a rendering shows from these).
ARCHIVE_SECTION = re.compile(rf"^## archive_(\d+){_AFTER_ARCHIVE} *$", re.MULTILINE)
_HEADING = re.compile(r"^#{1,2}(?= )", re.MULTILINE)
# What opens a markdown line before its text: indentation, a bullet, a number, a heading's #s.
_MARKER = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)]|#{1,6})?\s*")
_MD_HEADING = re.compile(r"^#{1,6} ")
# What a rendering writes where it leaves earlier sections out.
NOT_SHOWN_NOTE = r"_\d+ earlier archives? not shown\._"
_NOTE = re.compile(rf"^{NOT_SHOWN_NOTE}$")
# A tool result or a context used, as `message_units` writes them: theirs, not a speaker's.
_TOOL_LINE = re.compile(r"^(?:Tool \S+ \((?:pending|running|completed|error)\)|Used (?:resource|memory|skill) \S)")
# "Caroline: ..." (a transcript line that names its speaker): one to three capitalised words.
_SPEAKER_PREFIX = re.compile(r"^([A-Z][\w'-]*(?: [A-Z][\w'-]*){0,2}):\s")
# What the summariser itself puts before a sentence; only this is stripped for scoring.
_ROLE_PREFIX = re.compile(r"^(?:User|Assistant): ")
# Interjections that open a sentence and say nothing: "Wow, ", "Oh yeah! ", "Haha, ".
# Only a run that ends in punctuation: "Great Barrier Reef", "Sure enough" and "OK Computer"
# start with such a word too.
_INTERJECTION = (
    r"(?:oh+|ah+|aw+|ooh+|wow+|whoa|yeah|yep|yes|hey|hi|hello|haha+|hehe|lol|omg|um+|uh+|well|ok|okay|"
    r"cool|great|nice|sweet|awesome|amazing|thanks|thank you|totally|absolutely|definitely|sure|right|"
    r"exactly|true|indeed|gosh|geez|man|dude|hmm+)\b"
)
_OPENER = re.compile(rf"^(?:{_INTERJECTION}[\s,!.…-]*)*{_INTERJECTION}\s*[,!.…-]+\s*", re.IGNORECASE)
_DATE_WORDS = {*MONTHS, *WEEKDAYS, "yesterday", "today", "tomorrow", "week", "weekend", "month", "year"}
_STOPWORD_TEXT = """
a about after again all also am an and any are as at be because been before being but by can could did do does doing
don't for from get got had has have having he her here him his how i i'm i've if in into is it it's its just know
like me more my no not now of oh on one or our out really so some such than that that's the their them then there
these they this those to too up us very was we well were what when where which who why will with would yeah yes you
you're your thanks thank great good awesome cool wow hey hi hello lol sure okay ok totally glad nice amazing love
think feel thing things lot much way going make see want let say said tell she she's he's we're they're i'd i'll
you've you'll we've can't didn't isn't wasn't there's what's let's gonna wanna kind stuff super pretty happy excited
proud fun sounds sound looks look hope definitely absolutely appreciate means mean wonderful fantastic incredible
beautiful lovely congrats congratulations wish keep always everything something anything someone other even still
right haha hahaha aw aww omg yep hear heard time day life new lately should must may might shall here's sharing
share talk talking chat catch soon bye take care true real seems seem guess sorry
"""
_STOPWORDS = set(_STOPWORD_TEXT.split())

_FIRST_PERSON = {"i", "i'm", "i've", "i'd", "i'll", "my", "me", "mine", "we", "we're", "we've", "our", "us"}
_SECOND_PERSON = {"you", "you're", "you've", "you'd", "you'll", "your", "yours"}

OVERVIEW_TITLE = "# Session overview"
_MIN_RENDERING_TOKENS = 64
# Each rendering is about this fraction of the next longer one: fine steps, so that one
# of them nearly fills whatever is left of a budget.
_RENDERING_STEP = 0.88
# Below this many tokens the steps are finer: a tight budget misses most by a coarse step,
# and small renderings cost little to keep.
_FINE_BELOW = 2500
_FINE_STEP = 0.93
# Each step back in time weighs a section's sentences this much less: barely, as what was
# said long ago matters as much as what was said last.
_RECENCY = 0.98
# A sentence under this fraction of its section's best is filler: it would only fill gaps.
_FILLER_RATIO = 0.1
# The newest archive's section keeps at most this fraction of the archive's tokens (and
# always may keep _SECTION_FLOOR_TOKENS), so that the overview is a summary, not the
# transcript again.
_SECTION_FRACTION = 0.6
_SECTION_FLOOR_TOKENS = 120
# The abstract adds, after the archive's best sentence, the next best ones worth at least
# this fraction of it, while it stays within its bound: a small archive is told whole.
_ABSTRACT_RATIO = 0.5
# Token counts of sentences seen before (carried-forward sections come back every commit).
_TOKEN_CACHE_SIZE = 50_000


@dataclass(frozen=True)
class Unit:
    """A sentence and who said it ("" for no one: a tool result, an agent's own overview).

    `line`: it starts a line of its own (a tool result, a context used, a line of an
    overview written elsewhere, with its bullet, number or heading marker in `text`); the
    sentences after it without a speaker continue that line."""

    speaker: str
    text: str
    line: bool = False

    def attributed(self) -> str:
        return f"{self.speaker}: {self.text}" if self.speaker else self.text


@dataclass(frozen=True)
class _Candidate:
    section: int  # index of its section, oldest first
    order: int  # position inside its section
    unit: Unit
    score: float
    tokens: int


@dataclass
class _Section:
    heading: str
    units: list[Unit]
    # An overview written elsewhere, shown whole as this section's body (its units are only
    # read for word frequencies, never picked one by one).
    whole: str = ""
    # paragraph[i]: the unit that starts unit i's line; heading_of[i]: the markdown heading
    # (`### ...`) unit i sits under, if any, shown with it.
    paragraph: list[int] = field(init=False)
    heading_of: list[int | None] = field(init=False)

    def __post_init__(self) -> None:
        self.paragraph, self.heading_of = [], []
        start, heading = 0, None
        for order, unit in enumerate(self.units):
            if unit.line or unit.speaker:
                start = order
            if unit.line and not unit.speaker and _MD_HEADING.match(unit.text):
                heading = order
            self.paragraph.append(start)
            self.heading_of.append(heading if heading != order else None)


def split_sentences(text: str) -> list[str]:
    return [p for p in (p.strip() for p in _SENTENCE_END.split(text)) if p]


def _named_twice(texts: Iterable[str]) -> set[str]:
    """Prefixes that name a speaker ("Caroline: ...") in two or more of `texts`, so that a
    one-off lead-in ("Updated:", "Day One:") is not mistaken for a name."""
    seen = Counter(match.group(1) for text in texts if (match := _SPEAKER_PREFIX.match(text)))
    return {name for name, count in seen.items() if count >= 2}


def speaker_names(messages: list[Message]) -> set[str]:
    return _named_twice(p.text.strip() for m in messages for p in m.parts if isinstance(p, TextPart))


def message_units(message: Message, names: set[str]) -> list[Unit]:
    default = "User" if message.role == "user" else "Assistant"
    units: list[Unit] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            text, speaker = part.text.strip(), default
            # "Name: ..." says who speaks better than the role does.
            if (match := _SPEAKER_PREFIX.match(text)) and match.group(1) in names:
                speaker, text = match.group(1), text[match.end() :]
            units += [Unit(speaker, s) for s in split_sentences(text)]
        elif isinstance(part, ToolPart):
            output = " ".join(part.tool_output.split())[:200]
            units.append(Unit("", f"Tool {part.tool_name} ({part.tool_status}): {output}".rstrip(": "), line=True))
        elif isinstance(part, ContextPart) and part.abstract:
            abstract = " ".join(part.abstract.split())
            units.append(Unit("", f"Used {part.context_type} {part.uri}: {abstract}", line=True))
    return units


def clean_sentence(text: str, said: date | None) -> str:
    """A sentence as the summary keeps it: opening interjections cut, relative dates resolved."""
    trimmed = _OPENER.sub("", text).lstrip()
    if trimmed and trimmed != text and len(_WORD.findall(trimmed)) >= 3:
        text = trimmed[0].upper() + trimmed[1:]
    return resolve_relative_dates(text, said)


class _Scorer:
    """How much a sentence is worth keeping, per token: facts up, chit-chat down.

    Word weights are inverse sentence frequencies over everything being summarised (the
    archive and the overview carried forward), so a conversation's recurring small talk
    counts for little and its one mention of "Sweden" for a lot.
    """

    def __init__(self, sentences: list[str], speakers: set[str]) -> None:
        self.frequency = Counter(word for s in sentences if (features := _features(s)) for word in features[1])
        self.total = max(1, len(sentences))
        # The speakers' names (and their short forms: "Mel" for Melanie) are no news.
        self.speakers = {w.lower() for name in speakers for w in name.split()}
        # Both asked again and again of the same words and sentences: each answered once.
        self._is_speaker: Callable[[str], bool] = cache(self._speaker)
        self.score: Callable[[str], float] = cache(self._score)

    def _speaker(self, word: str) -> bool:
        lowered = word.lower()
        return lowered in self.speakers or (len(lowered) >= 3 and any(s.startswith(lowered) for s in self.speakers))

    def _score(self, sentence: str) -> float:
        features = _features(sentence)
        if features is None:
            return 0.0
        words, content, capitalised, numbers, dates, question, second_person = features
        content = tuple(w for w in content if not self._is_speaker(w))
        if len(content) < 2:
            return 0.0
        score = 0.0
        for word in content:
            rarity = math.log((self.total + 1) / (self.frequency.get(word, 0) + 1))
            score += 0.25 + min(rarity, 6.0) / 2.0
        score += 1.5 * sum(1 for w in capitalised if not self._is_speaker(w))
        score += 1.5 * numbers + 1.0 * dates
        if question:
            score *= 0.4
        if second_person:  # "you ..." without "I" echoes what the listener said
            score *= 0.7
        if _LIFE_FACT.search(sentence):  # who the speaker is: what every later archive builds on
            score *= _LIFE_FACT_WEIGHT
        return score / math.pow(words, 0.7)


# A speaker telling who they are and what changed in their life: a job, a home, a family, a
# venture ("Lost my job as a banker", "I moved from Sweden", "we adopted a dog").
_LIFE_FACT = re.compile(
    r"\b(?:lost|quit|left|got|started|found|changed) (?:my|a|the) (?:job|work|career)\b|\bmy (?:job|career) as\b|"
    r"\bi (?:work|worked) (?:as|at|for)\b|\bi(?:'m| am) (?:a|an) (?!\w+ (?:bit|lot|little|fan)\b)\w+|"
    r"\b(?:i|we) (?:moved|graduated|retired|got married|got divorced|adopted|opened|founded|launched|bought)\b|"
    r"\bstarting (?:my|a|our) own\b",
    re.IGNORECASE,
)
_LIFE_FACT_WEIGHT = 1.5

_Features = tuple[int, tuple[str, ...], tuple[str, ...], int, int, bool, bool]
# A word that is a fact in itself: a number or code ("3", "TP1351", "14C") or an acronym ("TAP").
_FACT_WORD = re.compile(r"\d|[A-Z]{2,}")


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def _features(sentence: str) -> _Features | None:
    """What scoring reads of a sentence, whatever the conversation: cached, as carried-forward
    sentences come back at every commit. None for a sentence too short to tell anything:
    under four words, unless it carries a fact (a number, a code, a name: "Booked TP1351.")."""
    # Scored on what was said: the role prefix says who, and the dates written beside
    # "yesterday" are for the reader (scoring them would favour every dated small-talk line).
    text = strip_date_notes(_ROLE_PREFIX.sub("", sentence, count=1))
    words = _WORD.findall(text)
    capitalised = tuple(sorted({w for w in words[1:] if w[0].isupper() and w != "I"}))
    if len(words) < 4 and not (capitalised or _FACT_WORD.search(text)):
        return None
    # a fixed order: float sums must not depend on hash seeds
    content = tuple(sorted({w.lower() for w in words if w.lower() not in _STOPWORDS and len(w) > 1}))
    numbers = sum(1 for w in words if w[0].isdigit())
    dates = sum(1 for w in words if w.lower() in _DATE_WORDS)
    lowered = {w.lower() for w in words}
    second_person = bool(lowered & _SECOND_PERSON) and not lowered & _FIRST_PERSON
    return (len(words), content, capitalised, numbers, dates, text.rstrip().endswith("?"), second_person)


# --- reading an overview back ----------------------------------------------------------------


def overview_speakers(overview: str) -> set[str]:
    """The speakers an overview names: at the start of two or more lines, or of two or more
    sentences inside a line (where earlier versions named them), and the roles."""
    lines = [line.strip() for line in overview.splitlines()]
    inside = (s for line in lines if line.count(": ") > 1 for s in split_sentences(line))
    return _named_twice(lines) | _named_twice(inside) | {"User", "Assistant"}


def _line_units(body: str, speakers: set[str]) -> list[Unit]:
    """The units of a section in lines: a line that opens with a speaker's name is theirs,
    sentence by sentence; any other line is a line of its own (a tool result, a line of an
    agent's overview), its first sentence starting it and the others continuing it. A line
    that opens with what looks like a name but is no speaker's is kept whole, so that what
    it names stays with all of it."""
    units: list[Unit] = []
    for raw in body.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or _NOTE.match(stripped):
            continue
        if (match := _SPEAKER_PREFIX.match(stripped)) and match.group(1) in speakers:
            units += [Unit(match.group(1), s) for s in split_sentences(stripped[match.end() :])]
        elif match or _TOOL_LINE.match(stripped):
            units.append(Unit("", line, line=True))
        else:
            # the line's indentation and marker ("  - ", "2. ", "### ") stay with its first sentence
            marker = _MARKER.match(line)
            lead = marker.group(0) if marker else ""
            first, *rest = split_sentences(line[len(lead) :]) or [""]
            units += [Unit("", lead + first, line=True), *(Unit("", s) for s in rest)]
    return units


def _paragraph_units(body: str, speakers: set[str]) -> list[Unit]:
    """The units of a section as earlier versions wrote it: one paragraph, in which a
    sentence that starts "Name: " for a known speaker is theirs, and so are the sentences
    after it until another speaker is named. A name is also found where the sentence
    before it ended without punctuation ("amazing 🎉 Melanie: ...")."""
    names = "|".join(re.escape(name) for name in sorted(speakers, key=len, reverse=True))
    before_name = re.compile(rf"\s+(?=(?:{names}): )")
    units, speaker = [], ""
    for sentence in (piece for s in split_sentences(body) for piece in before_name.split(s)):
        if _NOTE.match(sentence):
            continue
        if _TOOL_LINE.match(sentence):
            units.append(Unit("", sentence, line=True))
            speaker = ""
            continue
        if (found := _SPEAKER_PREFIX.match(sentence)) and found.group(1) in speakers:
            speaker, sentence = found.group(1), sentence[found.end() :]
        units.append(Unit(speaker, sentence))
    return units


def demote_headings(text: str) -> str:
    """An overview written elsewhere, as the body of one of our sections: its `# ` and `## `
    headings become `### `, so that they are not taken for archives' sections."""
    return _HEADING.sub("###", text)


def _parse_sections(overview: str, speakers: set[str], label: str = "Earlier") -> list[_Section]:
    """Sections of a previous overview: ours (under `## archive_NNN · date` headings), or one
    written elsewhere (by the agent or an LLM), which becomes one section under `label`."""
    if not overview.strip():
        return []
    pieces = _SECTION.split(overview)  # before the first heading, then each heading and its body
    bodies = pieces[2::2]
    # Earlier versions wrote each section as one paragraph, naming the speaker where it changed.
    old = bool(bodies) and all(
        sum(1 for line in body.splitlines() if line.strip() and not _NOTE.match(line.strip())) <= 1 for body in bodies
    )
    sections = []
    before = pieces[0].strip()
    if before.startswith(OVERVIEW_TITLE):
        before = before[len(OVERVIEW_TITLE) :].strip()
    if before:
        sections.append(_Section(label, _line_units(demote_headings(before), speakers)))
    for heading, body in zip(pieces[1::2], bodies, strict=True):
        body = demote_headings(body)
        units = _paragraph_units(body, speakers) if old else _line_units(body, speakers)
        sections.append(_Section(heading.strip(), units))
    return sections


def _date_span(messages: list[Message]) -> str:
    days = sorted({d for m in messages if (d := parse_day(m.created_at)) is not None})
    if not days:
        return ""
    return day(days[0]) if len(days) == 1 else f"{day(days[0])} to {day(days[-1])}"


def _step_down(tokens: int) -> int:
    """The size of the next shorter rendering."""
    return int(tokens * (_FINE_STEP if tokens < _FINE_BELOW else _RENDERING_STEP))


class _Measure:
    """Exact token counts of renderings, block by block.

    The renderings of one overview share most of their blocks (title, headings, section
    bodies), and a tokenizer such as cl100k_base never makes a token across a blank line
    followed by a heading or a new block (its pre-tokenizer splits there), so a rendering's
    count is the sum of its blocks' counts, each with the blank line after it. The first
    call (the longest rendering) compares that sum with a count of the whole text; should
    an encoding ever disagree, every rendering is counted whole.
    """

    def __init__(self, tokens: TokenCounter) -> None:
        self.tokens = tokens
        self.count_piece: Callable[[str], int] = cache(tokens.count)
        self.additive: bool | None = None  # not known before the first call

    def __call__(self, blocks: list[str]) -> int:
        pieces = [block + "\n\n" for block in blocks[:-1]] + [blocks[-1] + "\n"]
        if self.additive:
            return sum(map(self.count_piece, pieces))
        exact = self.tokens.count("".join(pieces))
        if self.additive is None:
            self.additive = sum(map(self.count_piece, pieces)) == exact
        return exact


class ExtractiveSummariser:
    """Deterministic sentence extraction; see the module docstring."""

    def __init__(self, tokens: TokenCounter, *, overview_max_tokens: int = 8000, abstract_max_tokens: int = 48):
        self.tokens = tokens
        self.overview_max_tokens = overview_max_tokens
        self.abstract_max_tokens = abstract_max_tokens
        self._count: Callable[[str], int] = lru_cache(maxsize=_TOKEN_CACHE_SIZE)(tokens.count)

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        names = speaker_names(archive.messages)
        units = self._units(archive, names)
        count = len(archive.messages)
        span = _date_span(archive.messages)
        lead = plural(count, "message") + (f" on {span}" if span else "") + "."
        carried, label = archive.carried_overview or archive.previous_overview, archive.previous_archive or "Earlier"
        speakers = names | overview_speakers(carried)
        sections = [*_parse_sections(carried, speakers, label), _Section(self._heading(archive), units)]
        scorer = _Scorer([u.text for s in sections for u in s.units], speakers)
        renderings = self._renderings(sections, scorer)
        return ArchiveSummary(
            abstract=self._abstract(lead, units, scorer),
            overviews=[text for text, _ in renderings],
            overview_tokens=[tokens for _, tokens in renderings],  # counted once, while rendering
        )

    def _units(self, archive: ArchiveInput, names: set[str]) -> list[Unit]:
        """The archive's sentences, cleaned, each said once."""
        units = []
        seen: set[tuple[str, ...]] = set()
        for message in archive.messages:
            said = parse_day(message.created_at)
            for unit in message_units(message, names):
                unit = Unit(unit.speaker, clean_sentence(unit.text, said), unit.line)
                features = _features(unit.text)
                if features is not None and len(features[1]) >= 3:
                    if features[1] in seen:  # said before, in other words at most
                        continue
                    seen.add(features[1])
                units.append(unit)
        return units

    @staticmethod
    def _heading(archive: ArchiveInput) -> str:
        return " · ".join(p for p in (archive.archive_id, _date_span(archive.messages)) if p)

    # --- abstract -----------------------------------------------------------------------------

    def _abstract(self, lead: str, units: list[Unit], scorer: _Scorer) -> str:
        """The lead ("12 messages on 8 May 2023.") and the best sentence (the first of equals),
        then the next best (_ABSTRACT_RATIO) while they fit, in the order they were said, as
        one sentence: "2 messages on 3 May 2025. User: I fly to Lisbon on 3 May; Assistant:
        Booked TP1351.\""""
        ranked = sorted(
            ((score, order) for order, unit in enumerate(units) if (score := scorer.score(unit.text)) > 0),
            key=lambda pair: (-pair[0], pair[1]),
        )
        if not ranked:
            return lead
        best, chosen = ranked[0][0], [ranked[0][1]]
        text = self._abstract_text(lead, units, chosen)
        if self.tokens.count(text) > self.abstract_max_tokens:
            return self._fit(text, self.abstract_max_tokens)
        for score, order in ranked[1:]:
            if score < _ABSTRACT_RATIO * best:
                break
            if units[order].text.rstrip().endswith("?"):
                continue
            trial = self._abstract_text(lead, units, sorted([*chosen, order]))
            if self.tokens.count(trial) <= self.abstract_max_tokens and len(split_sentences(trial)) <= 2:
                chosen, text = sorted([*chosen, order]), trial
        return text

    @staticmethod
    def _abstract_text(lead: str, units: list[Unit], chosen: list[int]) -> str:
        clauses, speaker = [], ""
        for order in chosen:
            unit = units[order]
            text = unit.text.rstrip()
            clauses.append(f"{unit.speaker}: {text}" if unit.speaker and unit.speaker != speaker else text)
            speaker = unit.speaker
        # one sentence after the lead: the clauses but the last end in ";" (a question stays
        # one, and then the abstract has a sentence too many: `_abstract` does not take it)
        ends = [c if c.endswith("?") else c.rstrip(".!;") + ";" for c in clauses[:-1]]
        joined = " ".join([*ends, clauses[-1]])
        return f"{lead} {joined}" + ("" if joined[-1] in ".!?" else ".")

    def _fit(self, text: str, max_tokens: int) -> str:
        if self.tokens.count(text) <= max_tokens:
            return text
        words = text.split()
        low, high = 1, len(words)
        while low < high:  # the longest word prefix that fits, with an ellipsis
            middle = (low + high + 1) // 2
            if self.tokens.count(" ".join(words[:middle]) + "…") <= max_tokens:
                low = middle
            else:
                high = middle - 1
        return " ".join(words[:low]).rstrip(",;:") + "…"

    # --- overviews written elsewhere -----------------------------------------------------------

    def renderings_for(self, archive: ArchiveInput, overview: str) -> list[tuple[str, int]]:
        """Renderings of an overview written elsewhere (by the agent or an LLM) for `archive`,
        besides the overview itself, with their exact token counts: shorter ones, so that
        get_context can fit one to a tight budget, and longer ones, up to the overview's
        bound, that show it whole as the archive's section after the best of the earlier
        archives' sections (carried forward from the previous overview, as `summarise`
        does), so that a budget it leaves unused goes to them."""
        names = speaker_names(archive.messages)
        heading = self._heading(archive)
        return self._shorter(overview, names, heading) + self._longer(archive, overview, names, heading)

    def _shorter(self, overview: str, names: set[str], heading: str) -> list[tuple[str, int]]:
        speakers = names | overview_speakers(overview)
        sections = _parse_sections(overview, speakers, heading)
        scorer = _Scorer([u.text for s in sections for u in s.units], speakers)
        size = self.tokens.count(overview)
        empty = self._render(sections, [])  # headings alone are no overview
        renderings = self._renderings(sections, scorer, start=int(size * _RENDERING_STEP))
        return [(r, n) for r, n in renderings if r != empty and r.strip() != overview.strip()]

    def _longer(self, archive: ArchiveInput, overview: str, names: set[str], heading: str) -> list[tuple[str, int]]:
        carried = archive.carried_overview or archive.previous_overview
        speakers = names | overview_speakers(carried) | overview_speakers(overview)
        whole = demote_headings(overview.strip("\n").rstrip()).lstrip()
        own = _Section(heading, _line_units(whole, speakers), whole=whole)
        sections = [*_parse_sections(carried, speakers, archive.previous_archive or "Earlier"), own]
        scorer = _Scorer([u.text for s in sections for u in s.units], speakers)
        return [(r, n) for r, n in self._renderings(sections, scorer) if n > self.tokens.count(overview)]

    # --- overview -----------------------------------------------------------------------------

    def _renderings(self, sections: list[_Section], scorer: _Scorer, start: int | None = None) -> list[tuple[str, int]]:
        """The overview at its bound (or `start`) and at shorter lengths, longest first, each
        distinct, with its exact token count. A section shown whole is in every one of them,
        and each of them has more than that section."""
        ranked = self._rank(sections, scorer)
        heading_tokens = [self._count(f"## {s.heading}") + 2 for s in sections]
        fixed = self._fixed_tokens(sections, heading_tokens)
        renderings: list[tuple[str, int]] = []
        target = self.overview_max_tokens if start is None else start
        measure = _Measure(self.tokens)
        if ranked:
            # Under its bound, the overview keeps every candidate: nothing is lost to the
            # next commit, which carries this rendering forward.
            whole = self._blocks(sections, ranked)
            tokens = measure(whole)
            if tokens <= target:
                renderings.append(("\n\n".join(whole) + "\n", tokens))
                target = _step_down(tokens)
        while ranked and target >= max(_MIN_RENDERING_TOKENS, fixed):
            text, tokens = self._render_within(sections, ranked, heading_tokens, target, measure, packed=True)
            if text and (not renderings or text != renderings[-1][0]):
                renderings.append((text, tokens))
            target = _step_down(target)
        if not renderings and not any(s.whole for s in sections):
            text = self._render(sections, [])
            renderings.append((text, self.tokens.count(text)))
        return renderings

    def _fixed_tokens(self, sections: list[_Section], heading_tokens: list[int]) -> int:
        """What every rendering costs whatever it picks: the title, the newest section's
        heading, the sections shown whole; and about 8 tokens for an "N earlier archives not
        shown" note, paid for up front."""
        shown = {len(sections) - 1} | {i for i, s in enumerate(sections) if s.whole}
        return 8 + sum(heading_tokens[i] for i in shown) + sum(self._count(s.whole) + 2 for s in sections if s.whole)

    def _rank(self, sections: list[_Section], scorer: _Scorer) -> list[_Candidate]:
        """Every candidate sentence, best first: not filler (_FILLER_RATIO), and from the newest
        section no more than _SECTION_FRACTION of its archive (besides its best sentence)."""
        newest = len(sections) - 1
        ranked: list[_Candidate] = []
        for index in range(newest, -1, -1):
            if sections[index].whole:
                continue
            recency = _RECENCY ** (newest - index)
            candidates = []
            for order, unit in enumerate(sections[index].units):
                score = scorer.score(unit.text) * recency
                if score > 0:
                    candidates.append(_Candidate(index, order, unit, score, self._count(unit.attributed()) + 1))
            if not candidates:
                continue
            candidates.sort(key=lambda c: (-c.score, c.order))
            best = candidates[0]
            ranked.append(best)
            others = [c for c in candidates[1:] if c.score >= _FILLER_RATIO * best.score]
            if index == newest:
                archive_tokens = sum(self._count(u.text) + 1 for u in sections[index].units)
                cap = max(_SECTION_FLOOR_TOKENS, int(archive_tokens * _SECTION_FRACTION)) - best.tokens
                kept = []
                for candidate in others:
                    if candidate.tokens <= cap:
                        kept.append(candidate)
                        cap -= candidate.tokens
                others = kept
            ranked += others
        ranked.sort(key=lambda c: (-c.score, -c.section, c.order))
        return ranked

    def _render(self, sections: list[_Section], chosen: list[_Candidate]) -> str:
        return "\n\n".join(self._blocks(sections, chosen)) + "\n"

    def _blocks(self, sections: list[_Section], chosen: list[_Candidate]) -> list[str]:
        """The title, headings, notes and section bodies of a rendering, in order."""
        by_section: dict[int, list[int]] = {}
        for candidate in chosen:
            by_section.setdefault(candidate.section, []).append(candidate.order)
        blocks = [OVERVIEW_TITLE]
        omitted = 0
        for index, section in enumerate(sections):
            picked = by_section.get(index, [])
            if not picked and not section.whole and index != len(sections) - 1:
                omitted += 1
                continue
            if omitted:
                blocks.append(f"_{plural(omitted, 'earlier archive')} not shown._")
                omitted = 0
            blocks.append(f"## {section.heading}")
            body = section.whole or "\n".join(_lines(section, picked)).lstrip()
            if body:
                blocks.append(body)
        return blocks

    def _render_within(
        self,
        sections: list[_Section],
        ranked: list[_Candidate],
        heading_tokens: list[int],
        target: int,
        measure: _Measure,
        *,
        packed: bool,
    ) -> tuple[str, int]:
        """The best-ranked sentences that fit `target` tokens with their sections' headings,
        and the rendering's exact size ("", 0 when not even one sentence fits).

        `packed`: a sentence is estimated at what it adds where it goes (its speaker's name
        only if it starts a line), which fills `target` to within a few tokens. Otherwise at
        an upper bound (its name with every sentence), which leaves a rendering 10-20% under
        `target`. The longest rendering is packed (it is what the next commit carries forward
        and what a large budget gets); the shorter ones keep the upper bound, the sizes they
        had before lines were named: packing them only moved their sizes against a budget,
        no better over budgets from 800 to 8,000 tokens on LoCoMo (benchmarks/retention.py)."""
        used = self._fixed_tokens(sections, heading_tokens)
        opened = {len(sections) - 1} | {i for i, s in enumerate(sections) if s.whole}
        chosen: list[_Candidate] = []
        picked: dict[int, list[int]] = {}  # the orders chosen in each section, sorted
        for candidate in ranked:
            section, order = sections[candidate.section], candidate.order
            orders = picked.setdefault(candidate.section, [])
            at = bisect_left(orders, order)
            if packed:
                # its text, its speaker's name if it starts a line, and the name the next
                # chosen sentence of its section gains or loses by it
                before = orders[at - 1] if at else None
                cost = self._count(candidate.unit.text) + self._line_cost(section, before, order)
                if at < len(orders):
                    after = orders[at]
                    cost += self._line_cost(section, order, after) - self._line_cost(section, before, after)
            else:
                cost = candidate.tokens
            if candidate.section not in opened:  # its heading, and perhaps an "earlier archives not shown" note
                cost += heading_tokens[candidate.section] + 4
            if used + cost <= target:
                chosen.append(candidate)
                orders.insert(at, order)
                used += cost
                opened.add(candidate.section)
        blocks = self._blocks(sections, chosen)
        tokens = measure(blocks)
        # The estimate above is close but not exact: drop the weakest until it truly fits.
        while chosen and tokens > target:
            excess = tokens - target
            while chosen and excess > 0:
                excess -= chosen.pop().tokens
            blocks = self._blocks(sections, chosen)
            tokens = measure(blocks)
        return ("\n\n".join(blocks) + "\n", tokens) if chosen else ("", 0)  # headings alone are no overview

    def _line_cost(self, section: _Section, before: int | None, order: int) -> int:
        """What unit `order` of a section costs beyond its text when shown after unit `before`:
        its speaker's name if it starts a line (as `_lines` writes them), else nothing."""
        unit = section.units[order]
        if before is not None and not unit.line:
            previous = section.units[before]
            if unit.speaker == previous.speaker and (
                unit.speaker or section.paragraph[order] == section.paragraph[before]
            ):
                return 0
        return self._count(f"{unit.speaker}:") if unit.speaker else 0


def _lines(section: _Section, picked: list[int]) -> list[str]:
    """The lines of a section's body showing the units `picked` (by order), in order: each
    run of one speaker's sentences a line that opens with their name, each unit that starts
    a line of its own (with the markdown heading it sits under) on a new line, and the
    sentences that continued such a line back on it."""
    shown = set(picked)
    shown |= {heading for order in picked if (heading := section.heading_of[order]) is not None}
    lines: list[str] = []
    speaker: str | None = None  # whose line is open ("" no one's); None: no line open
    paragraph = -1
    for order in sorted(shown):
        unit = section.units[order]
        if unit.speaker:
            if unit.speaker == speaker and not unit.line:
                lines[-1] += " " + unit.text
            else:
                lines.append(f"{unit.speaker}: {unit.text}")
        elif speaker == "" and not unit.line and section.paragraph[order] == paragraph:
            lines[-1] += " " + unit.text
        else:
            lines.append(unit.text)
        speaker, paragraph = unit.speaker, section.paragraph[order]
    return lines
