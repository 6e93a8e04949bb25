"""Recall on LoCoMo: does search (and get_context with a query) bring back the answer?

For each LoCoMo conversation: one session, fed as benchmarks/retention.py feeds it (each
turn a message "Speaker: text" dated with its LoCoMo session, a commit after each LoCoMo
session, Phase 2 by the offline summariser). Then every QA pair of categories 1-4 whose
answer words all occur in the transcript is asked: a question counts as recalled when
every word of its answer (lowercased, alphanumeric runs) occurs in what is read.

What is read, per question:
- search: `search(question, session_id=...)` results in rank order, their passages cut to
  500 cl100k tokens by the search itself (`token_budget=500`); also the text the MCP tool
  returns for the same call (uris and scores included, all within 500).
- get_context with the question as `query`, at 1,000 and 2,000 tokens: what the model
  reads over MCP (the text), and without a query (recency only) for comparison.
- BM25 over the raw dialogue turns (Okapi, k1 = 1.2, b = 0.75, words as above, no
  stemming), best turns first, whole lines while they fit, then the head of the next,
  to 500, 1,000 and 2,000 tokens: once with each turn as said ("Speaker: text") and once
  with its LoCoMo session's date before it ("[8 May 2023] Speaker: text"). The dated
  turns are the stronger baseline (a date answer can be read off them) and the one the
  targets are judged against.

    python benchmarks/recall.py                         # all ten conversations
    python benchmarks/recall.py --conversations 1 --out-dir /tmp/r
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.tokens import TokenCounter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retention import (
    _WORD,
    CATEGORIES,
    DEFAULT_DATA,
    REPO,
    Conversation,
    Tally,
    category_rows,
    load_conversations,
    words,
)

SEARCH_BUDGET = 500
CONTEXT_BUDGETS = (1000, 2000)
# Issue #17's targets: search >= 1.2x BM25 over turns at 500 tokens (aim 1.5x); get_context
# with a query >= 1.1x BM25 filled to its budget and >= 2.5x recency-only get_context.
SEARCH_TARGET = 1.2
CONTEXT_TARGET_BM25 = 1.1
CONTEXT_TARGET_RECENCY = 2.5


@dataclass(frozen=True)
class Question:
    category: int
    text: str
    answer: frozenset[str]


def questions(conversation: Conversation, transcript_words: set[str]) -> list[Question]:
    """The questions of categories 1-4 the transcript can answer at all (as retention.scorable)."""
    found = []
    for qa in conversation.qa:
        if qa.get("category") not in CATEGORIES or "answer" not in qa:
            continue
        answer = words(str(qa["answer"]))
        if answer and answer <= transcript_words:
            found.append(Question(qa["category"], qa["question"], frozenset(answer)))
    return found


class Bm25:
    """Okapi BM25 over lines, on lowercased alphanumeric words (no stemming, no stopwords)."""

    def __init__(self, lines: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.lines = lines
        self.docs = [Counter(_WORD.findall(line.lower())) for line in lines]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.average = sum(self.lengths) / max(len(lines), 1)
        self.df: Counter[str] = Counter()
        for doc in self.docs:
            self.df.update(doc.keys())
        self.k1, self.b = k1, b

    def ranked(self, query: str) -> list[str]:
        terms = set(_WORD.findall(query.lower()))
        n = len(self.docs)
        scores = []
        for i, (doc, length) in enumerate(zip(self.docs, self.lengths, strict=True)):
            score = 0.0
            for term in terms & doc.keys():
                idf = math.log(1 + (n - self.df[term] + 0.5) / (self.df[term] + 0.5))
                tf = doc[term]
                score += idf * tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * length / self.average))
            if score > 0:
                scores.append((-score, i))
        return [self.lines[i] for _, i in sorted(scores)]


def fill(tokens: TokenCounter, lines: list[str], budget: int) -> str:
    """Lines in order while they fit `budget` tokens, then the head of the next (cut on a word)."""
    kept: list[str] = []
    used = 0
    for line in lines:
        cost = tokens.count(line + "\n")
        if used + cost <= budget:
            kept.append(line)
            used += cost
            continue
        line_words = line.split()
        low, high = 0, len(line_words)
        while low < high:
            middle = (low + high + 1) // 2
            if used + tokens.count(" ".join(line_words[:middle]) + "\n") <= budget:
                low = middle
            else:
                high = middle - 1
        if low:
            kept.append(" ".join(line_words[:low]))
        break
    return "\n".join(kept)


ROWS = (
    ("search", f"search, passages ({SEARCH_BUDGET} tokens)"),
    ("search_mcp", f"search over MCP, the text ({SEARCH_BUDGET})"),
    (f"bm25_dated_{SEARCH_BUDGET}", f"BM25 over dated turns ({SEARCH_BUDGET})"),
    (f"bm25_{SEARCH_BUDGET}", f"BM25 over turns as said ({SEARCH_BUDGET})"),
    *(
        row
        for budget in CONTEXT_BUDGETS
        for row in (
            (f"context_query_{budget}", f"get_context(query) over MCP ({budget:,})"),
            (f"context_{budget}", f"get_context, recency only, over MCP ({budget:,})"),
            (f"bm25_dated_{budget}", f"BM25 over dated turns ({budget:,})"),
            (f"bm25_{budget}", f"BM25 over turns as said ({budget:,})"),
        )
    ),
)


@dataclass
class Run:
    tallies: dict[str, Tally] = field(default_factory=lambda: {name: Tally() for name, _ in ROWS})
    search_ms: list[float] = field(default_factory=list)
    over_budget: list[str] = field(default_factory=list)


def feed(engine: Engine, conversation: Conversation, session_id: str) -> None:
    for when, turns in conversation.sessions:
        for speaker, text in turns:
            role = "user" if speaker == conversation.speaker_a else "assistant"
            engine.add_message(session_id, role, content=f"{speaker}: {text}", created_at=when.isoformat())
        engine.commit(session_id)
        engine.run_pending_phase2()


async def search_over_mcp(engine: Engine, session_id: str, asked: list[Question]) -> list[str]:
    """The search tool's text for each question, through an in-process MCP client."""
    from mcp import Client

    from viking_mcp.mcp.server import build_server

    texts = []
    async with Client(build_server(engine.settings, engine=engine)) as client:
        for question in asked:
            result = await client.call_tool(
                "search",
                {"query": question.text, "session_id": session_id, "limit": 100, "token_budget": SEARCH_BUDGET},
            )
            texts.append(result.content[0].text if result.content else "")  # type: ignore[union-attr]
    return texts


def run_conversation(conversation: Conversation, home: Path, run: Run, log: Any) -> dict[str, Any]:
    engine = Engine(Settings(home=home))
    tokens = engine.tokens
    try:
        session_id = f"locomo-{conversation.name}"
        feed(engine, conversation, session_id)
        turns = [(when, s, t) for when, session_turns in conversation.sessions for s, t in session_turns]
        said = Bm25([f"{speaker}: {text}" for _, speaker, text in turns])
        dated = Bm25([f"[{when.day} {when:%B %Y}] {speaker}: {text}" for when, speaker, text in turns])
        asked = questions(conversation, words("\n".join(conversation.transcript_lines())))
        mine = Run()
        mcp_texts = asyncio.run(search_over_mcp(engine, session_id, asked))
        for question, mcp_text in zip(asked, mcp_texts, strict=True):
            one = [(question.category, set(question.answer))]
            started = time.perf_counter()
            found = engine.search(question.text, session_id=session_id, limit=100, token_budget=SEARCH_BUDGET)
            mine.search_ms.append((time.perf_counter() - started) * 1000)
            passages = "\n".join(hit.text for hit in found.results)
            read = {"search": passages, "search_mcp": mcp_text}
            for name, text, budget in (("search", passages, SEARCH_BUDGET), ("search_mcp", mcp_text, SEARCH_BUDGET)):
                if tokens.count(text) > budget:
                    mine.over_budget.append(f"{name} {tokens.count(text)} > {budget}: {question.text}")
            for budget in (SEARCH_BUDGET, *CONTEXT_BUDGETS):
                read[f"bm25_{budget}"] = fill(tokens, said.ranked(question.text), budget)
                read[f"bm25_dated_{budget}"] = fill(tokens, dated.ranked(question.text), budget)
            for budget in CONTEXT_BUDGETS:
                with_query = engine.read_context(session_id, budget, query=question.text)
                read[f"context_query_{budget}"] = with_query.text
                if max(tokens.count(with_query.text), with_query.estimated_tokens) > budget:
                    mine.over_budget.append(f"context_query {with_query.estimated_tokens} > {budget}: {question.text}")
            for name, text in read.items():
                mine.tallies[name].add(one, text)
        for budget in CONTEXT_BUDGETS:  # the same for every question
            recency = engine.read_context(session_id, budget).text
            mine.tallies[f"context_{budget}"].add([(q.category, set(q.answer)) for q in asked], recency)
        for name, tally in mine.tallies.items():
            run.tallies[name].merge(tally)
        run.search_ms += mine.search_ms
        run.over_budget += mine.over_budget
        print(
            f"  conversation {conversation.name}: {len(turns)} turns, {len(asked)} questions, search "
            f"{mine.tallies['search'].rate():.2f} vs BM25 {mine.tallies[f'bm25_dated_{SEARCH_BUDGET}'].rate():.2f}, "
            f"get_context(query) "
            + ", ".join(f"{b}: {mine.tallies[f'context_query_{b}'].rate():.2f}" for b in CONTEXT_BUDGETS),
            file=log,
            flush=True,
        )
        return {name: tally.as_json()["overall"] for name, tally in mine.tallies.items()}
    finally:
        engine.close()


def ratio(tallies: dict[str, Tally], name: str, base: str) -> float:
    return tallies[name].rate() / max(tallies[base].rate(), 1e-9)


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "NOT MET"


def targets_table(t: dict[str, Tally]) -> str:
    rows = [
        "## Targets\n",
        "| what | ours | against | ratio | target | verdict |",
        "|---|---:|---|---:|---:|---|",
    ]
    search = ratio(t, "search", f"bm25_dated_{SEARCH_BUDGET}")
    rows.append(
        f"| search, {SEARCH_BUDGET} tokens | {t['search'].rate():.1%} | BM25 over dated turns "
        f"{t[f'bm25_dated_{SEARCH_BUDGET}'].rate():.1%} | {search:.2f}x | {SEARCH_TARGET}x | "
        f"{verdict(search, SEARCH_TARGET)} |"
    )
    for budget in CONTEXT_BUDGETS:
        ours = t[f"context_query_{budget}"]
        for base, label, target in (
            (f"bm25_dated_{budget}", "BM25 over dated turns", CONTEXT_TARGET_BM25),
            (f"context_{budget}", "recency-only get_context", CONTEXT_TARGET_RECENCY),
        ):
            value = ratio(t, f"context_query_{budget}", base)
            rows.append(
                f"| get_context(query), {budget:,} tokens | {ours.rate():.1%} | {label} {t[base].rate():.1%} "
                f"| {value:.2f}x | {target}x | {verdict(value, target)} |"
            )
    return "\n".join(rows) + "\n"


def category_table(t: dict[str, Tally]) -> str:
    rows = category_rows(ROWS, t)
    questions_count = sum(t["search"].total.values())
    return "## Per category\n\n" + "\n".join(rows) + f"\n\n({questions_count} questions)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the LoCoMo zip (locomo10.zip)")
    parser.add_argument("--conversations", type=int, default=None, help="only the first N conversations")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="recall.md/.json")
    args = parser.parse_args(argv)
    conversations = load_conversations(args.data)[: args.conversations]

    started = time.perf_counter()
    run = Run()
    per_conversation = {}
    with tempfile.TemporaryDirectory(prefix="viking-recall-") as scratch:
        for conversation in conversations:
            print(f"conversation {conversation.name} ...", file=sys.stderr, flush=True)
            per_conversation[conversation.name] = run_conversation(
                conversation, Path(scratch) / conversation.name, run, sys.stderr
            )
    seconds = time.perf_counter() - started
    if run.over_budget:
        raise SystemExit("over budget:\n" + "\n".join(run.over_budget[:20]))

    machine = (
        f"Python {platform.python_version()}, {platform.platform()}, "
        f"{len(conversations)} conversations, {seconds:.0f} s"
    )
    p50 = statistics.median(run.search_ms) if run.search_ms else 0.0
    tables = (
        targets_table(run.tallies)
        + "\n"
        + category_table(run.tallies)
        + f"\nsearch latency in this run (engine, one session, 500-token passages): p50 {p50:.2f} ms over "
        f"{len(run.search_ms)} questions; the latency targets are in benchmarks/results/latest.md\n"
    )
    print(f"recall: {machine}\n\n{tables}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine,
        "seconds": round(seconds, 1),
        "totals": {name: run.tallies[name].as_json() for name, _ in ROWS},
        "search_p50_ms": round(p50, 3),
        "conversations": per_conversation,
    }
    (args.out_dir / "recall.json").write_text(json.dumps(result, indent=2) + "\n")
    heading = f"# Recall on LoCoMo\n\n`python benchmarks/recall.py` ({machine})\n\n"
    (args.out_dir / "recall.md").write_text(heading + tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
