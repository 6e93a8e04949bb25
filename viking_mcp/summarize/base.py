"""What a summariser is: archive messages (and the previous overview) in, abstract and
overview out. Phase 2 tries the calling agent's own summary first, then a configured
summariser; the offline extractive one is the default and needs no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from viking_mcp.models import Message


@dataclass(frozen=True)
class ArchiveInput:
    session_id: str
    archive_id: str
    messages: list[Message]
    # The overview of the latest completed archive before this one ("" for the first), as
    # its author wrote it (the agent, an LLM, or a summariser: its longest rendering).
    previous_overview: str
    # That archive's longest rendering, which the extractive summariser carries forward
    # ("": the previous overview). It differs from the overview when the agent or an LLM
    # wrote that: then it is their overview after the earlier archives' sections.
    carried_overview: str = ""
    # That archive's id ("archive_002"), the heading of a carried overview that has none.
    previous_archive: str = ""


@dataclass(frozen=True)
class ArchiveSummary:
    abstract: str
    # The overview at one or more lengths (a summariser gives them longest first; Phase 2
    # stores them so); get_context returns the longest that fits its budget.
    overviews: list[str]
    # Exact token counts of `overviews`, when the summariser counted them already (else Phase 2 counts).
    overview_tokens: list[int] = field(default_factory=list)
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    # The archive's `.overview.md` when it is not the longest rendering: the overview the
    # agent or an LLM wrote, which the renderings include ("": the first rendering).
    overview: str = ""


class Summariser(Protocol):
    def summarise(self, archive: ArchiveInput) -> ArchiveSummary: ...
