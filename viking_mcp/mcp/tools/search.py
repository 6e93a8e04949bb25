"""Recall over MCP: search everything remembered (engine/recall.py)."""

from __future__ import annotations

from typing import Annotated

from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from viking_mcp.mcp.replies import Composed, Lines, capped, clip, max_result_tokens
from viking_mcp.mcp.state import READ_ONLY, Ctx, caller, tool
from viking_mcp.models import MAX_COUNT, SearchHit, SearchKind, SearchLimit, SearchQuery

# The query, repeated at the top of the results.
QUERY_TOKENS = 50
# What the model reads of search's results when it gives no token_budget; and the least it
# may ask for (a result has a heading and each passage a line of its own around its text).
DEFAULT_SEARCH_TOKENS = 2000
LEAST_SEARCH_TOKENS = 200
# The heading and each result's score and session, beside the passages the engine fits.
_HEADING_TOKENS = 60
_PER_RESULT_TOKENS = 12


class SearchRead(BaseModel):
    """search over MCP: the passages as lines (the same text `content` carries)."""

    results: str = Field(
        description="Best match first: a line with its score (0..1) and uri, then the passage (speaker, date)."
    )


@tool("Search", READ_ONLY)
def search(
    ctx: Ctx,
    query: Annotated[SearchQuery, Field(description="What to look for, in plain words (e.g. the question).")],
    session_id: Annotated[
        str | None, Field(description="Only this session; omit to search every session you may see.", max_length=128)
    ] = None,
    kinds: Annotated[
        list[SearchKind] | None,
        Field(
            description="What to search: message (live and archived), archive (summaries), memory (long-term). "
            "Default: all three; with a session_id, its messages and archives.",
            min_length=1,
        ),
    ] = None,
    since: Annotated[
        str | None, Field(description="Only what was said at or after this ISO 8601 date or time.")
    ] = None,
    until: Annotated[
        str | None, Field(description="Only what was said at or before this ISO 8601 date or time.")
    ] = None,
    limit: Annotated[SearchLimit, Field(description="At most this many results.")] = 10,
    token_budget: Annotated[
        int,
        Field(
            description="The most tokens this result may cost you, everything included.",
            ge=LEAST_SEARCH_TOKENS,
            le=MAX_COUNT,
        ),
    ] = DEFAULT_SEARCH_TOKENS,
) -> Annotated[CallToolResult, SearchRead]:
    """Find again what was said, summarised or remembered: messages of this or every session
    (archived ones too), archive summaries, long-term memories. Best first, each with a score
    (0..1: the share of your words it holds, rare words weighing most), its uri, and a passage:
    the message with its speaker and date (relative dates resolved), with the question it
    answers or the answer it got. Nothing matches: no results. expand_archive reads the
    archive a passage names."""
    engine, actor = caller(ctx)
    # The passages' share: what the heading and the results' first words leave (at least half).
    passages = max(token_budget // 2, token_budget - _HEADING_TOKENS - _PER_RESULT_TOKENS * min(limit, 10))
    found = engine.search(query, session_id, kinds, since, until, limit, passages, actor=actor).results
    cap = min(token_budget, max_result_tokens(ctx))
    return capped(lambda lines: _results(query, found, session_id is None, lines), engine.tokens, cap)


def _results(query: str, found: list[SearchHit], everywhere: bool, lines: Lines) -> Composed:
    asked = clip(query, QUERY_TOKENS, lines.tokens, "")
    if not found:
        lines.put(f"(nothing matches {asked!r})")
    else:
        lines.put(f"best first for {asked!r} (score, then the passage):")
        lines.add_items(found, lambda hit: _result(hit, everywhere), _cut_note)
    return lines.text, {"results": lines.text}


def _result(hit: SearchHit, everywhere: bool) -> str:
    """A result as the model reads it: the passage names its archive (expand_archive reads it)
    and, searching every session, its session; a memory's uri is where it is read whole. (A
    message's uri is long, 35 tokens: what the passage says of it is enough to find it.)"""
    where = f"session {hit.session_id} " if everywhere and hit.session_id is not None else ""
    where += f"{hit.uri} " if hit.kind == "memory" else ""
    return f"{hit.score:.2f} {where}{hit.text}"


def _cut_note(hit: SearchHit) -> str:
    if hit.kind == "memory":
        return "(cut short: read it at its uri)"
    return "(cut short: expand_archive reads the archive it names)" if hit.archive_id else "(cut short)"
