"""Who said what, as a summary shows it: is every sentence attributed to its speaker?

An overview names the speaker at the start of each line ("Caroline: ..."), and every
sentence on that line is theirs; an abstract names them after its lead sentence
("12 messages on 8 May 2023. Caroline: ..."). A sentence is checked by finding the
messages it comes from: its words (lowercased, the dates the summariser writes beside
"yesterday" left out) must occur, in order and contiguously, in a message. It is correct
when one of those messages was said by the speaker its line names, wrong when none was
or when its line names nobody. A sentence found in no message whole (two short
sentences of one speaker run together, say) is checked in pieces: the longest runs of
its words that one message holds. Pieces under three words are too common to tell who
said them and are not checked; neither is text found in no message (headings, the
abstract's lead, tool results, an agent's own words).

    checker = SpeakerIndex(sources=[("Caroline", "I went to the LGBTQ support group."), ...],
                           speakers={"Caroline", "Melanie"})
    result = checker.check(overview)               # overview: line-start names
    result = checker.check(abstract, within_line=True)
    checked, correct, wrong = speaker_attribution(overview, sources, speakers)
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cache

from viking_mcp.summarize.dates import strip_date_notes

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?…;])\s+")
# A piece shorter than this ("I did", "so cool") is in too many messages to tell who said it.
MIN_WORDS = 3


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(strip_date_notes(text).lower()))


@dataclass
class Attribution:
    checked: int = 0
    correct: int = 0
    wrong: int = 0
    # (the speaker the text names, or "" for none; the piece; who said it)
    mistakes: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)

    def add(self, other: Attribution) -> None:
        self.checked += other.checked
        self.correct += other.correct
        self.wrong += other.wrong
        self.mistakes += other.mistakes

    @property
    def rate(self) -> float:
        return self.correct / self.checked if self.checked else 1.0


class SpeakerIndex:
    """The messages of a conversation, indexed to find where a summary's sentence came from."""

    def __init__(self, sources: Sequence[tuple[str, str]], speakers: Collection[str]) -> None:
        self.speakers = [speaker for speaker, _ in sources]
        self.texts = [" " + " ".join(_words(text)) + " " for _, text in sources]
        self.by_word: dict[str, set[int]] = {}
        for index, text in enumerate(self.texts):
            for word in text.split():
                self.by_word.setdefault(word, set()).add(index)
        names = "|".join(re.escape(name) for name in sorted(speakers, key=len, reverse=True))
        self.line_name = re.compile(rf"^({names}): ") if names else None
        self.any_name = re.compile(rf"(?:^|(?<=\s))({names}): ") if names else None
        self.said_by = cache(self._said_by)

    def _said_by(self, words: tuple[str, ...]) -> frozenset[str]:
        """Who said a message holding `words` in a row (empty: no message does)."""
        candidates = sorted((self.by_word.get(w, set()) for w in set(words)), key=len)
        if not candidates or not candidates[0]:
            return frozenset()
        found = set.intersection(*candidates)
        needle = " " + " ".join(words) + " "
        return frozenset(self.speakers[i] for i in found if needle in self.texts[i])

    def pieces(self, sentence: str) -> list[tuple[tuple[str, ...], frozenset[str]]]:
        """The sentence's words whole if one message holds them, else its longest runs that one does."""
        words = _words(sentence)
        whole = self.said_by(words) if words else frozenset()
        if whole:
            return [(words, whole)]
        pieces = []
        start = 0
        while start < len(words):
            end, said = start, frozenset[str]()
            while end < len(words) and (longer := self.said_by(words[start : end + 1])):
                end, said = end + 1, longer
            if end == start:  # no message has this word
                start += 1
                continue
            pieces.append((words[start:end], said))
            start = end
        return pieces

    def check(self, text: str, *, within_line: bool = False) -> Attribution:
        """Every sentence of `text` from a message, against the speaker its line names (and,
        `within_line`, a name that opens a sentence inside the line, as an abstract's does)."""
        result = Attribution()
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or (line.startswith("_") and line.endswith("_")):
                continue
            for named, run in self._runs(line, within_line):
                for sentence in _SENTENCE.split(run):
                    for words, said in self.pieces(sentence.rstrip("…")):
                        if len(words) < MIN_WORDS:
                            continue
                        result.checked += 1
                        if named and named in said:
                            result.correct += 1
                        else:
                            result.wrong += 1
                            result.mistakes.append((named, " ".join(words), tuple(sorted(said))))
        return result

    def _runs(self, line: str, within_line: bool) -> list[tuple[str, str]]:
        """(the speaker named, or "", the text they are named for) along one line."""
        if within_line and self.any_name is not None:
            parts = self.any_name.split(line)  # text, name, text, name, text ...
            return [("", parts[0]), *zip(parts[1::2], parts[2::2], strict=True)]
        if self.line_name is not None and (match := self.line_name.match(line)):
            return [(match.group(1), line[match.end() :])]
        return [("", line)]


def speaker_attribution(
    text: str, sources: Sequence[tuple[str, str]], speakers: Collection[str], *, within_line: bool = False
) -> tuple[int, int, int]:
    """(checked, correct, wrong) for the sentences of `text`; see the module docstring."""
    result = SpeakerIndex(sources, speakers).check(text, within_line=within_line)
    return result.checked, result.correct, result.wrong
