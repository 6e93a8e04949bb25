"""Full-text search: what is indexed, and a safe query for what a person or model typed.

Free text is never passed to FTS5 as syntax (a stray quote or `NEAR(` would be an
error): it is split into words, common words are dropped, and each word is quoted and
OR-ed, so BM25 ranks the documents that share the most, and the rarest, words first.
PostgreSQL's `websearch_to_tsquery` reads the same form.

What recall indexes (`engine/recall.py` searches it): a message's text as a model reads
it, its relative dates resolved ("yesterday (7 May 2023)"), so that a date finds what
was said about it; an archive's abstract and its own section of the overview.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from viking_mcp.models import Message, message_text
from viking_mcp.summarize.dates import parse_day, resolve_relative_dates

_WORD = re.compile(r"[^\W_]+")
_COMMON = {
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "has", "have",
    "her", "his", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "she", "he", "that",
    "the", "their", "them", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "would", "you", "your", "s",
}  # fmt: skip
MAX_TERMS = 32
# The combining marks NFKD splits accents into ("é" is "e" and U+0301).
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
# What recall indexes of one text, at most (characters): the rest of a very long message is
# reached through its passage's uri. PostgreSQL refuses a tsvector over 1 MB, which a
# megabyte of distinct words makes; 100,000 characters stay far under it.
INDEXED_CHARS = 100_000
# A section of an overview of ours: "## archive_007 · 3 May 2023" up to the next heading.
_SECTION = re.compile(r"^## archive_(\d+)\b[^\n]*\n(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for `text`, or None when it has no words at all."""
    words = _WORD.findall(text.lower())
    kept = [w for w in words if w not in _COMMON] or words
    unique = list(dict.fromkeys(kept))[:MAX_TERMS]
    return " OR ".join(f'"{w}"' for w in unique) if unique else None


@dataclass(frozen=True)
class Term:
    """A word of a query and its Porter stem (what FTS5's porter tokenizer indexes)."""

    word: str
    stem: str


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import snowballstemmer  # on first use: a server that never searches does not load it

    return snowballstemmer.stemmer("porter")


@lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    return str(_stemmer().stemWord(word))


def folded(text: str) -> str:
    """`text` lowercased, accents dropped ("Café" is "cafe"), as FTS5's unicode61 tokenizer
    reads it: what a word is compared as."""
    text = text.lower()
    if text.isascii():
        return text
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text))


def search_terms(text: str) -> list[Term]:
    """The words of a query worth looking for (not the common ones: a query of only those
    matches nothing), one per stem, in the order given."""
    terms: dict[str, Term] = {}
    for word in _WORD.findall(folded(text)):
        if word in _COMMON:
            continue
        terms.setdefault(stem(word), Term(word, stem(word)))
    return list(terms.values())[:MAX_TERMS]


def match_any(terms: list[Term]) -> str:
    """An FTS5 / websearch query matching a document with any of `terms`."""
    return " OR ".join(f'"{t.word}"' for t in terms)


def indexed_message(message: Message) -> str:
    """What recall indexes of a message: its text, relative dates resolved from when it was said."""
    return resolve_relative_dates(message_text(message)[:INDEXED_CHARS], parse_day(message.created_at))


def indexed_archive(number: int, abstract: str, overview: str) -> str:
    """What recall indexes of an archive's summaries: its abstract and its own section of the
    overview (an overview carries the earlier archives' sections forward: they are theirs),
    or the whole overview when it has no sections (an agent's or an LLM's own words)."""
    sections = {int(n): body.strip() for n, body in _SECTION.findall(overview)}
    own = sections.get(number, "") if sections else overview.strip()
    # The abstract on the first line (an agent's may have several: made one), the section after it.
    return f"{' '.join(abstract.split())}\n{own}"[:INDEXED_CHARS]


def tenant_tag(account_id: str, user_id: str) -> str:
    """A token that marks a document as one user's, in a column ranking ignores: FTS5 then
    intersects it with the query's words (digits: no tokenizer or stemmer changes them)."""
    digest = hashlib.blake2b(f"{account_id}\0{user_id}".encode(), digest_size=8).digest()
    return f"t{int.from_bytes(digest, 'big')}"
