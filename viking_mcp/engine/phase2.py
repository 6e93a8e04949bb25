"""Commit Phase 2: summarise an archive and mark it done, in the background.

Summaries come from, in order: what the calling agent passed to `commit` (the host
model is the best summariser and costs nothing extra), then the configured summariser
(the offline extractive one by default). Memory extraction plugs in through
`MemoryExtractor`; until one is configured, the archive's memory diff is empty.

Everything Phase 2 produces is written in one transaction that also sets the `.done`
marker, so a crash at any point leaves either nothing or everything; the task is then
claimed again (its owner is gone) and Phase 2 runs from the start.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from viking_mcp.models import MEMORY_CATEGORIES, CommitTaskResult, archive_id, archive_uri
from viking_mcp.store.base import OverviewRendering, Phase2Output, Store, TaskRow
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary, Summariser
from viking_mcp.tokens import TokenCounter

logger = logging.getLogger(__name__)


class MemoryExtractor(Protocol):
    """Turns an archive into long-term memory changes (adds, updates, deletes)."""

    def extract(self, archive: ArchiveInput, summary: ArchiveSummary) -> dict[str, Any]: ...


def empty_memory_diff(archive: str) -> dict[str, Any]:
    return {"archive_id": archive, "adds": [], "updates": [], "deletes": []}


def count_memories(diff: dict[str, Any]) -> dict[str, int]:
    counts = dict.fromkeys(MEMORY_CATEGORIES, 0)
    for change in [*diff.get("adds", []), *diff.get("updates", [])]:
        category = change.get("category")
        if category in counts:
            counts[category] += 1
    return counts


def summarise_archive(archive: ArchiveInput, supplied: dict[str, Any], summariser: Summariser) -> ArchiveSummary:
    """The agent's own abstract and overview where given; the summariser fills the rest."""
    abstract = (supplied.get("abstract") or "").strip()
    overview = (supplied.get("overview") or "").strip()
    if abstract and overview:
        return ArchiveSummary(abstract=abstract, overviews=[overview])
    generated = summariser.summarise(archive)
    return ArchiveSummary(
        abstract=abstract or generated.abstract,
        overviews=[overview] if overview else generated.overviews,
        llm_prompt_tokens=generated.llm_prompt_tokens,
        llm_completion_tokens=generated.llm_completion_tokens,
    )


def run_phase2(
    store: Store,
    task: TaskRow,
    summariser: Summariser,
    tokens: TokenCounter,
    extractor: MemoryExtractor | None,
    now: str,
) -> bool:
    """Run Phase 2 for a claimed task. Returns True when the archive was completed.

    A failure of the summariser or extractor marks the archive and task failed with the
    reason (the raw messages stay, and retry_archive queues it again). A storage failure
    gives the task back to the queue.
    """
    assert task.archive_number is not None
    name = archive_id(task.archive_number)
    archive = store.get_archive(task.session_id, task.archive_number)
    if archive is None:
        store.fail_phase2(task, f"{name} no longer exists (session deleted?)", now)
        return False
    messages = [
        m.message for m in store.read_messages(task.session_id, archive.first_seq - 1, archive.last_seq, 0, None)
    ]
    archive_input = ArchiveInput(
        session_id=task.session_id,
        archive_id=name,
        messages=messages,
        previous_overview=store.previous_overview(task.session_id, task.archive_number),
    )
    try:
        summary = summarise_archive(archive_input, archive.supplied, summariser)
        diff = extractor.extract(archive_input, summary) if extractor else empty_memory_diff(name)
    except Exception as exc:  # a summariser or extractor failure is the archive's, not the worker's
        logger.warning("Phase 2 of %s/%s failed: %s", task.session_id, name, exc, exc_info=True)
        store.fail_phase2(task, f"{type(exc).__name__}: {exc}", now)
        return False
    renderings = [OverviewRendering(tokens=tokens.count(text), text=text) for text in summary.overviews]
    renderings.sort(key=lambda r: -r.tokens)
    memories = count_memories(diff)
    result = CommitTaskResult(
        session_id=task.session_id,
        archive_id=name,
        archive_uri=archive_uri(task.session_id, task.archive_number),
        memories_extracted={**memories, "total": sum(memories.values())},
        active_count_updated=0,
    )
    output = Phase2Output(
        abstract=summary.abstract,
        abstract_tokens=tokens.count(summary.abstract),
        overview_renderings=renderings,
        memory_diff=diff,
        memories_extracted=memories,
        result=result.model_dump(),
        llm_prompt_tokens=summary.llm_prompt_tokens,
        llm_completion_tokens=summary.llm_completion_tokens,
    )
    return store.finish_phase2(task, output, now)
