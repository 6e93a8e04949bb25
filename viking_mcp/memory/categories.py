"""The eight memory categories: whose they are, where they live, and how they merge.

    viking://user/{user_id}/memories/   profile.md  preferences/  entities/  events/
    viking://agent/{agent_id}/memories/ cases/  patterns/  tools/  skills/

Each category's owner and merge rule are in `_TABLE` below.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from viking_mcp.models import MemoryCategory, Scope

MergeRule = Literal["always", "by_name", "similar", "never"]

# Whose each category is, and how it merges.
_TABLE: dict[str, tuple[Scope, MergeRule]] = {
    "profile": ("user", "always"),  # one memory per user
    "preferences": ("user", "similar"),  # by topic, or when the statement is similar
    "entities": ("user", "by_name"),  # the same entity is one memory
    "events": ("user", "never"),  # an identical event is not stored twice
    "cases": ("agent", "never"),  # likewise
    "patterns": ("agent", "similar"),  # by name, or when similar
    "tools": ("agent", "by_name"),  # usage statistics summed
    "skills": ("agent", "by_name"),  # likewise
}
SCOPES: dict[str, Scope] = {category: scope for category, (scope, _) in _TABLE.items()}
RULES: dict[str, MergeRule] = {category: rule for category, (_, rule) in _TABLE.items()}

_SLUG_STRIP = re.compile(r"[^a-z0-9]+")
_WORD = re.compile(r"[a-z0-9]+")
_FILLER = {"a", "an", "the", "to", "of", "and", "or", "in", "on", "at", "for", "with", "my", "i", "is", "it", "be"}


def slug(text: str, limit: int = 60) -> str:
    """A safe, stable file name from any text: 'Café Lisboa!' -> 'cafe-lisboa'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    cleaned = _SLUG_STRIP.sub("-", ascii_text).strip("-")[:limit].strip("-")
    return cleaned or "x" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def similar(a: str, b: str, threshold: float = 0.5) -> bool:
    """Jaccard similarity of content words, at or above `threshold`."""
    left, right = ({w for w in _WORD.findall(text.lower()) if w not in _FILLER} for text in (a, b))
    if not left or not right:
        return False
    return len(left & right) / len(left | right) >= threshold


def normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


@dataclass
class Candidate:
    """A memory to merge in, from whichever source: the agent, an LLM or the offline rules."""

    category: MemoryCategory
    abstract: str
    overview: str = ""
    content: str = ""
    name: str | None = None
    when: str | None = None
    # tools and skills: counters summed on merge (calls, completed, errors, successes, failures)
    stats: dict[str, int] = field(default_factory=dict)


def name_key(name: str) -> str:
    """The key of a named memory. Names are compared casefolded with their spaces collapsed;
    when the slug had to drop characters ('read_file', 'C++', 'bea!'), a short hash of the
    name keeps different names apart."""
    name = " ".join(name.casefold().split())
    key = slug(name)
    if key != name.replace(" ", "-"):
        key += "-" + hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return key


def agent_space(user_id: str, agent_id: str) -> str:
    """Where an agent's memories live for one user: an agent serving two users keeps two
    spaces, so one user's cases, tools and skills never show up for the other. The default
    user's space is the agent id itself."""
    if user_id == "default":
        return agent_id
    return f"{agent_id}-{hashlib.sha1(user_id.encode()).hexdigest()[:8]}"


def memory_key(candidate: Candidate) -> str:
    """The file name (without .md) a candidate merges into, before similarity is considered."""
    rule = RULES[candidate.category]
    if rule == "always":
        return "profile"
    if rule == "never":
        # The same event stated twice has the same key, so it is stored once.
        digest = hashlib.sha1(
            f"{candidate.when or ''}|{normalized(candidate.abstract)}".encode("utf-8", "surrogatepass")
        ).hexdigest()[:10]
        prefix = slug(candidate.when or "", 10) + "-" if candidate.when else ""
        return f"{prefix}{slug(candidate.abstract, 40)}-{digest}"
    return name_key(candidate.name) if candidate.name else slug(candidate.abstract)


def memory_uri(scope: Scope, owner_id: str, category: str, key: str) -> str:
    base = f"viking://{scope}/{owner_id}/memories"
    if category == "profile":
        return f"{base}/profile.md"
    return f"{base}/{category}/{key}.md"
