"""What a tool hands the model: one compact text, the same in both parts of the result, bounded.

Hosts hand the model different parts of a tool result: Claude Code and VS Code pass
`JSON.stringify(structuredContent)` and drop the `content` text whenever structured content
is present; other hosts read `content` only. So a tool whose result can grow answers with
one compact text (lines, not indented JSON) as `content`, and as `structuredContent` that
same text beside the few typed fields a program pages with (`next_offset`, `next_cursor`).
Either way the model reads the same lines, and a program still pages without parsing them.

Every form stays within the server's cap (VIKING_MCP_MAX_RESULT_TOKENS), counted with the
server's tokenizer on the finished result: the text, and the structured content as JSON
as hosts write it (JavaScript's JSON.stringify, non-ASCII kept).
A tool composes a page with `Lines` (lines go in while they fit; the first item of a page
is cut rather than left out, so that every page moves on), and `capped` composes it again
smaller while a finished form is over the cap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TypeVar

from mcp.types import CallToolResult, TextContent

from viking_mcp.mcp.state import Ctx
from viking_mcp.tokens import TokenCounter

# The closing line and the JSON around the text (its key, the paging fields), paid for up front.
_FRAMING_TOKENS = 100
# Composing again while a form is over the cap (rare: the framing is paid for up front).
_TRIES = 4
# The least a try over the cap takes from the room of the next.
_STEP_TOKENS = 16
# Even with no room left, a cut item keeps this much, so that a page never shows nothing.
_LEAST_TOKENS = 40

Composed = tuple[str, dict[str, object]]
T = TypeVar("T")


class _TooLong(Exception):
    """Raised by uncounted `Lines` when a line does not fit whole: count, then."""


def max_result_tokens(ctx: Ctx) -> int:
    """The server's cap on one tool result (VIKING_MCP_MAX_RESULT_TOKENS)."""
    return ctx.request_context.lifespan_context.settings.max_result_tokens


def reply(text: str, structured: dict[str, object]) -> CallToolResult:
    """A tool result whose `content` is `text` and whose `structuredContent` is `structured`."""
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def result_tokens(text: str, structured: dict[str, object], tokens: TokenCounter) -> int:
    """The most tokens a host hands the model for this result: the text, or the structured
    content as JSON as hosts write it (JSON.stringify keeps non-ASCII; Python's json.dumps
    would escape it as \\uXXXX, a Cyrillic word at four times its tokens, which no host sends)."""
    return max(tokens.count(text), tokens.count(json.dumps(structured, ensure_ascii=False)))


def capped(compose: Callable[[Lines], Composed], tokens: TokenCounter, cap: int) -> CallToolResult:
    """The result `compose` makes of the lines it is given room for, within `cap` in every form.

    First without the tokenizer: no form of a result costs more tokens than its JSON has
    bytes (a token is at least one byte), so a result that is that short is whole and
    within the cap. Otherwise the lines are counted, and the room
    made smaller while the finished result is over."""
    try:
        text, structured = compose(Lines(tokens, cap, counted=False))
        if len(json.dumps(structured, ensure_ascii=False).encode()) <= cap:
            return reply(text, structured)
    except _TooLong:
        pass
    room = cap - _FRAMING_TOKENS
    for attempt in range(_TRIES):
        lines = Lines(tokens, room)
        text, structured = compose(lines)
        over = result_tokens(text, structured, tokens) - cap
        if over <= 0:
            return reply(text, structured)
        # Less room than these lines took, so that the next try holds less; more so each time.
        # Not by `over` alone: the closing lines are put whatever room is left, so the items may
        # have left more room unused than a small overshoot takes away, and the same items
        # would come back (a cursor of a few tokens more sent every try to the last resort).
        room = min(room, room - lines.room) - max(over, _STEP_TOKENS) * 4**attempt
    return reply(*compose(Lines(tokens, 0)))  # the heading, one item cut short, the closing line


def minute(moment: str) -> str:
    """A stored time (ISO 8601, UTC) as a model reads it: `YYYY-MM-DD HH:MM`."""
    return f"{moment[:10]} {moment[11:16]}"


def clip(text: str, most: int, tokens: TokenCounter, note: str) -> str:
    """`text`, or its start within `most` tokens followed by `… note` when it is longer."""
    cut = tokens.head(text, most)
    return text if len(cut) == len(text) else f"{cut.rstrip()} … {note}"


class Lines:
    """The lines of one page, added in order while they fit `room` tokens.

    A line costs what it costs in the largest form a host may hand over: inside a JSON
    string, with its newline. The sum is an estimate (`capped` counts
    the finished result); it is rarely below the whole, whose joins merge a token or two.
    """

    def __init__(self, tokens: TokenCounter, room: int, *, counted: bool = True) -> None:
        self.tokens = tokens
        self.room = room
        self.lines: list[str] = []
        # Not counted: a line costs its characters as JSON (more than its tokens), and a
        # line that does not fit whole ends the try (`capped` then counts).
        self.counted = counted
        self._last: tuple[str, int] | None = None  # a line too long to add is costed again to cut it

    def cost(self, line: str) -> int:
        if not self.counted:
            return len(json.dumps(line, ensure_ascii=False).encode()) - 1  # bytes: quotes out, its newline (`\\n`) in
        if self._last is None or self._last[0] is not line:
            self._last = (line, self.tokens.count(json.dumps(line, ensure_ascii=False)[1:-1]) + 1)
        return self._last[1]

    def put(self, line: str) -> None:
        """Add `line` whatever it costs (a heading, a closing line)."""
        self.room -= self.cost(line)
        self.lines.append(line)

    def add(self, line: str) -> bool:
        """Add `line` if it fits what is left; say whether it did."""
        cost = self.cost(line)
        if cost > self.room:
            if not self.counted:
                raise _TooLong
            return False
        self.room -= cost
        self.lines.append(line)
        return True

    def add_cut(self, line: str, most: int, note: str) -> bool:
        """Add `line`, cut to `most` tokens (or what is left, if less) and followed by `note`
        when it is longer; say whether it was cut."""
        noted = self.cost(note)
        most = max(min(most, self.room), noted + _LEAST_TOKENS)
        if self.cost(line) <= most:
            self.put(line)
            return False
        if not self.counted:
            raise _TooLong
        budget = wanted = most - noted - 1  # the cut line, with its " …"
        for _ in range(_TRIES):
            cut = self.tokens.head(line, max(wanted, 1))
            over = self.cost(cut) - budget
            if over <= 0:
                break
            wanted -= over
        self.put(f"{cut.rstrip()} …")
        self.put(note)
        return True

    def add_items(self, items: Iterable[T], line: Callable[[T], str], cut_note: Callable[[T], str]) -> int:
        """A line for each item while they fit; the first is cut short (with its note) rather
        than left out, so that the next page starts after it. Returns how many were shown."""
        shown = 0
        for item in items:
            text = line(item)
            if self.add(text):
                shown += 1
                continue
            if not shown:
                self.add_cut(text, self.room, cut_note(item))
                shown = 1
            break
        return shown

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
