"""Context assembly: what get_context returns for a session and a token budget.

Pure: it reads nothing and counts no tokens. Every count it adds was stored when the
message was added or the archive summarised, so assembling a context never
re-tokenizes history.

The rules (OpenViking 0.3.x semantics, see the contract's section 4):
- messages: every message of archives after the latest completed one (Phase 2 not done
  yet, or failed), then the live messages, oldest first; always returned.
- the budget left after those messages goes to the latest completed archive's overview
  (the longest stored rendering that fits), then to the abstracts of the earlier
  completed archives, newest first, stopping at the first that does not fit, so older
  ones are dropped first.
"""

from __future__ import annotations

from viking_mcp.models import ArchiveAbstract, ContextStats, Message, SessionContext, archive_id, message_text
from viking_mcp.store.base import ArchiveRow, ContextSnapshot


def assemble_context(snapshot: ContextSnapshot, token_budget: int) -> SessionContext:
    archives = snapshot.archives
    latest = next((a for a in reversed(archives) if a.status == "completed"), None)
    latest_number = latest.number if latest else 0

    # Messages of pending and failed archives after the latest completed one stay visible;
    # a skipped archive's messages were let go on purpose (expand_archive still has them).
    skipped = [a for a in archives if a.status == "skipped" and a.number > latest_number]
    messages: list[Message] = []
    active_tokens = 0
    for stored in snapshot.messages:
        if any(a.first_seq <= stored.seq <= a.last_seq for a in skipped):
            continue
        messages.append(stored.message)
        active_tokens += stored.tokens

    remaining = max(0, token_budget - active_tokens)
    overview, overview_tokens, overview_included = "", 0, False
    if latest is not None:
        fitting = next((r for r in latest.overview_renderings if r.tokens <= remaining), None)
        if fitting is not None:
            overview, overview_tokens, overview_included = fitting.text, fitting.tokens, True
            remaining -= fitting.tokens

    abstracts: list[ArchiveAbstract] = []
    abstract_tokens = 0
    earlier: list[ArchiveRow] = [a for a in reversed(archives) if a.status == "completed" and a.number < latest_number]
    for archive in earlier:
        if archive.abstract_tokens > remaining:
            break
        abstracts.append(ArchiveAbstract(archive_id=archive_id(archive.number), abstract=archive.abstract))
        remaining -= archive.abstract_tokens
        abstract_tokens += archive.abstract_tokens

    completed = sum(1 for a in archives if a.status in ("completed", "skipped"))
    failed = sum(1 for a in archives if a.status == "failed")
    represented = len(abstracts) + (1 if overview_included else 0)
    archive_tokens = overview_tokens + abstract_tokens
    return SessionContext(
        latest_archive_id=archive_id(latest.number) if latest else None,
        latest_archive_overview=overview,
        pre_archive_abstracts=abstracts,
        messages=messages,
        estimatedTokens=active_tokens + archive_tokens,
        stats=ContextStats(
            totalArchives=completed + failed,
            includedArchives=len(abstracts),
            droppedArchives=completed - represented,
            failedArchives=failed,
            activeTokens=active_tokens,
            archiveTokens=archive_tokens,
        ),
    )


def render_context_text(session_id: str, context: SessionContext) -> str:
    """The assembled context as one text an agent can read back into its window."""
    blocks = [f'<session id="{session_id}" estimated_tokens="{context.estimatedTokens}">']
    if context.latest_archive_overview:
        blocks.append(
            f'<archive-overview archive_id="{context.latest_archive_id}">\n'
            f"{context.latest_archive_overview.strip()}\n</archive-overview>"
        )
    if context.pre_archive_abstracts:
        lines = "\n".join(f"- {a.archive_id}: {a.abstract}" for a in context.pre_archive_abstracts)
        blocks.append(f"<earlier-archives newest-first>\n{lines}\n</earlier-archives>")
    if context.messages:
        lines = "\n".join(f"[{m.created_at[:16]}] {m.role}: {message_text(m)}" for m in context.messages)
        blocks.append(f"<messages>\n{lines}\n</messages>")
    if context.stats.totalArchives:
        blocks.append(
            "Any archive can be read in full with expand_archive(session_id, archive_id)."
            + (
                f" {context.stats.failedArchives} archive(s) failed summarising: retry_archive."
                if context.stats.failedArchives
                else ""
            )
        )
    blocks.append("</session>")
    return "\n".join(blocks)
