"""Turning what a person or model typed into a safe full-text query.

Free text is never passed to FTS5 as syntax (a stray quote or `NEAR(` would be an
error): it is split into words, common words are dropped, and each word is quoted and
OR-ed, so BM25 ranks the memories that share the most, and the rarest, words first.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")
_COMMON = {
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "has", "have",
    "her", "his", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "she", "he", "that",
    "the", "their", "them", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "would", "you", "your", "s",
}  # fmt: skip
MAX_TERMS = 32


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for `text`, or None when it has no words at all."""
    words = _WORD.findall(text.lower())
    kept = [w for w in words if w not in _COMMON] or words
    unique = list(dict.fromkeys(kept))[:MAX_TERMS]
    return " OR ".join(f'"{w}"' for w in unique) if unique else None
