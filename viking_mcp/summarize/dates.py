"""Relative dates made absolute: "yesterday", said on 8 May 2023, is 7 May 2023.

A summary is read long after the conversation, when "last week" no longer means
anything; so the extractive summariser writes the date a relative expression stands for
beside it, from the message's `created_at`: "yesterday (7 May 2023)", "last month
(April 2023)", "last week (the week before 8 May 2023)". Only the cheap, unambiguous
cases are resolved; anything else is left as it was said.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]  # fmt: skip
NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "a couple of": 2, "a few": 3, "couple of": 2, "few": 3,
}  # fmt: skip
_COUNT = r"(\d+|a couple of|couple of|a few|few|an|a|one|two|three|four|five|six|seven|eight|nine|ten)"
_RELATIVE = re.compile(
    r"\b(?:"
    r"(?P<daybefore>the day before yesterday)"
    r"|(?P<yesterday>yesterday|last night)"
    r"|(?P<today>today|tonight|this morning|this afternoon|this evening)"
    r"|(?P<tomorrow>tomorrow)"
    r"|(?P<lastweekday>last (?:monday|tuesday|wednesday|thursday|friday|saturday|sunday))"
    r"|(?P<lastweekend>last weekend)"
    r"|(?P<thisweekend>this weekend|this past weekend|the weekend)"
    r"|(?P<lastweek>last week)"
    r"|(?P<nextweek>next week)"
    r"|(?P<lastmonth>last month)"
    r"|(?P<thismonth>this month)"
    r"|(?P<nextmonth>next month)"
    r"|(?P<lastyear>last year)"
    r"|(?P<thisyear>this year)"
    r"|(?P<nextyear>next year)"
    rf"|(?P<ago>{_COUNT} (?P<unit>days?|weeks?|months?|years?) ago)"
    r")\b(?! \()",  # not twice: an expression already followed by "(" is left alone
    re.IGNORECASE,
)


def day(when: date) -> str:
    """8 May 2023: the form people write and read."""
    return f"{when.day} {when:%B %Y}"


def _month(when: date, shift: int) -> str:
    index = when.year * 12 + when.month - 1 + shift
    return f"{date(index // 12, index % 12 + 1, 1):%B %Y}"


# The expressions that are a day, a week or a weekend away from the day they were said.
_DAYS = {"daybefore": -2, "yesterday": -1, "today": 0, "tomorrow": 1}
_AROUND = {"lastweekend": "the weekend before", "lastweek": "the week before", "nextweek": "the week after"}
_SHIFT = {"last": -1, "this": 0, "next": 1}


def _resolve(match: re.Match[str], said: date) -> str | None:
    kind = match.lastgroup or ""
    text = match.group(0).lower()
    if kind in _DAYS:
        return day(said + timedelta(days=_DAYS[kind]))
    if kind in _AROUND:
        return f"{_AROUND[kind]} {day(said)}"
    if kind == "lastweekday":
        target = WEEKDAYS.index(text.split()[1])
        back = (said.weekday() - target) % 7 or 7
        return day(said - timedelta(days=back))
    if kind == "thisweekend":
        # "this weekend" said on a weekday may be the next one ("this weekend I'll hike"),
        # and "the weekend" either: a wrong date is worse than none, so only the sure cases.
        if text == "this past weekend":
            return f"the weekend before {day(said)}"
        return f"the weekend of {day(said)}" if text == "this weekend" and said.weekday() >= 5 else None
    if kind.endswith("month"):  # last, this or next
        return _month(said, _SHIFT[kind[:-5]])
    if kind.endswith("year"):
        return str(said.year + _SHIFT[kind[:-4]])
    if kind == "ago":
        count_text = text.rsplit(" ", 2)[0]
        count = int(count_text) if count_text.isdigit() else NUMBERS.get(count_text, 0)
        unit = match.group("unit").lower().rstrip("s")
        if count <= 0 or count > 100:
            return None
        if count_text in ("a few", "few", "a couple of", "couple of"):  # vague: say only what it is before
            since = day(said) if unit in ("day", "week") else _month(said, 0) if unit == "month" else str(said.year)
            return f"{count_text} {unit}s before {since}"
        if unit == "day":
            return day(said - timedelta(days=count))
        if unit == "week":
            return f"the week of {day(said - timedelta(weeks=count))}"
        if unit == "month":
            return _month(said, -count)
        return str(said.year - count)
    return None


# What resolve_relative_dates writes beside an expression: "(7 May 2023)", "(April 2023)",
# "(2022)", "(the week before 8 May 2023)", "(a few weeks before 15 July 2023)".
_NOTE = re.compile(
    r" \((?:the (?:week|weekend) (?:before|after|of) |(?:a )?(?:few|couple of) \w+ before )?"
    r"(?:\d{1,2} )?(?:[A-Z][a-z]+ )?\d{4}\)"
)


def strip_date_notes(text: str) -> str:
    """`text` without the dates resolve_relative_dates wrote into it: what was said."""
    return _NOTE.sub("", text)


def resolve_relative_dates(text: str, said: date | None) -> str:
    """`text` with the date each relative expression stands for written beside it."""
    if said is None:
        return text

    def annotate(match: re.Match[str]) -> str:
        resolved = _resolve(match, said)
        return f"{match.group(0)} ({resolved})" if resolved else match.group(0)

    return _RELATIVE.sub(annotate, text)


def parse_day(created_at: str) -> date | None:
    try:
        return date.fromisoformat(created_at[:10])
    except ValueError:
        return None
