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
    # The overview of the latest completed archive before this one ("" for the first).
    previous_overview: str


@dataclass(frozen=True)
class ArchiveSummary:
    abstract: str
    # The overview at one or more lengths, longest first. The first is the archive's
    # `.overview.md`; get_context returns the longest that fits its budget.
    overviews: list[str]
    # Exact token counts of `overviews`, when the summariser counted them already (else Phase 2 counts).
    overview_tokens: list[int] = field(default_factory=list)
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0


class Summariser(Protocol):
    def summarise(self, archive: ArchiveInput) -> ArchiveSummary: ...
