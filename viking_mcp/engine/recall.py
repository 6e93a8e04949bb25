"""Recall: find again what was said, summarised or remembered.

One search over three kinds of documents: messages (live and archived alike: an archive
is a range of the session's messages, which stay where they are), archives' summaries
(the abstract and the archive's own section of the overview), and long-term memories.
Messages and summaries are indexed when they are stored (store/sql.py, `search_recall`),
so a search reads the index, never a session.

Ranking. The database's full-text engine finds the candidates (SQLite: FTS5's BM25 over
Porter stems; PostgreSQL: ts_rank over its English stems; accents dropped on both). Each
is then scored on one scale, 0..1, for every kind, store and query (not as a fraction of
the best hit): the share of the query's weight the document holds, times 0.7 + 0.3 x how
its database rank compares with the other candidates' (more occurrences in a shorter
text). A word weighs its BM25 IDF over the documents the search covers (the session, the
caller's sessions, or with no keys every session), so a rare word counts most, one found
everywhere little, and no score tells a caller what anyone else's documents hold. A
message or memory with every word of the query scores 0.7 or more (a summary 0.6 of what
its words give: it restates the messages, which say it first hand). What scores under
MIN_SCORE is left out: a search that matches nothing, or only a common word, returns
nothing, not filler.

Passages. A message is shown with its speaker, the day it was said (relative dates
resolved: "yesterday (7 May 2023)") and the archive that holds it; beside it the question
it answers (the message before, when that asks one) or the answer to it (the message
after, when it asks one): most facts in a conversation are an answer to a question. Hits
whose passages overlap become one. An archive is shown as the lines of its summary that
hold the query's words; a memory as its abstract.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from viking_mcp.memory.search import Term, folded, match_any, stem
from viking_mcp.models import StoredMemory, archive_id, archive_uri, message_text, session_uri
from viking_mcp.store import Store
from viking_mcp.store.base import StoredMessage
from viking_mcp.summarize.dates import day, parse_day, resolve_relative_dates
from viking_mcp.tokens import TokenCounter

MIN_SCORE = 0.1
# A word in more than this share of the documents is not looked up when the query has
# rarer ones; searching every session, the rarest words are looked up while together they
# are in at most MATCH_DOCUMENTS documents (`_looked_up`).
COMMON_SHARE = 0.2
MATCH_DOCUMENTS = 2000
# Candidates read from the index per kind: the best by the database's rank, then scored.
CANDIDATES = 50
# Memories read from the index (a user's are fewer than their messages, and longer).
MEMORY_CANDIDATES = 20
# With a time range, more: the range is checked on the candidates.
CANDIDATES_IN_RANGE = 500
# How long a term's document count is reused (counts move slowly; a search reads a few).
COUNTS_SECONDS = 5.0
_COUNTS_KEPT = 20_000
# A summary scores this share of what its words give: it restates the messages, which say
# it first hand (and a summary's words are spread over a whole archive).
ARCHIVE_FACTOR = 0.6
# A message longer than this is shown cut in a passage (the uri reads it whole).
PASSAGE_MESSAGE_TOKENS = 400
# How much of a document its score reads (a summary of a thousand messages holds most words
# somewhere: what it says first counts).
SCORED_CHARS = 8_000
# Candidates whose passages are read from the store at once.
_READ_AHEAD = 8
# A summary's lines shown for an archive that matched.
SUMMARY_LINES = 3
_SPEAKER = re.compile(r"^[A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,2}: ")


Scope = tuple[str, ...]  # what a search's word counts are over: ("session", id), ("user", account, user), ("all",)


@dataclass
class Candidate:
    """A document the index found, scored."""

    kind: str
    session_id: str | None
    number: int  # the message's seq or the archive's number (0 for a memory)
    text: str  # the text indexed: what the score is on
    rank: float
    memory: StoredMemory | None = None
    score: float = 0.0


@dataclass(frozen=True)
class Passage:
    """A candidate made readable: what `search` returns for it."""

    uri: str
    kind: str
    session_id: str | None
    archive_number: int | None
    created_at: str
    score: float
    text: str
    seqs: tuple[int, ...] = ()  # the messages it shows
    tokens: int = 0  # its text's (get_context counts them once)


def parse_moment(value: str, what: str) -> datetime:
    """An ISO 8601 date or time, naive ones taken as UTC; ValueError names `what`."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{what} {value!r} is not an ISO 8601 date or time (e.g. 2023-05-08 or 2023-05-08T13:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _moment(created_at: str) -> datetime | None:
    try:
        return parse_moment(created_at, "created_at")
    except ValueError:
        return None


class Recall:
    """Search over one store; the index's term counts are cached for a few seconds."""

    def __init__(self, store: Store, tokens: TokenCounter) -> None:
        self.store = store
        self.tokens = tokens
        self._lock = threading.Lock()
        # (scope, stem) -> (when read, documents holding it; None: every one); scope -> (when read, documents)
        self._counts: dict[tuple[Scope, str], tuple[float, int | None]] = {}
        self._sizes: dict[Scope, tuple[float, int]] = {}

    # --- scoring ---------------------------------------------------------------------------

    def counts(
        self, terms: list[Term], owner: tuple[str, str] | None, session_id: str | None
    ) -> tuple[int, dict[str, int]]:
        """How many documents the search's scope holds (one session, one user's sessions, or
        every session), and how many of them hold each term: counted in the caller's own
        documents, so that no score says what anyone else's hold. Read again after
        COUNTS_SECONDS."""
        scope: Scope = ("session", session_id) if session_id is not None else ("user", *owner) if owner else ("all",)
        now = time.monotonic()
        with self._lock:
            stale = [t for t in terms if now - self._counts.get((scope, t.stem), (-math.inf, 0))[0] > COUNTS_SECONDS]
            fresh = now - self._sizes.get(scope, (-math.inf, 0))[0] <= COUNTS_SECONDS
        read = self.store.recall_counts(stale, owner, session_id) if stale else {}
        size = self.store.recall_size(owner, session_id) if not fresh else None
        with self._lock:
            total = size if size is not None else self._sizes.get(scope, (0.0, 0))[1]
            held = {t.stem: read.get(t.stem, self._counts.get((scope, t.stem), (0.0, 0))[1]) for t in terms}
            if len(self._counts) > _COUNTS_KEPT:
                self._counts.clear()
                self._sizes.clear()
            self._counts.update({(scope, stem): (now, n) for stem, n in read.items()})
            if size is not None or scope not in self._sizes:
                self._sizes[scope] = (now, total)
        # A word the database does not index (a stopword of PostgreSQL's) counts as in every document.
        return total, {stem: total if n is None else min(n, total) for stem, n in held.items()}

    @staticmethod
    def score(candidates: list[Candidate], weights: dict[str, float]) -> None:
        """Score candidates of one rank scale (see the module's docstring)."""
        whole = sum(weights.values())
        if not candidates or whole <= 0:
            return
        middle = statistics.median(c.rank for c in candidates) or 1.0
        held_in = _holder(weights)
        for c in candidates:
            held = held_in(c.text[:SCORED_CHARS])
            coverage = sum(w for stem, w in weights.items() if stem in held) / whole
            rank = max(c.rank, 0.0)
            c.score = coverage * (0.7 + 0.3 * rank / (rank + middle)) if rank + middle > 0 else 0.7 * coverage

    def candidates(
        self,
        terms: list[Term],
        *,
        owner: tuple[str, str] | None,
        session_id: str | None,
        kinds: tuple[str, ...],
        memories: Callable[[str, int], list[tuple[StoredMemory, float]]] | None,
        many: int,
    ) -> list[Candidate]:
        """The index's best documents of `kinds`, scored, best first, MIN_SCORE and over."""
        total, counts = self.counts(terms, owner, session_id)
        weights = {stem: math.log(1 + (total - n + 0.5) / (n + 0.5)) for stem, n in counts.items()}
        looked_up = _looked_up(terms, counts, total)
        match = match_any(looked_up)
        # Even the rarest word in more documents than are worth ranking (a query of only common
        # words): the newest that hold it are scored instead of the best by the database's rank.
        ranked = sum(counts[t.stem] for t in looked_up) <= MATCH_DOCUMENTS
        found: list[Candidate] = []
        recall_kinds = tuple(k for k in kinds if k in ("message", "archive"))
        if recall_kinds:
            rows = self.store.search_recall(match, owner, session_id, recall_kinds, many, ranked=ranked)
            documents = [Candidate(r.kind, r.session_id, r.number, r.text, r.rank) for r in rows]
            self.score(documents, weights)
            for document in documents:
                if document.kind == "archive":
                    document.score *= ARCHIVE_FACTOR
            found += documents
        if "memory" in kinds and memories is not None:
            remembered = [
                Candidate("memory", None, 0, f"{m.name or ''}\n{m.abstract}\n{m.content}", rank, memory=m)
                for m, rank in memories(match, min(many, MEMORY_CANDIDATES))
            ]
            self.score(remembered, weights)
            found += remembered
        found = [c for c in found if c.score >= MIN_SCORE]
        found.sort(key=lambda c: -c.score)
        return found

    # --- passages --------------------------------------------------------------------------

    def passages(
        self,
        found: Iterable[Candidate],
        terms: list[Term],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        shown: dict[str, set[int]] | None = None,
    ) -> Iterator[Passage]:
        """The candidates made passages, best first, as they are wanted (`fit` takes what
        fits); a message already shown (in a better one's passage, or in `shown`: session ->
        seqs) is not shown again."""
        wanted = _holder({t.stem: 1.0 for t in terms})
        shown = {session: set(seqs) for session, seqs in (shown or {}).items()}
        kept = list(found)
        for start in range(0, len(kept), _READ_AHEAD):
            chunk = kept[start : start + _READ_AHEAD]
            # What the chunk's passages show of the store, read at once (not a read per passage).
            windows = self.store.message_windows(
                [(c.session_id, c.number) for c in chunk if c.kind == "message" and c.session_id is not None], 1
            )
            said = self.store.archives_said_at(
                [(c.session_id, c.number) for c in chunk if c.kind == "archive" and c.session_id is not None]
            )
            for candidate in chunk:
                if candidate.kind == "message":
                    assert candidate.session_id is not None
                    seen = shown.setdefault(candidate.session_id, set())
                    if candidate.number in seen:
                        continue
                    window = windows.get((candidate.session_id, candidate.number), [])
                    passage = self._message_passage(candidate, window, seen)
                elif candidate.kind == "archive":
                    passage = _archive_passage(
                        candidate, said.get((candidate.session_id or "", candidate.number)), wanted
                    )
                else:
                    passage = _memory_passage(candidate)
                if passage is None or not _within(passage.created_at, since, until):
                    continue
                if candidate.session_id is not None:
                    shown.setdefault(candidate.session_id, set()).update(passage.seqs)
                yield passage

    def _message_passage(
        self, candidate: Candidate, window: list[tuple[StoredMessage, int | None]], seen: set[int]
    ) -> Passage | None:
        session_id, seq = candidate.session_id, candidate.number
        assert session_id is not None
        around = {m.seq: m for m, _ in window}
        holding = {m.seq: number for m, number in window}
        hit = around.get(seq)
        if hit is None:  # deleted meanwhile
            return None
        shown = [hit]
        said = hit.message.created_at[:10]
        before, after = around.get(seq - 1), around.get(seq + 1)

        def beside(neighbour: StoredMessage | None, asks: StoredMessage) -> bool:
            """A neighbour shown with the hit: said the same day, in the same archive (or live
            too), not shown already, when the question of the two is `asks`."""
            return (
                neighbour is not None
                and neighbour.seq not in seen
                and holding[neighbour.seq] == holding[seq]
                and neighbour.message.created_at[:10] == said
                and _asks(asks)
            )

        if before is not None and beside(before, before):
            shown.insert(0, before)
        if after is not None and beside(after, hit):
            shown.append(after)
        number = holding[seq]
        when = parse_day(hit.message.created_at)
        where = archive_id(number) if number is not None else "live"
        head = f"[{where}, {day(when) if when else hit.message.created_at[:10]}]"
        lines = [self._line(m) for m in shown]
        uri = (archive_uri(session_id, number) if number is not None else session_uri(session_id)) + (
            f"/messages.jsonl#{hit.message.id}"
        )
        return Passage(
            uri=uri,
            kind="message",
            session_id=session_id,
            archive_number=number,
            created_at=hit.message.created_at,
            score=candidate.score,
            text=f"{head} " + "\n".join(lines),
            seqs=tuple(m.seq for m in shown),
        )

    def _line(self, stored: StoredMessage) -> str:
        message = stored.message
        text = " ".join(resolve_relative_dates(message_text(message), parse_day(message.created_at)).split())
        if len(text) > PASSAGE_MESSAGE_TOKENS * 2:  # a token is at least a byte: count only what may be long
            cut = self.tokens.head(text, PASSAGE_MESSAGE_TOKENS)
            text = text if len(cut) == len(text) else f"{cut.rstrip()}… (cut: the uri reads it whole)"
        return text if _SPEAKER.match(text) else f"{message.role}: {text}"


def _archive_passage(candidate: Candidate, created_at: str | None, wanted: Callable[[str], set[str]]) -> Passage | None:
    session_id, number = candidate.session_id, candidate.number
    assert session_id is not None
    if created_at is None:  # deleted, or summarised again meanwhile
        return None
    when = parse_day(created_at)
    # The abstract (its first line) restates the section's lines: a line of the section first.
    abstract, _, section = candidate.text.partition("\n")
    lines = list(dict.fromkeys(line.strip() for line in section.splitlines() if line.strip()))
    matching = [line for line in lines if wanted(line)][:SUMMARY_LINES] or [abstract]
    text = f"[{archive_id(number)} summary, {day(when) if when else created_at[:10]}] " + " ".join(
        line.lstrip("- ") for line in matching
    )
    uri = archive_uri(session_id, number)
    return Passage(uri, "archive", session_id, number, created_at, candidate.score, text)


def _looked_up(terms: list[Term], counts: dict[str, int], total: int) -> list[Term]:
    """The terms the index is asked for: every one counts for the score, but a common one
    finds little the rarer ones do not, and costs the database a rank for every document it
    is in. So a word in a fifth of the documents searched ("Caroline" in her own
    conversation) is left out when rarer ones are there, and the rarest words are looked up
    while together they are in at most MATCH_DOCUMENTS documents (at least one word)."""
    rare = [t for t in terms if counts[t.stem] <= total * COMMON_SHARE] or terms
    chosen: list[Term] = []
    documents = 0
    for term in sorted(rare, key=lambda t: counts[t.stem]):
        if chosen and documents + counts[term.stem] > MATCH_DOCUMENTS:
            break
        chosen.append(term)
        documents += counts[term.stem]
    return chosen


def _holder(weights: dict[str, float]) -> Callable[[str], set[str]]:
    """A function giving which of the stems in `weights` a text holds. Only the words that
    begin like one of them are stemmed: Porter changes a word's last letters only (happy,
    happi; hiking, hike), so a word holding a stem begins with the stem less its last letter."""
    starts = sorted({s[:-1] if len(s) > 3 else s for s in weights}, key=len, reverse=True)
    if not starts:
        return lambda text: set()
    pattern = re.compile(r"(?<![^\W_])(?:" + "|".join(map(re.escape, starts)) + r")[^\W_]*")

    def held(text: str) -> set[str]:
        return {stem(w) for w in set(pattern.findall(folded(text)))} & weights.keys()

    return held


def _asks(stored: StoredMessage) -> bool:
    return message_text(stored.message).rstrip().endswith("?")


def _memory_passage(candidate: Candidate) -> Passage:
    memory = candidate.memory
    assert memory is not None
    text = f"[memory, {memory.category}] " + " ".join(memory.abstract.split())
    return Passage(memory.uri, "memory", None, None, memory.updated_at, candidate.score, text)


def _within(created_at: str, since: datetime | None, until: datetime | None) -> bool:
    if since is None and until is None:
        return True
    moment = _moment(created_at)
    if moment is None:
        return False
    return (since is None or moment >= since) and (until is None or moment <= until)


def fit(passages: Iterable[Passage], limit: int, budget: int | None, tokens: TokenCounter) -> tuple[list[Passage], int]:
    """The first `limit` passages that fit `budget` tokens together (one per line), the
    first that does not fit whole cut to what is left; and their tokens."""
    kept: list[Passage] = []
    used = 0
    for passage in passages:
        if len(kept) >= limit:
            break
        if budget is None:
            kept.append(passage)
            continue
        cost = tokens.count(passage.text) + (1 if kept else 0)
        if used + cost <= budget:
            kept.append(passage)
            used += cost
            continue
        room = budget - used - (1 if kept else 0) - 1  # the cut's "…"
        if room >= 8:
            cut = tokens.head(passage.text, room).rstrip()
            kept.append(replace(passage, text=f"{cut}…"))
        break
    total = tokens.count("\n".join(p.text for p in kept))
    while (
        kept and budget is not None and total > budget
    ):  # a join merged no token the other way: rare, but the bound is the bound
        kept.pop()
        total = tokens.count("\n".join(p.text for p in kept))
    return kept, total
