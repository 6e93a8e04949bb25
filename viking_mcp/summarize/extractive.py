"""The offline default: an extractive summariser that needs no network and is deterministic.

It picks the sentences that carry facts (names, numbers, dates, places, things that
recur) and drops chit-chat. The overview is markdown prose, one section per archive,
oldest first, each sentence attributed to its speaker. It carries the previous overview
forward: every archive keeps at least its best sentence while there is room, and when
the whole would pass its token bound the least informative sentences of the oldest
sections go first. The overview is rendered at several lengths so that get_context can
always return the longest one that fits what is left of a budget.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from viking_mcp.models import ContextPart, Message, TextPart, ToolPart
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary
from viking_mcp.tokens import TokenCounter

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d+(?:[.,:/-]\d+)*")
_SECTION = re.compile(r"^## (.+)$", re.MULTILINE)
# "Caroline: ..." (a transcript line that names its speaker): one to three capitalised words.
_SPEAKER_PREFIX = re.compile(r"^([A-Z][\w'-]*(?: [A-Z][\w'-]*){0,2}):\s")
# What the summariser itself puts before a sentence; only this is stripped for scoring.
_ROLE_PREFIX = re.compile(r"^(?:User|Assistant): ")
_MONTHS = {
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday",
    "saturday", "sunday", "yesterday", "today", "tomorrow", "week", "month", "year",
}  # fmt: skip
_STOPWORDS = {
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing",
    "don't", "for", "from", "get", "got", "had", "has", "have", "having", "he", "her", "here", "him",
    "his", "how", "i", "i'm", "i've", "if", "in", "into", "is", "it", "it's", "its", "just", "know",
    "like", "me", "more", "my", "no", "not", "now", "of", "oh", "on", "one", "or", "our", "out", "really",
    "so", "some", "such", "than", "that", "that's", "the", "their", "them", "then", "there", "these",
    "they", "this", "those", "to", "too", "up", "us", "very", "was", "we", "well", "were", "what",
    "when", "where", "which", "who", "why", "will", "with", "would", "yeah", "yes", "you", "you're",
    "your", "thanks", "thank", "great", "good", "awesome", "cool", "wow", "hey", "hi", "hello", "lol",
    "sure", "okay", "ok", "totally", "glad", "nice", "amazing", "love", "think", "feel", "thing",
    "things", "lot", "much", "way", "going", "make", "see", "want", "let", "say", "said", "tell",
}  # fmt: skip

OVERVIEW_TITLE = "# Session overview"
_MIN_RENDERING_TOKENS = 64
# Each step back in time weighs a section's sentences this much less.
_RECENCY = 0.8
# A sentence under this fraction of its section's best is filler.
_FILLER_RATIO = 0.25
# The newest archive's section may always use this many tokens, however short the archive.
_SECTION_FLOOR_TOKENS = 120


@dataclass(frozen=True)
class Unit:
    """A sentence and who said it ("" when unknown, e.g. carried forward from an overview)."""

    speaker: str
    text: str

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


def split_sentences(text: str) -> list[str]:
    pieces = (p.strip() for p in _SENTENCE_END.split(text))
    return [p for p in pieces if p]


def speaker_names(messages: list[Message]) -> set[str]:
    """Prefixes that name a speaker: used by two or more messages of the archive, so that
    a one-off lead-in ("Updated:", "Day One:") is not mistaken for a name."""
    seen: Counter[str] = Counter()
    for message in messages:
        for part in message.parts:
            if isinstance(part, TextPart) and (match := _SPEAKER_PREFIX.match(part.text.strip())):
                seen[match.group(1)] += 1
    return {name for name, count in seen.items() if count >= 2}


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
            units.append(Unit("", f"Tool {part.tool_name} ({part.tool_status}): {output}".rstrip(": ")))
        elif isinstance(part, ContextPart) and part.abstract:
            units.append(Unit("", f"Used {part.context_type} {part.uri}: {part.abstract}"))
    return units


def _content_words(sentence: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(sentence) if w.lower() not in _STOPWORDS and len(w) > 1]


def _score(sentence: str, frequency: Counter[str]) -> float:
    """How much a sentence is worth keeping: facts and recurring topics up, chit-chat down."""
    sentence = _ROLE_PREFIX.sub("", sentence, count=1)  # says who, not what
    words = _WORD.findall(sentence)
    if len(words) < 4:
        return 0.0
    content = _content_words(sentence)
    if not content:
        return 0.0
    score = 0.0
    for word in sorted(set(content)):  # a fixed order: float sums must not depend on hash seeds
        score += 1.0 + math.log1p(frequency.get(word, 0))
    body = words[1:]  # the first word is capitalised anyway
    score += 1.5 * sum(1 for w in body if w[0].isupper())
    score += 1.5 * sum(1 for w in words if w[0].isdigit())
    score += 1.0 * sum(1 for w in words if w.lower() in _MONTHS)
    if sentence.rstrip().endswith("?"):
        score *= 0.6
    return score / math.sqrt(len(words))


def _parse_sections(overview: str) -> list[_Section]:
    """Sections of a previous overview (ours, or an agent's free-form one as 'Earlier')."""
    if not overview.strip():
        return []
    matches = list(_SECTION.finditer(overview))
    if not matches:
        body = overview.replace(OVERVIEW_TITLE, "").strip()
        return [_Section("Earlier", [Unit("", s) for s in split_sentences(body)])] if body else []
    sections = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(overview)
        body = overview[match.end() : end].strip()
        units = [Unit("", s) for s in split_sentences(body) if not (s.startswith("_") and s.endswith("_"))]
        sections.append(_Section(match.group(1).strip(), units))
    return sections


def _date_span(messages: list[Message]) -> str:
    days = sorted({m.created_at[:10] for m in messages})
    if not days:
        return ""
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


class ExtractiveSummariser:
    """Deterministic sentence extraction; see the module docstring."""

    name = "extractive"

    def __init__(self, tokens: TokenCounter, *, overview_max_tokens: int = 2000, abstract_max_tokens: int = 80):
        self.tokens = tokens
        self.overview_max_tokens = overview_max_tokens
        self.abstract_max_tokens = abstract_max_tokens

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        names = speaker_names(archive.messages)
        units = [u for m in archive.messages for u in message_units(m, names)]
        frequency = Counter(w for u in units for w in _content_words(u.text))
        span = _date_span(archive.messages)
        count = len(archive.messages)
        label = f"{count} message{'s' if count != 1 else ''}"
        heading = " · ".join(p for p in (archive.archive_id, span, label) if p)
        sections = [*_parse_sections(archive.previous_overview), _Section(heading, units)]
        return ArchiveSummary(
            abstract=self._abstract(label, span, units, frequency),
            overviews=self.render_overviews(sections, frequency),
        )

    # --- abstract -----------------------------------------------------------------------------

    def _abstract(self, label: str, span: str, units: list[Unit], frequency: Counter[str]) -> str:
        lead = label + (f" on {span}" if span else "") + "."
        scores = [_score(u.text, frequency) for u in units]
        if not units or max(scores) == 0:
            return lead
        best = units[max(range(len(units)), key=lambda i: (scores[i], -i))].attributed().rstrip()
        if best[-1] not in ".!?":
            best += "."
        return self._fit(f"{lead} {best}", self.abstract_max_tokens)

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

    # --- overview -----------------------------------------------------------------------------

    def shorter_renderings(self, overview: str) -> list[str]:
        """Shorter renderings of an overview written elsewhere (by the agent or an LLM), so
        that get_context can fit one to a tight budget. The original stays the longest."""
        sections = _parse_sections(overview)
        frequency = Counter(w for s in sections for u in s.units for w in _content_words(u.text))
        size = self.tokens.count(overview)
        empty = self._render(sections, [])  # headings alone are no overview
        renderings = self.render_overviews(sections, frequency, start=size // 2)
        return [r for r in renderings if r != empty and r.strip() != overview.strip()]

    def render_overviews(
        self, sections: list[_Section], frequency: Counter[str], start: int | None = None
    ) -> list[str]:
        """The overview at its bound (or `start`) and at halvings of it, longest first, each distinct."""
        ranked = self._rank(sections, frequency)
        renderings: list[str] = []
        target = self.overview_max_tokens if start is None else start
        while target >= _MIN_RENDERING_TOKENS:
            text = self._render_within(sections, ranked, target)
            if text and (not renderings or text != renderings[-1]):
                renderings.append(text)
            target //= 2
        if not renderings:
            renderings.append(self._render(sections, []))
        return renderings

    def _rank(self, sections: list[_Section], frequency: Counter[str]) -> list[_Candidate]:
        """Every section's best sentence first (newest section first), then the rest by
        score weighed by recency: so the past is kept in outline before the present in detail.

        Sentences worth less than a quarter of their section's best are not candidates (they
        would only fill gaps), and the newest section offers at most a third of its archive's
        tokens, so that even the longest overview is a summary, not the transcript again.
        """
        newest = len(sections) - 1
        leaders: list[_Candidate] = []
        rest: list[_Candidate] = []
        for index in range(newest, -1, -1):
            recency = _RECENCY ** (newest - index)
            candidates = []
            for order, unit in enumerate(sections[index].units):
                score = _score(unit.text, frequency) * recency
                if score > 0:
                    candidates.append(_Candidate(index, order, unit, score, self.tokens.count(unit.attributed()) + 1))
            if not candidates:
                continue
            candidates.sort(key=lambda c: (-c.score, c.order))
            best = candidates[0]
            leaders.append(best)
            others = [c for c in candidates[1:] if c.score >= _FILLER_RATIO * best.score]
            if index == newest:
                cap = max(_SECTION_FLOOR_TOKENS, sum(c.tokens for c in candidates) // 3) - best.tokens
                kept = []
                for candidate in others:
                    if candidate.tokens <= cap:
                        kept.append(candidate)
                        cap -= candidate.tokens
                others = kept
            rest += others
        rest.sort(key=lambda c: (-c.score, -c.section, c.order))
        return leaders + rest

    def _render(self, sections: list[_Section], chosen: list[_Candidate]) -> str:
        by_section: dict[int, list[_Candidate]] = {}
        for candidate in chosen:
            by_section.setdefault(candidate.section, []).append(candidate)
        blocks = [OVERVIEW_TITLE]
        omitted = 0
        for index, section in enumerate(sections):
            picked = sorted(by_section.get(index, []), key=lambda c: c.order)
            if not picked and index != len(sections) - 1:
                omitted += 1
                continue
            if omitted:
                blocks.append(f"_{omitted} earlier archive{'s' if omitted > 1 else ''} not shown._")
                omitted = 0
            blocks.append(f"## {section.heading}")
            sentences, speaker = [], None
            for candidate in picked:
                unit = candidate.unit
                # Name the speaker when it changes, not on every sentence.
                sentences.append(unit.attributed() if unit.speaker and unit.speaker != speaker else unit.text)
                speaker = unit.speaker or None
            if sentences:
                blocks.append(" ".join(sentences))
        return "\n\n".join(blocks) + "\n"

    def _render_within(self, sections: list[_Section], ranked: list[_Candidate], target: int) -> str:
        headings = sum(self.tokens.count(f"## {s.heading}") + 2 for s in sections) + 8
        budget = target - min(headings, target // 3)
        chosen: list[_Candidate] = []
        used = 0
        for candidate in ranked:
            if used + candidate.tokens <= budget:
                chosen.append(candidate)
                used += candidate.tokens
        text = self._render(sections, chosen)
        # The estimate above is close but not exact: drop the weakest until it truly fits.
        while self.tokens.count(text) > target and chosen:
            chosen.pop()
            text = self._render(sections, chosen)
        # Headings alone are no overview.
        return text if chosen and self.tokens.count(text) <= target else ""
