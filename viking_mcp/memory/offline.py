"""The offline default extractor: deterministic rules, no network.

It finds what plain rules can find in a transcript:
- profile: what people say about themselves ("I'm a nurse", "I moved from Sweden",
  "my kids love dinosaurs"), one memory per user, a line per fact;
- preferences: "I love / enjoy / prefer / hate X", one memory per person and topic;
- events: sentences with a time ("yesterday", "last Friday", "two weeks ago",
  "on 7 May"), dated from the message they were said in; a date without a year is the
  one the words point to ("I fly on 3 May": the next; "I flew on 3 May": the last);
- entities: the named speakers, and names that recur, with what was said of them;
- tools and skills: usage counted from the session's tool parts and record_usage.

Only people's own words count: a plain "assistant" turn (an AI's) is not mined for a
profile, preferences or events; a transcript line that names its speaker is.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from typing import Any

from viking_mcp.memory.categories import Candidate, slug
from viking_mcp.memory.tense import Direction, direction
from viking_mcp.models import Message, ToolPart
from viking_mcp.summarize.dates import MONTHS as _MONTHS, NUMBERS, WEEKDAYS as _WEEKDAYS
from viking_mcp.summarize.extractive import Unit, message_units, speaker_names

# What people say about who they are: name, work, home, origin, family, status, age.
_PROFILE = re.compile(
    r"\b(?:my name is|i(?:'m| am) (?:a|an) (?!\w+ (?:bit|lot|little|big fan)\b)|i(?:'m| am) from|"
    r"i(?:'m| am) (?:single|married|divorced|engaged|retired|a parent|transgender|trans|gay|vegan|vegetarian|"
    r"\d+ years old)\b|i (?:work|worked) (?:as|at|for|in)|i(?:'m| am) (?:studying|training to be|pursuing)|"
    r"i (?:live|lived|grew up) in|i moved (?:from|to|here)|i(?:'ve| have) been (?:married|single|together)|"
    r"i have (?:a|an|two|three|four|\d+) (?:kids?|children|sons?|daughters?|dogs?|cats?|pets?|grandkids)|"
    r"my (?:husband|wife|partner|boyfriend|girlfriend|son|daughter|kids|children|mom|mother|dad|father|sister|"
    r"brother)(?:'s| is| are| was) |my home country)\b",
    re.IGNORECASE,
)
# At most this many profile facts per person from one archive: the strongest come first.
_PROFILE_PER_ARCHIVE = 4
_PREFERENCE = re.compile(
    r"\bi (?:really |absolutely |just |also |totally |truly )?(love|like|enjoy|prefer|adore|hate|dislike|"
    r"can't stand|am into|'m into|am passionate about|'m passionate about|am a (?:big |huge )?fan of|"
    r"'m a (?:big |huge )?fan of)\s+(?!that\b|it\b|how\b|when\b|this\b|those\b|you\b|your\b|what\b)"
    r"(?:to |the |a |an |my |our )?([^.,!?;]{3,80})",
    re.IGNORECASE,
)
_AGO = re.compile(r"\b(\d+|a|an|one|two|three|four|five|six|few|couple of) (day|week|month|year)s? ago\b", re.I)
_LAST_DAY = re.compile(r"\blast (" + "|".join(_WEEKDAYS) + r"|weekend|week|month|year|night)\b", re.I)
_RELATIVE = re.compile(r"\b(yesterday|today|tonight|this morning|this afternoon|earlier today)\b", re.I)
_DATE = re.compile(
    r"\b(?:on )?(?:(\d{1,2}) (" + "|".join(_MONTHS) + r")|(" + "|".join(_MONTHS) + r") (\d{1,2}))(?:st|nd|rd|th)?"
    r"(?:,? (\d{4}))?\b",
    re.I,
)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]{2,}(?: [A-Z][a-z]{2,}){0,2})\b")
_NOT_NAMES = {
    *(m.capitalize() for m in _MONTHS), *(d.capitalize() for d in _WEEKDAYS),
    "The", "This", "That", "What", "When", "Where", "Which", "Who", "Why", "How", "And", "But", "Thanks",
    "Thank", "Hey", "Wow", "Yes", "Yeah", "Haha", "Oh", "Sure", "Great", "Good", "Nice", "Awesome", "Love",
    "User", "Assistant", "Tool", "Used", "Congrats", "Definitely", "Absolutely", "Totally", "Really",
}  # fmt: skip


_TOPIC_FILLER = {"to", "the", "a", "an", "my", "our", "your", "being", "going", "doing", "all", "some", "more", "so"}


def human(when: str) -> str:
    """'2023-05-07' -> '7 May 2023'; '2023-05' -> 'May 2023'; '2023' stays."""
    parts = when.split("-")
    if len(parts) == 3:
        return f"{int(parts[2])} {_MONTHS[int(parts[1]) - 1].capitalize()} {parts[0]}"
    if len(parts) == 2:
        return f"{_MONTHS[int(parts[1]) - 1].capitalize()} {parts[0]}"
    return when


def resolve_when(sentence: str, said_on: date) -> str | None:
    """The date a sentence's time expression points at, as ISO (day, month or year)."""
    if match := _DATE.search(sentence):
        day, month, month2, day2, year = match.groups()
        month_index = _MONTHS.index((month or month2).lower()) + 1
        number = int(day or day2)
        if year:
            resolved = _day_or_none(int(year), month_index, number)
        else:
            resolved = _without_year(month_index, number, said_on, direction(sentence, match.span()))
        if resolved is not None:  # else "February 30": try the sentence's other time words
            return resolved.isoformat()
    if match := _RELATIVE.search(sentence):
        offset = 1 if match.group(1).lower() == "yesterday" else 0
        return (said_on - timedelta(days=offset)).isoformat()
    if match := _AGO.search(sentence):
        count = int(match.group(1)) if match.group(1).isdigit() else NUMBERS.get(match.group(1).lower(), 1)
        return _before(said_on, count, match.group(2).lower())
    if match := _LAST_DAY.search(sentence):
        what = match.group(1).lower()
        if what in ("night", "month", "year"):
            return _before(said_on, 1, "day" if what == "night" else what)
        # "last week" is the same weekday a week back; "last weekend" its Saturday.
        target = said_on.weekday() if what == "week" else 5 if what == "weekend" else _WEEKDAYS.index(what)
        back = (said_on.weekday() - target) % 7 or 7
        return (said_on - timedelta(days=back)).isoformat()
    return None


def _day_or_none(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _without_year(month: int, day: int, said_on: date, way: Direction | None) -> date | None:
    """`day` `month` of the year the words point to: the first on or after the day it was
    said when they speak of the future ("I fly to Lisbon on 3 May"), the last on or before
    when they speak of the past ("I flew..."), else the nearest (within half a year; for
    29 February, the nearest leap day)."""
    days = [d for year in range(said_on.year - 8, said_on.year + 9) if (d := _day_or_none(year, month, day))]
    if way == "future":
        return next((d for d in days if d >= said_on), None)
    if way == "past":
        return next((d for d in reversed(days) if d <= said_on), None)
    # The nearest; half a year either way is a tie only in a leap year, and the past wins it.
    return min(days, key=lambda d: (abs((d - said_on).days), d > said_on), default=None)


def _before(said_on: date, count: int, unit: str) -> str:
    """The day, month or year `count` units before `said_on`, as ISO."""
    if unit == "year":
        return str(said_on.year - count)
    if unit == "month":
        index = said_on.year * 12 + said_on.month - 1 - count
        return f"{index // 12:04d}-{index % 12 + 1:02d}"
    return (said_on - timedelta(days=count * (7 if unit == "week" else 1))).isoformat()


def extract_offline(messages: list[Message]) -> list[Candidate]:
    """Profile, preference, event and entity candidates, in a deterministic order."""
    names = speaker_names(messages)
    said: list[tuple[Unit, date]] = []
    for message in messages:
        day = datetime.fromisoformat(message.created_at.replace("Z", "+00:00")).date()
        said += [(unit, day) for unit in message_units(message, names)]

    profile: dict[str, list[str]] = defaultdict(list)
    candidates: list[Candidate] = []
    for unit, day in said:
        if unit.speaker not in names and unit.speaker != "User":
            continue
        speaker, text = unit.speaker, unit.text.strip()
        line = f"{speaker}: {text}"
        if _PROFILE.search(text) and len(profile[speaker]) < _PROFILE_PER_ARCHIVE:
            profile[speaker].append(text)
        if match := _PREFERENCE.search(text):
            # The topic is the first word that says what: "hiking" in "hiking in the hills".
            words = [w for w in re.findall(r"[A-Za-z][\w'-]*", match.group(2)) if w.lower() not in _TOPIC_FILLER]
            topic = (words or match.group(2).split())[0].lower()
            candidates.append(Candidate("preferences", line, content=f"- {line}", name=f"{speaker} {topic}"))
        if when := resolve_when(text, day):
            said_on = f"Said on {day.isoformat()}."
            candidates.append(Candidate("events", f"{human(when)}: {line}", said_on, f"- {line}", when=when))

    if profile:
        facts = [f"- {speaker}: {fact}" for speaker, lines in profile.items() for fact in lines]
        people = ", ".join(sorted(profile))
        candidates.insert(0, Candidate("profile", abstract=f"Profile: what {people} said about themselves.",
                                       content="\n".join(facts)))  # fmt: skip

    candidates += _entities(said, names, profile)
    return candidates


def extract_usage(messages: list[Message], skills: list[dict[str, Any]]) -> list[Candidate]:
    """Tool and skill candidates whose usage counters merge by name (summed)."""
    return _tools(messages) + _skills(skills)


def _entities(said: list[tuple[Unit, date]], names: set[str], profile: dict[str, list[str]]) -> list[Candidate]:
    entities: list[Candidate] = []
    for speaker in sorted(names):
        lines = [f"- {speaker}: {fact}" for fact in profile.get(speaker, [])] or [
            f"- {speaker} took part in the conversation."
        ]
        entities.append(
            Candidate("entities", f"{speaker}: a person in the conversation.", "", "\n".join(lines), speaker)
        )
    mentions: Counter[str] = Counter()
    where: dict[str, list[str]] = defaultdict(list)
    for unit, _ in said:
        for name in set(_NAME.findall(unit.text)):
            if name in _NOT_NAMES or name in names or name.split()[0] in _NOT_NAMES:
                continue
            mentions[name] += 1
            if len(where[name]) < 5:
                where[name].append(f"- {unit.attributed()}")
    for name, count in sorted(mentions.items()):
        if count >= 2:
            first = where[name][0][2:]
            abstract = f"{name}: mentioned {count} times. {first}"[:400]
            entities.append(Candidate("entities", abstract, content="\n".join(where[name]), name=name))
    return entities


def _tools(messages: list[Message]) -> list[Candidate]:
    """One candidate per tool name, counting each tool call (tool_id) once: in the archive
    where it reaches its final status (completed or error), so a call that spans two
    archives is not counted twice."""
    last = {part.tool_id: part for message in messages for part in message.parts if isinstance(part, ToolPart)}
    by_name: dict[str, list[ToolPart]] = defaultdict(list)
    for part in last.values():
        if part.tool_status in ("completed", "error"):
            by_name[part.tool_name].append(part)
    candidates = []
    for name in sorted(by_name):
        calls = by_name[name]
        completed = sum(1 for c in calls if c.tool_status == "completed")
        stats = {"calls": len(calls), "completed": completed, "errors": len(calls) - completed}
        example = next((c for c in reversed(calls) if c.tool_output), calls[-1])
        content = f"- {name}({example.tool_input}) -> {example.tool_output[:200]}"
        candidates.append(Candidate("tools", f"Tool {name}.", content=content, name=name, stats=stats))
    return candidates


def _skills(skills: list[dict[str, Any]]) -> list[Candidate]:
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for skill in skills:
        by_name[slug(str(skill.get("uri", "")).rstrip("/").rsplit("/", 1)[-1] or "skill")].append(skill)
    candidates = []
    for name in sorted(by_name):
        uses = by_name[name]
        successes = sum(1 for u in uses if u.get("success", True))
        stats = {"calls": len(uses), "successes": successes, "failures": len(uses) - successes}
        content = "\n".join(f"- {u.get('input', '')[:100]} -> {u.get('output', '')[:100]}" for u in uses)
        abstract = f"Skill {name} ({uses[-1].get('uri', '')})."
        candidates.append(Candidate("skills", abstract, content=content, name=name, stats=stats))
    return candidates
