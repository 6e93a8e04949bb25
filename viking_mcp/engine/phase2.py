"""Commit Phase 2: summarise an archive, extract its memories, and mark it done.

Summaries and memories come from, in order:
1. what the calling agent passed to `commit` (`abstract`, `overview`, `memories`):
   stored verbatim, no model needed (the host model is the best summariser and costs
   the user nothing extra);
2. the configured LLM endpoint, if any (`VIKING_MCP_LLM_*`), for whatever the agent
   did not supply;
3. the offline default: the extractive summariser and the rule-based extractor.
An overview the agent or the LLM wrote is the archive's `.overview.md` as written; the
extractive summariser renders it shorter for tight budgets, and longer, up to the overview
bound, after the best of the earlier archives' sections it carries forward, so that a
short overview does not leave a large budget unused and the built-in history goes on
across commits whose overview the agent wrote.
Tool and skill usage statistics are always counted from the archive itself. What an LLM
writes is held to the limits an agent's own commit is held to (`llm_output`).

Everything Phase 2 produces (summaries, memory writes, the memory diff, active counts)
is written in one transaction that also sets the `.done` marker, so a crash at any point
leaves either nothing or everything; the task is then claimed again and Phase 2 runs
from the start.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from viking_mcp.config import Limits
from viking_mcp.engine.messages import check_encodable
from viking_mcp.errors import Conflict, VikingError
from viking_mcp.memory.categories import Candidate, agent_space
from viking_mcp.memory.merge import MergePlan, plan_merge
from viking_mcp.memory.offline import extract_offline, extract_usage
from viking_mcp.models import (
    CommitTaskResult,
    MemoryInput,
    Message,
    Owner,
    Scope,
    archive_id,
    archive_uri,
)
from viking_mcp.store import Store
from viking_mcp.store.base import OverviewRendering, Phase2Output, TaskRow
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary, Summariser
from viking_mcp.summarize.extractive import ExtractiveSummariser
from viking_mcp.tokens import TokenCounter

if TYPE_CHECKING:
    from viking_mcp.memory.llm import LlmPhase2, LlmResult

logger = logging.getLogger(__name__)


def owners_of(owner: Owner) -> dict[Scope, str]:
    """Whose memories a session's owner has: its user's, and its agent's space for that user."""
    return {"user": owner.user_id, "agent": agent_space(owner.user_id, owner.agent_id)}


def candidates_from(memories: list[MemoryInput]) -> list[Candidate]:
    return [Candidate(**m.model_dump()) for m in memories]


def llm_output(llm: LlmPhase2, archive: ArchiveInput, limits: Limits) -> LlmResult:
    """What the LLM endpoint writes for `archive`, held after each reply to the limits
    `Engine.commit` holds an agent's abstract, overview and memories to.

    Past them the output is refused whole, as the agent's would be (RESOURCE_EXHAUSTED there),
    not cut: a cut overview or a subset of the memories would be stored as if complete. The
    archive is then marked failed with the reason, its messages stay, and retry_archive runs
    it again once the endpoint (or VIKING_MCP_MAX_SUMMARY_BYTES) is fixed."""
    return llm.run(archive, check=partial(_within_limits, limits=limits))


def _within_limits(result: LlmResult, limits: Limits) -> None:
    from viking_mcp.memory.llm import LlmError

    try:
        for name, value in (("abstract", result.abstract), ("overview", result.overview)):
            check_encodable(value, limits.max_summary_bytes, name)
        memories = [memory.model_dump() for memory in result.memories]
        check_encodable(memories, limits.max_summary_bytes, "memories", limits.max_json_depth)
    except VikingError as exc:
        raise LlmError(
            f"LLM output refused, as an agent's commit would be: {exc} ({len(result.memories)} memories); "
            "nothing was stored: check the endpoint, or raise VIKING_MCP_MAX_SUMMARY_BYTES"
        ) from None


def extract(
    archive: ArchiveInput,
    supplied: dict[str, Any],
    skills: list[dict[str, Any]],
    summariser: Summariser,
    llm: LlmPhase2 | None,
    limits: Limits | None = None,
) -> tuple[ArchiveSummary, list[Candidate]]:
    """Summary and memory candidates for an archive, from the best source available.

    An overview written by the agent or an LLM is kept verbatim as the archive's overview and
    one of its renderings; the extractive summariser adds renderings beside it: shorter ones,
    so that one fits a tight budget, and longer ones that show it whole after the earlier
    archives' sections, so that a large budget is not left unused."""
    abstract = (supplied.get("abstract") or "").strip()
    overview = (supplied.get("overview") or "").strip()
    given = supplied.get("memories")
    memories = candidates_from([MemoryInput.model_validate(m) for m in given]) if given is not None else None
    usage = extract_usage(archive.messages, skills)

    if llm is not None and not (abstract and overview and memories is not None):
        result = llm_output(llm, archive, limits or Limits())
        written = overview or result.overview
        summary = ArchiveSummary(
            abstract=abstract or result.abstract,
            overviews=[written],
            llm_prompt_tokens=result.prompt_tokens,
            llm_completion_tokens=result.completion_tokens,
            overview=written,
        )
        memories = memories if memories is not None else candidates_from(result.memories)
    elif abstract and overview:
        summary = ArchiveSummary(abstract=abstract, overviews=[overview], overview=overview)
    else:
        generated = summariser.summarise(archive)
        summary = ArchiveSummary(
            abstract=abstract or generated.abstract,
            overviews=[overview] if overview else generated.overviews,
            overview_tokens=[] if overview else generated.overview_tokens,  # counted once, while rendering
            overview=overview,
        )
    if memories is None:
        memories = extract_offline(archive.messages)
    if summary.overview and isinstance(summariser, ExtractiveSummariser):
        beside = summariser.renderings_for(archive, summary.overview)
        summary = replace(
            summary,
            overviews=[summary.overview, *(text for text, _ in beside)],
            overview_tokens=[summariser.tokens.count(summary.overview), *(tokens for _, tokens in beside)],
        )
    return summary, memories + usage


def plan_memories(store: Store, owner: Owner, candidates: list[Candidate]) -> MergePlan:
    return plan_merge(candidates, owners_of(owner), store, owner.account_id)


def _output(
    task: TaskRow, name: str, owner: Owner, summary: ArchiveSummary, plan: MergePlan, tokens: TokenCounter
) -> Phase2Output:
    assert task.archive_number is not None
    counts = summary.overview_tokens
    if len(counts) != len(summary.overviews):
        counts = [tokens.count(text) for text in summary.overviews]
    renderings = sorted(
        (OverviewRendering(tokens=count, text=text) for text, count in zip(summary.overviews, counts, strict=True)),
        key=lambda r: -r.tokens,
    )
    extracted = plan.counts()
    result = CommitTaskResult(
        session_id=task.session_id,
        archive_id=name,
        archive_uri=archive_uri(task.session_id, task.archive_number),
        memories_extracted={**extracted, "total": sum(extracted.values())},
        active_count_updated=0,  # the store sets it, in the same transaction
    )
    return Phase2Output(
        abstract=summary.abstract,
        abstract_tokens=tokens.count(summary.abstract),
        overview=summary.overview or (renderings[0].text if renderings else ""),
        overview_renderings=renderings,
        memory_diff=plan.diff(name),
        memories_extracted=extracted,
        result=result.model_dump(),
        llm_prompt_tokens=summary.llm_prompt_tokens,
        llm_completion_tokens=summary.llm_completion_tokens,
        account_id=owner.account_id,
        memory_writes=plan.writes,
        memory_owners={str(scope): space for scope, space in owners_of(owner).items()},
    )


def run_phase2(
    store: Store,
    task: TaskRow,
    summariser: Summariser,
    tokens: TokenCounter,
    llm: LlmPhase2 | None,
    now: str,
    limits: Limits | None = None,
) -> bool:
    """Run Phase 2 for a claimed task. Returns True when the archive was completed.

    A failure of the summariser, the LLM or the extractor marks the archive and task
    failed with the reason (the raw messages stay, and retry_archive queues it again).
    A conflicting memory write by another process gives the task back to the queue.
    """
    assert task.archive_number is not None
    name = archive_id(task.archive_number)
    archive = store.get_archive(task.session_id, task.archive_number)
    session = store.get_session(task.session_id)
    if archive is None or session is None:
        store.fail_phase2(task, f"{name} no longer exists (session deleted?)", now)
        return False
    messages: list[Message] = [
        m.message for m in store.read_messages(task.session_id, archive.first_seq - 1, archive.last_seq, 0, None)
    ]
    previous = store.previous_overview(task.session_id, task.archive_number)
    archive_input = ArchiveInput(
        session_id=task.session_id,
        archive_id=name,
        messages=messages,
        previous_overview=previous.overview,
        carried_overview=previous.longest,
        previous_archive=archive_id(previous.number) if previous.number else "",
    )
    try:
        skills = store.archive_usage(task.session_id, task.archive_number).skills
        summary, candidates = extract(archive_input, archive.supplied, skills, summariser, llm, limits)
        output = _output(task, name, session.owner, summary, plan_memories(store, session.owner, candidates), tokens)
    except VikingError:
        raise  # the store's trouble (locked, full, read-only), not the archive's: try again later
    except Exception as exc:  # a summariser, LLM or extractor failure is the archive's, not the worker's
        logger.warning("Phase 2 of %s/%s failed: %s", task.session_id, name, exc)
        store.fail_phase2(task, f"{type(exc).__name__}: {exc}", now)
        return False
    try:
        return store.finish_phase2(task, output, now)
    except Conflict as exc:
        logger.info("Phase 2 of %s/%s raced another writer (%s); it will run again", task.session_id, name, exc)
        store.release_phase2(task, now)
        return False
