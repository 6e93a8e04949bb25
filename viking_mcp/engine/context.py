"""Context assembly: what get_context returns for a session and a token budget.

Pure: it reads nothing and counts no tokens. Every count it adds was stored when the
message was added or the archive summarised, so assembling a context never
re-tokenizes history. (`engine/reading.py` renders it for a model, and counts that.)

The rules (OpenViking 0.3.x semantics, see the contract's section 4):
- messages: every message of archives after the latest completed one (Phase 2 not done
  yet, or failed), then the live messages, oldest first; always returned.
- the budget left after those messages goes to the latest completed archive's overview
  (the longest stored rendering that fits), then to abstracts, newest first: as the
  seed's example has it, the latest archive's own, then the earlier ones, older ones
  dropped first. For a model (MCP, `engine/reading.py`), an archive the chosen rendering
  has a section for is not given an abstract as well: that budget goes to the archives
  not shown, so that the oldest facts are not the first lost, and an abstract that does
  not fit is skipped, so that a smaller, older one may still fit.
- with a query (`passages`: archived messages recall found for it, best first), up to
  PASSAGE_SHARE of what the messages leave goes to them first, each whole or not at
  all; what they do not use goes to the overview and abstracts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from viking_mcp.engine.recall import Passage
from viking_mcp.models import ArchiveAbstract, ContextStats, RelevantPassage, SessionContext, archive_id
from viking_mcp.store.base import ArchiveRow, ContextSnapshot, OverviewRendering, StoredMessage
from viking_mcp.summarize.extractive import ARCHIVE_SECTION

# With a query, the passages' share of what the messages leave (benchmarks/results/recall.md).
PASSAGE_SHARE = 0.8


def choose_passages(passages: Sequence[Passage], room: int, overhead: int = 0) -> list[Passage]:
    """The passages, best first, that fit `room` together, each costing `overhead` beside its
    tokens; one that does not fit is skipped, so that a shorter one may still fit."""
    chosen = []
    for passage in passages:
        cost = passage.tokens + overhead
        if cost <= room:
            chosen.append(passage)
            room -= cost
    return chosen


def shown_archives(rendering: str, own: int) -> set[int]:
    """The archives an overview rendering has a section for ("## archive_007 · 3 May 2023";
    an agent's own "## archive_001 notes" is not one); one without sections (written by an
    agent or an LLM, in its own words) shows the archive it belongs to."""
    return {int(n) for n in ARCHIVE_SECTION.findall(rendering)} or {own}


@dataclass
class ArchivePick:
    """The archive payload chosen for a budget."""

    latest: ArchiveRow | None
    overview: OverviewRendering | None = None
    shown: set[int] = field(default_factory=set)  # archives the overview has a section for
    abstracts: list[ArchiveRow] = field(default_factory=list)  # newest first
    tokens: int = 0

    @property
    def represented(self) -> set[int]:
        return self.shown | {a.number for a in self.abstracts}


def active_messages(snapshot: ContextSnapshot) -> list[StoredMessage]:
    """The messages not yet summarised: those of archives after the latest completed one
    (pending or failed), then the live ones. A skipped archive's messages were let go on
    purpose (expand_archive still has them)."""
    latest = latest_completed(snapshot.archives)
    latest_number = latest.number if latest else 0
    skipped = [a for a in snapshot.archives if a.status == "skipped" and a.number > latest_number]
    if not skipped:
        return snapshot.messages
    return [m for m in snapshot.messages if not any(a.first_seq <= m.seq <= a.last_seq for a in skipped)]


def latest_completed(archives: list[ArchiveRow]) -> ArchiveRow | None:
    return next((a for a in reversed(archives) if a.status == "completed"), None)


def pick_archives(
    archives: list[ArchiveRow], budget: int, *, for_model: bool, abstract_overhead: int = 0
) -> ArchivePick:
    """The latest overview's longest rendering within `budget`, then abstracts, newest first,
    in what is left, each costing `abstract_overhead` beside its text (the line a rendering
    puts it on).

    As the seed has it (HTTP, embedded): the latest archive's own abstract first, then the
    earlier ones, stopping at the first that does not fit. For a model (`for_model`): only
    the abstracts of archives the overview has no section for, so none is shown twice, and
    one that does not fit is skipped, so that a smaller, older one may still fit."""
    latest = latest_completed(archives)
    pick = ArchivePick(latest)
    if latest is None:
        return pick
    remaining = budget
    fitting = next((r for r in latest.overview_renderings if r.tokens <= remaining), None)
    if fitting is not None:
        pick.overview, pick.shown = fitting, shown_archives(fitting.text, latest.number)
        remaining -= fitting.tokens
    earlier = [a for a in reversed(archives) if a.status == "completed" and a.number < latest.number]
    candidates = [a for a in earlier if a.number not in pick.shown] if for_model else [latest, *earlier]
    for archive in candidates:
        cost = archive.abstract_tokens + abstract_overhead
        if archive.abstract and cost <= remaining:
            pick.abstracts.append(archive)
            remaining -= cost
        elif not for_model:
            break
    pick.tokens = budget - remaining
    return pick


def archive_stats(archives: list[ArchiveRow], pick: ArchivePick, active_tokens: int) -> ContextStats:
    completed = [a.number for a in archives if a.status in ("completed", "skipped")]
    failed = sum(1 for a in archives if a.status == "failed")
    return ContextStats(
        totalArchives=len(completed) + failed,
        includedArchives=len(pick.abstracts),
        droppedArchives=len(set(completed) - pick.represented),
        failedArchives=failed,
        activeTokens=active_tokens,
        archiveTokens=pick.tokens,
    )


def assemble_context(snapshot: ContextSnapshot, token_budget: int, passages: Sequence[Passage] = ()) -> SessionContext:
    """The context as the HTTP API and the embedded client return it: typed fields, every
    active message, the passages for a query and the archive payload within what the
    messages leave of the budget."""
    messages = active_messages(snapshot)
    active_tokens = sum(m.tokens for m in messages)
    left = max(0, token_budget - active_tokens)
    relevant = choose_passages(passages, int(left * PASSAGE_SHARE))
    passage_tokens = sum(p.tokens for p in relevant)
    pick = pick_archives(snapshot.archives, left - passage_tokens, for_model=False)
    stats = archive_stats(snapshot.archives, pick, active_tokens)
    stats.archiveTokens += passage_tokens
    return SessionContext(
        latest_archive_id=archive_id(pick.latest.number) if pick.latest else None,
        latest_archive_overview=pick.overview.text if pick.overview else "",
        pre_archive_abstracts=[
            ArchiveAbstract(archive_id=archive_id(a.number), abstract=a.abstract) for a in pick.abstracts
        ],
        relevant_passages=[
            RelevantPassage(
                archive_id=archive_id(p.archive_number or 0),
                uri=p.uri,
                created_at=p.created_at,
                score=round(p.score, 4),
                text=p.text,
            )
            for p in relevant
        ],
        messages=[m.message for m in messages],
        estimatedTokens=active_tokens + pick.tokens + passage_tokens,
        stats=stats,
    )
