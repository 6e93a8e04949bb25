"""Which way a sentence points in time, for dating what it says when no year is given.

"I fly to Lisbon on 3 May", said on 2 December 2026, is next May; "I flew to Lisbon on
3 May" is last May. The offline extractor asks `direction(sentence, at)` where `at` is
the span of the date in the sentence, and gets "future", "past" or None (the words do
not say).

Cues, in plain rules:
- future: will, 'll, shall, won't, going to, gonna, plan(s/ning), hope/want/about to,
  next (not "the next day", not "next to"), soon, tomorrow, upcoming, coming up, can't
  wait, looking forward, in N days/weeks/months, "is on", "is due", "is scheduled";
  a progressive ("I'm flying", "we're leaving", "she is starting"); and the present
  tense of travel and plan verbs ("I fly", "we leave", "the course starts").
- past: was, were, did, had, been, the common irregular past forms (went, flew, met...),
  words in -ed that are verbs (not "excited" or "I'm tired"), ago, last week/month/...,
  used to.
When both kinds are present, the clause holding the date decides ("We went last week and
will go again on 3 May": future), and within it the cue nearest to the date.
"""

from __future__ import annotations

import re
from typing import Literal

from viking_mcp.summarize.dates import WEEKDAYS

Direction = Literal["future", "past"]

# Verbs whose present tense, with a date, is a plan: "I fly on 3 May", "the course starts on...".
_PLAN_VERBS = (
    "fly|leave|depart|arrive|travel|go|head|start|begin|move|return|visit|land|graduate|retire|marry|"
    "meet|see|finish|open|play|perform|run|compete|celebrate|host|attend|interview|sit|take off|set off|"
    "get back|come back|get married"
)
_PLAN_VERBS_S = (
    "flies|leaves|departs|arrives|travels|goes|heads|starts|begins|moves|returns|lands|graduates|retires|"
    "opens|closes|ends|finishes|launches|kicks off|takes off|comes out|premieres"
)
# -ing words that are adjectives or nouns after "is": "it's amazing", "that's something".
_NOT_PROGRESSIVE = (
    "amazing|interesting|exciting|boring|annoying|surprising|confusing|relaxing|tiring|amusing|charming|"
    "stunning|inspiring|frustrating|terrifying|overwhelming|worrying|disappointing|embarrassing|refreshing|"
    "fascinating|touching|missing|being|during|\\w*thing|morning|evening|spring|king|ring|string|wedding|building"
)
_ADVERB = r"(?:\w+ly |just |still |also |now |all |so |really )?"

_FUTURE = re.compile(
    r"\b(?:will|shall|won't|going to|gonna|plans?|planning|(?:hope|hoping|want|wanna|about|intend|intending) to|"
    r"soon|tomorrow|upcoming|coming up|can't wait|cannot wait|looking forward|"
    r"(?<!the )next(?! to\b)|"
    r"in (?:\d+|a|an|one|two|three|four|five|six|a few|a couple of) (?:days?|weeks?|months?)|"
    r"(?:is|are|'s|'re) (?:on|due|scheduled|set for|booked)|"
    rf"(?:am|'m|is|'s|are|'re) {_ADVERB}(?!(?:{_NOT_PROGRESSIVE})\b)\w+ing|"
    rf"(?:i|we|you|they) {_ADVERB}(?:{_PLAN_VERBS})|"
    r"(?:have|has)(?! (?:been|had|done|seen|gone|got|gotten|met|made|taken|left|come|\w+ed)\b)|"
    rf"(?:{_PLAN_VERBS_S})"
    r")\b|'ll\b",
    re.IGNORECASE,
)
_PAST = re.compile(
    r"\b(?:was|were|wasn't|weren't|did|didn't|had|hadn't|been|used to|ago|the other day|back then|"
    r"went|came|got|made|saw|met|took|gave|told|said|left|flew|ran|ate|drove|wrote|bought|brought|thought|"
    r"felt|found|lost|won(?!')|began|spent|sent|kept|paid|sat|stood|heard|knew|became|broke|chose|fell|"
    r"forgot|grew|held|slept|spoke|swam|taught|threw|woke|wore|sang|rode|sold|caught|drew|drank|fought|"
    r"led|fled|meant|shook|stole|tore|"
    r"last (?:week|weekend|month|year|night|time|summer|spring|autumn|fall|winter|semester|term|season|"
    + "|".join(WEEKDAYS)
    + r"))\b",
    re.IGNORECASE,
)
# Words in -ed that are past verbs unless they are one of these, or follow "am", "get", "so"...
_ED = re.compile(r"\b(?:(am|'m|is|'s|are|'re|be|being|get|getting|feel|feeling|so|very|really|too|pretty) )?"
                 r"([a-z]{2,}ed)\b", re.IGNORECASE)  # fmt: skip
_NOT_PAST_ED = {
    "hundred", "wicked", "naked", "sacred", "kindred", "embed", "shed", "shred", "fred",  # not verbs
    "excited", "interested", "thrilled", "scared", "worried", "tired", "pleased", "delighted", "stressed",
    "supposed", "prepared", "engaged", "related", "based", "named", "called",  # said of the present
    "planned", "scheduled", "booked",  # done already, but of what is to come
}  # fmt: skip
# Where a clause ends: what is said on one side of these is its own statement.
_CLAUSE = re.compile(r"[,;:()!?]|\s(?:and|but|because|though|although|while|whereas|or)\s", re.IGNORECASE)


def direction(sentence: str, at: tuple[int, int]) -> Direction | None:
    """Whether `sentence` speaks of the future or the past around the span `at` (a date in it)."""
    sentence = sentence.replace("\u2019", "'")  # I’ll, didn’t: typed apostrophes
    start, end = at
    bounds = [0, *(m.end() if m.end() <= start else m.start() for m in _CLAUSE.finditer(sentence)), len(sentence)]
    clause = (max(b for b in bounds if b <= start), min(b for b in bounds if b >= end))
    cues = _cues(sentence)
    near = [c for c in cues if clause[0] <= c[0] and c[1] <= clause[1]] or cues
    if not near:
        return None
    # The cue nearest to the date: distance from the date's span to the cue's.
    return min(near, key=lambda c: max(start - c[1], c[0] - end, 0))[2]


def _cues(sentence: str) -> list[tuple[int, int, Direction]]:
    cues: list[tuple[int, int, Direction]] = [(m.start(), m.end(), "future") for m in _FUTURE.finditer(sentence)]
    cues += [(m.start(), m.end(), "past") for m in _PAST.finditer(sentence)]
    for match in _ED.finditer(sentence):
        word = match.group(2).lower()
        if match.group(1) is None and word not in _NOT_PAST_ED and not word.endswith("eed"):
            cues.append((match.start(2), match.end(2), "past"))
    return cues
