"""The context as a model reads it: one compact text, within the budget, counted exactly.

Over MCP the reader is a model, and hosts hand it different parts of a tool result:
Claude Code and VS Code pass `JSON.stringify(structuredContent)` and drop the `content`
text whenever structured content is present; other hosts read `content`. So both carry
the same text: `content` is the text, `structuredContent` is `{"context": text,
"estimatedTokens": n}`. The budget bounds what either kind of host hands the model,
counted with the server's tokenizer (cl100k) on the finished result, JSON escapes
included (as hosts write JSON: non-ASCII kept): after composing from stored counts, the
result is counted whole, and composed again while either form is over.

What is spent first: the messages not yet summarised, newest first (when they do not
all fit, one line says how many older ones were left out and how to reach them); then
the archive payload `engine/context.py` picks (the latest overview's longest rendering
that fits, then abstracts of the archives it does not show, newest first), so no
archive is shown twice. Messages are lines of `[HH:MM] role: text` under a line for
each day. With a query, the archived messages recall found for it come before the
overview takes its share (engine/context.py, PASSAGE_SHARE), in a block of their own,
each with its archive and day.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from viking_mcp.engine.context import (
    PASSAGE_SHARE,
    ArchivePick,
    active_messages,
    archive_stats,
    choose_passages,
    pick_archives,
    shown_archives,
)
from viking_mcp.engine.recall import Passage
from viking_mcp.models import ContextStats, archive_id, message_line, plural
from viking_mcp.store.base import ArchiveRow, ContextSnapshot, StoredMessage
from viking_mcp.summarize.dates import day, parse_day
from viking_mcp.summarize.extractive import NOT_SHOWN_NOTE, OVERVIEW_TITLE
from viking_mcp.tokens import MESSAGE_OVERHEAD_TOKENS, TokenCounter

# Composing again while a form is over the budget (or once under it by much); after this
# many, whatever is left is dropped.
_TRIES = 8
# The framing every result has (tags, the closing notes), paid for up front.
_FRAMING_TOKENS = 45
# A day's line above its messages ("3 December 2026"), and the note a cut message ends with.
_DAY_LINE_TOKENS = 6
_CUT_NOTE_TOKENS = 20
# Each try over the budget leaves at least this much less room than the last, doubling.
_STEP_TOKENS = 16
# What an abstract's line adds to it ("- archive_007: ").
_ABSTRACT_LINE_TOKENS = 8
# The block of passages for a query: its tags.
_PASSAGES_FRAMING_TOKENS = 14
# Composed once more, larger, when at least this much of the budget is left unused.
_GROW_TOKENS = 40
# What an overview of ours carries for people reading it as a file, not for a model reading
# its context: blank lines (a token in the text, two as JSON escapes), the title, the
# "_2 earlier archives not shown._" notes (the closing line counts them); and the "·" of its
# headings is four tokens when JSON escapes it.
_FOR_FILES = re.compile(rf"^(?:{OVERVIEW_TITLE}|{NOT_SHOWN_NOTE})\n|^\n", re.MULTILINE)
# The speakers the built-in abstracts name: after the lead's full stop, or after "; ".
_ABSTRACT_SPEAKER = re.compile(r"(?:\. |; )([A-Z][\w'-]*(?: [A-Z][\w'-]*){0,2}): ")
_HEADING_DOT = re.compile(r"^(## archive_\d+) · ", re.MULTILINE)


@dataclass(frozen=True)
class ReadContext:
    """get_context as the model reads it."""

    text: str  # what `content` carries: the context, its size in the opening tag
    structured: dict[str, object]  # what `structuredContent` carries
    estimated_tokens: int
    omitted_messages: int
    stats: ContextStats


def read_context(
    snapshot: ContextSnapshot,
    session_id: str,
    token_budget: int,
    tokens: TokenCounter,
    passages: Sequence[Passage] = (),
) -> ReadContext:
    """get_context for a model: composed from stored counts, counted whole, and composed
    again while it is over the budget: with less room for archives first (the messages are
    what the agent asked for last), then for messages; or larger, once, when the stored
    counts left much of it unused (what the model reads costs less than they say: its
    blank lines and notes are gone)."""
    messages = active_messages(snapshot)
    speakers = _speakers(snapshot.archives)
    room = token_budget - _FRAMING_TOKENS  # for messages and archives
    archive_cut = 0  # taken from the archives' share
    best: ReadContext | None = None
    grown = False
    step = _STEP_TOKENS
    for _ in range(_TRIES):
        result, worst, archive_tokens = _compose(
            snapshot, messages, speakers, passages, session_id, room, archive_cut, tokens
        )
        if worst <= token_budget:
            best = result
            complete = not result.omitted_messages and not result.stats.droppedArchives
            if grown or complete or token_budget - worst < _GROW_TOKENS:
                return result
            grown = True
            room += token_budget - worst
            continue
        if best is not None:  # grown too far: the last that fitted
            return best
        # Less room than the last try by what it was over, and by a step that doubles (the
        # same items picked again would be over again): from the archives while they have it.
        over = max(worst - token_budget, step)
        step *= 2
        if archive_tokens > 0:
            archive_cut += min(over, archive_tokens)
        else:
            room -= over
        if room <= 0:
            break
    return best or _nothing_fits(snapshot, messages, tokens)


def _nothing_fits(snapshot: ContextSnapshot, messages: list[StoredMessage], tokens: TokenCounter) -> ReadContext:
    """A budget too small for any message or summary: what there is, in a line."""
    stats = archive_stats(snapshot.archives, pick_archives(snapshot.archives, 0, for_model=True), 0)
    total = stats.totalArchives
    inner = (
        f"(token_budget too small to show any of {len(messages)} messages not yet summarised "
        f"and {plural(total, 'archive')})"
    )
    structured: dict[str, object] = {"context": f"<context>{inner}</context>", "estimatedTokens": 0}
    estimated = tokens.count(json.dumps(structured, ensure_ascii=False))
    structured["estimatedTokens"] = estimated
    return ReadContext(f'<context tokens="{estimated}">{inner}</context>', structured, estimated, len(messages), stats)


def _compose(
    snapshot: ContextSnapshot,
    messages: list[StoredMessage],
    speakers: frozenset[str],
    passages: Sequence[Passage],
    session_id: str,
    room: int,
    archive_cut: int,
    tokens: TokenCounter,
) -> tuple[ReadContext, int, int]:
    """The context composed from stored counts for `room` tokens of messages and summaries
    (the archives' share `archive_cut` less), the most tokens a host hands the model for
    it, counted whole, and the tokens its archive payload was estimated at."""
    remaining = room
    shown: list[str] = []  # message lines, newest first
    current_day = ""
    kept = 0
    prefixes: dict[str, int] = {}
    for stored in reversed(messages):
        line = _message_line(stored)
        prefix = line[: line.index(": ") + 2]
        if prefix not in prefixes:
            prefixes[prefix] = tokens.count(prefix)
        # The stored count is the text's and a chat message's overhead; the line adds its time and role.
        cost = stored.tokens - MESSAGE_OVERHEAD_TOKENS + prefixes[prefix] + 1
        said = _day_of(stored)
        if said != current_day:
            cost += _DAY_LINE_TOKENS
        if cost > remaining:
            if not shown and remaining > prefixes[prefix] + _CUT_NOTE_TOKENS + _DAY_LINE_TOKENS:
                # The newest message alone is too big: its start, rather than nothing at all.
                room_for_text = remaining - prefixes[prefix] - _CUT_NOTE_TOKENS - _DAY_LINE_TOKENS
                shown.append(_cut_line(line, prefix, room_for_text, tokens))
                current_day = said
                kept += 1
                remaining = 0
            break
        remaining -= cost
        if said != current_day and shown:
            shown.append(current_day)
        current_day = said
        shown.append(line)
        kept += 1
    if shown:
        shown.append(current_day)
    omitted = len(messages) - kept
    archive_room = max(0, remaining - archive_cut)
    relevant = choose_passages(passages, int(archive_room * PASSAGE_SHARE) - _PASSAGES_FRAMING_TOKENS)
    passage_tokens = sum(p.tokens for p in relevant) + (_PASSAGES_FRAMING_TOKENS if relevant else 0)
    archive_room -= passage_tokens
    pick = pick_archives(snapshot.archives, archive_room, for_model=True, abstract_overhead=_ABSTRACT_LINE_TOKENS)
    _cut_abstract_into(pick, snapshot.archives, archive_room - pick.tokens, tokens)
    active_tokens = sum(m.tokens for m in messages[omitted:])
    stats = archive_stats(snapshot.archives, pick, active_tokens)
    stats.archiveTokens += passage_tokens

    body = (
        _archive_blocks(pick, speakers)
        + _passage_block(relevant)
        + _message_block(shown[::-1], omitted)
        + [_closing(stats, pick)]
    )
    inner = "\n".join(block for block in body if block)
    text, structured, estimated, worst = _settle(session_id, inner, tokens)
    return ReadContext(text, structured, estimated, omitted, stats), worst, pick.tokens + passage_tokens


def _cut_line(line: str, prefix: str, room: int, tokens: TokenCounter) -> str:
    head = tokens.head(line[len(prefix) :], room)
    return f"{prefix}{head}… (cut to fit: the whole message is in the session's messages.jsonl resource)"


def _cut_abstract_into(pick: ArchivePick, archives: list[ArchiveRow], left: int, tokens: TokenCounter) -> None:
    """Spend what the archive payload left on the newest archive not shown, its abstract cut
    after a sentence ("12 messages on 8 May 2023. Caroline: ...; Melanie: ...") to fit: the
    renderings come at steps, and the step above would not have fitted."""
    left -= _ABSTRACT_LINE_TOKENS
    if pick.latest is None or left < _ABSTRACT_LINE_TOKENS:
        return
    shown = pick.represented
    for archive in reversed(archives):
        if archive.status != "completed" or archive.number in shown or archive.number > pick.latest.number:
            continue
        pieces = re.split(r"(?<=[.;])\s", archive.abstract)
        for end in range(len(pieces) - 1, 0, -1):
            cut = " ".join(pieces[:end]).rstrip(";") + "…"
            cost = tokens.count(cut)
            if cost <= left:
                pick.abstracts.append(replace(archive, abstract=cut, abstract_tokens=cost))
                pick.abstracts.sort(key=lambda a: -a.number)
                pick.tokens += cost + _ABSTRACT_LINE_TOKENS
                return
        return  # the newest not shown does not fit even cut: an older one would be no better


def _settle(session_id: str, inner: str, tokens: TokenCounter) -> tuple[str, dict[str, object], int, int]:
    """The text, the structured content, the estimate they both carry, and the most tokens
    any form costs.

    The estimate is the structured content's count as JavaScript's JSON.stringify writes
    it (what Claude Code and VS Code hand the model). The text costs a little less: a line
    that ends in punctuation shares a token with its newline ("?\\n"), which JSON escapes
    apart; on a context of short lines that is a few percent. (Python's json.dumps escapes
    non-ASCII as \\uXXXX by default, which no host sends a model: a Cyrillic line costs four
    times its tokens so. The bound is on what hosts send: the text and the JSON as written.)"""

    def forms(estimated: int) -> tuple[str, dict[str, object]]:
        text = f'<context session="{session_id}" tokens="{estimated}">\n{inner}\n</context>'
        context = f'<context session="{session_id}">\n{inner}\n</context>'
        return text, {"context": context, "estimatedTokens": estimated}

    # A number's tokens depend on its digits only: count with a stand-in of the right width.
    estimated = 10 ** (len(str(len(inner) // 4)) - 1)
    for _ in range(3):
        text, structured = forms(estimated)
        counted = tokens.count(json.dumps(structured, ensure_ascii=False))
        if len(str(counted)) == len(str(estimated)):
            break
        estimated = 10 ** (len(str(counted)) - 1)
    text, structured = forms(counted)
    worst = max(counted, tokens.count(text))
    return text, structured, counted, worst


def _day_of(stored: StoredMessage) -> str:
    said = parse_day(stored.message.created_at)
    return day(said) if said else stored.message.created_at[:10]


def _message_line(stored: StoredMessage) -> str:
    return message_line(stored.message, stored.message.created_at[11:16])  # its day is a line above


def _speakers(archives: list[ArchiveRow]) -> frozenset[str]:
    """Who speaks in the session, as the built-in abstracts name them ("12 messages on 8 May
    2023. Caroline: ...; Melanie: ...")."""
    return frozenset(name for a in archives for name in _ABSTRACT_SPEAKER.findall(a.abstract))


@lru_cache(maxsize=64)
def _run_break(speakers: frozenset[str]) -> re.Pattern[str] | None:
    """A line break before a line that opens with one of `speakers`, after a sentence."""
    if not speakers:
        return None
    names = "|".join(sorted(map(re.escape, speakers)))
    return re.compile(rf"(?<=[.!?…\"')])\n(?=(?:{names}): )")


def _archive_blocks(pick: ArchivePick, speakers: frozenset[str]) -> list[str]:
    blocks = []
    if pick.overview is not None and pick.latest is not None:
        overview = _HEADING_DOT.sub(r"\1, ", _FOR_FILES.sub("", pick.overview.text.strip() + "\n")).strip()
        # A section's speaker runs share a paragraph, each still named: a newline after a
        # sentence costs JSON a token. Only the speakers' lines: an agent's "Owner: Alice" stays a line.
        if (run_break := _run_break(speakers)) is not None:
            overview = run_break.sub(" ", overview)
        # An overview of ours names each archive in its sections; one in an agent's own words is named here.
        sections = shown_archives(pick.overview.text, 0) != {0}
        tag = "<overview>" if sections else f'<overview of="{archive_id(pick.latest.number)} and before">'
        blocks.append(f"{tag}\n{overview}\n</overview>")
    if pick.abstracts:
        lines = "\n".join(f"- {archive_id(a.number)}: {a.abstract}" for a in pick.abstracts)
        heading = "other archives, newest first" if pick.overview is not None else "archives, newest first"
        blocks.append(f"<abstracts {heading}>\n{lines}\n</abstracts>")
    return blocks


def _passage_block(passages: list[Passage]) -> list[str]:
    if not passages:
        return []
    lines = "\n".join(p.text for p in passages)
    return [f"<archived relevant-to-query best-first>\n{lines}\n</archived>"]


def _message_block(lines: list[str], omitted: int) -> list[str]:
    if not lines and not omitted:
        return []
    note = (
        f"({plural(omitted, 'older message')} not shown: a larger token_budget shows more; "
        "once committed, expand_archive reads them)\n"
        if omitted
        else ""
    )
    return [f"<messages not-yet-summarised>\n{note}" + "\n".join(lines) + "\n</messages>"]


def _closing(stats: ContextStats, pick: ArchivePick) -> str:
    if not stats.totalArchives:
        return ""
    failed = stats.failedArchives
    in_overview = len(pick.shown)
    parts = [f"{in_overview} in the overview"] if pick.overview is not None else []
    parts += [f"{len(pick.abstracts)} as abstracts"] if pick.abstracts else []
    parts += [f"{stats.droppedArchives} left out"] if stats.droppedArchives else []
    parts += [f"{failed} failed: retry_archive"] if failed else []
    total = plural(stats.totalArchives, "archive")
    return f"{total} ({', '.join(parts) or 'none shown'}); expand_archive reads one in full."
