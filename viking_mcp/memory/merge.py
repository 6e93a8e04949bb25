"""Merging candidate memories into what is stored, by each category's rule.

`plan_merge` is pure: it reads the memories it may touch through a `MemoryLookup` (the
store) and returns the writes and the archive's memory diff. The store applies the writes in one
transaction, checking each updated memory's version, so two processes extracting for
the same user at once cannot silently overwrite each other (the loser retries).

For every merged category the rule is the same: the newest abstract wins, the overview
is the newest one given, and the content keeps every distinct line it was given (so a
restated preference is updated, with its history, and a fact that arrives twice is
stored once), up to MAX_CONTENT_LINES lines and MAX_CONTENT_CHARS characters: past
either, the oldest lines go first, so that a memory merged at every commit of a long
session (an entity mentioned in every archive) stays readable, and so does each
archive's memory diff, which holds its before and after. Tools and skills also sum
their usage counters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Protocol

from viking_mcp.memory import MEMORY_CATEGORIES
from viking_mcp.memory.categories import (
    RULES,
    SCOPES,
    Candidate,
    memory_key,
    memory_uri,
    normalized,
    similar,
)
from viking_mcp.models import MemoryWrite, Scope, StoredMemory


class MemoryLookup(Protocol):
    def memories_by_uri(self, account_id: str, uris: list[str]) -> dict[str, StoredMemory]: ...
    def memories_in_category(
        self, account_id: str, scope: Scope, owner_id: str, category: str
    ) -> list[StoredMemory]: ...


@dataclass
class MergePlan:
    writes: list[MemoryWrite] = field(default_factory=list)
    adds: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)

    def diff(self, archive_id: str | None) -> dict[str, Any]:
        return {"archive_id": archive_id, "adds": self.adds, "updates": self.updates, "deletes": []}

    def counts(self) -> dict[str, int]:
        return dict.fromkeys(MEMORY_CATEGORIES, 0) | Counter(write.memory.category for write in self.writes)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


MAX_CONTENT_LINES = 60
MAX_CONTENT_CHARS = 6_000


def _union(existing: str, new: str) -> str:
    """Every distinct line, the existing ones first; the oldest dropped past the caps."""
    seen = {normalized(line) for line in _lines(existing)}
    merged = _lines(existing)
    for line in _lines(new):
        if normalized(line) not in seen:
            seen.add(normalized(line))
            merged.append(line)
    merged = merged[-MAX_CONTENT_LINES:]
    size = sum(len(line) + 1 for line in merged)
    while len(merged) > 1 and size > MAX_CONTENT_CHARS:
        size -= len(merged.pop(0)) + 1
    return "\n".join(merged)


def _summed(left: dict[str, int], right: dict[str, int]) -> dict[str, int]:
    return {k: left.get(k, 0) + right.get(k, 0) for k in sorted(set(left) | set(right))}


def _merged(current: StoredMemory, candidate: Candidate) -> StoredMemory:
    content = _union(current.content, candidate.content or candidate.abstract)
    return replace(
        current,
        abstract=candidate.abstract or current.abstract,
        overview=candidate.overview or current.overview,
        content=content,
        stats=_summed(current.stats, candidate.stats),
        name=candidate.name or current.name,
    )


def plan_merge(
    candidates: list[Candidate], owners: dict[Scope, str], lookup: MemoryLookup, account_id: str
) -> MergePlan:
    """Decide, for each candidate, whether it adds a memory, updates one, or changes nothing
    (among the memories of `account_id`)."""
    originals: dict[str, StoredMemory | None] = {}
    working: dict[str, StoredMemory] = {}

    @cache  # each category read once per plan
    def category(scope: Scope, name: str) -> list[StoredMemory]:
        return lookup.memories_in_category(account_id, scope, owners[scope], name)

    def uri_for(candidate: Candidate) -> tuple[str, str]:
        scope = SCOPES[candidate.category]
        key = memory_key(candidate)
        if RULES[candidate.category] == "similar" and not candidate.name:
            # No topic given: merge into a stored memory that says much the same thing.
            pool = [m for m in working.values() if m.category == candidate.category]
            pool += category(scope, candidate.category)
            for memory in pool:
                if similar(memory.abstract, candidate.abstract):
                    return memory.uri, memory.key
        return memory_uri(scope, owners[scope], candidate.category, key), key

    for candidate in candidates:
        scope = SCOPES[candidate.category]
        uri, key = uri_for(candidate)
        if uri not in originals:
            found = lookup.memories_by_uri(account_id, [uri]).get(uri)
            originals[uri] = found
            if found is not None:
                working[uri] = found
        current = working.get(uri)
        if current is None:
            content = candidate.content or candidate.abstract
            fields = (candidate.name, candidate.abstract, candidate.overview, content, dict(candidate.stats))
            working[uri] = StoredMemory(uri, scope, owners[scope], candidate.category, key, *fields)
        elif RULES[candidate.category] != "never":
            working[uri] = _merged(current, candidate)

    plan = MergePlan()
    for uri, memory in working.items():
        before = originals.get(uri)
        if before is None:
            plan.writes.append(MemoryWrite("add", memory, None, None))
            plan.adds.append({"uri": uri, "category": memory.category, "abstract": memory.abstract})
        elif memory.snapshot() != before.snapshot():
            plan.writes.append(MemoryWrite("update", memory, before.version, before))
            plan.updates.append(
                {"uri": uri, "category": memory.category, "before": before.snapshot(), "after": memory.snapshot()}
            )
    return plan
