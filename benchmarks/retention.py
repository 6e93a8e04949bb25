"""Context retention on LoCoMo: how much of a long conversation get_context still knows.

For each LoCoMo conversation: one session; each LoCoMo session's turns added as messages
(speaker_a as user, speaker_b as assistant, the text prefixed with the speaker's name,
created_at from the session's date), a commit after each LoCoMo session, Phase 2 run in
this thread (the offline extractive summariser, the embedded default). Then, for every
budget, get_context is scored against the QA pairs of categories 1-4 whose answer words
all occur in the full transcript: a question is retained when every word of its answer
(lowercased, alphanumeric runs) occurs in the returned context.

Two readings of get_context are scored: what a model reads over MCP (the one text the
tool returns, framing included, its whole count within the budget: the targets are judged
on it), and the typed fields the HTTP API and the embedded client return (the overview,
the abstracts and the messages' text, the part `estimatedTokens` counts there). Both are
checked to be within the budget, recounted with the project's token counter.

Speaker attribution: every sentence of the overviews and abstracts the model reads that
comes from a message must name who said it (benchmarks/attribution.py); the share that
does is reported per budget.

Baselines, on the same transcript text (a date line per LoCoMo session, then one
"Speaker: text" line per turn): the last N tokens of it (what an agent without memory
keeps, N = the budget) and all of it (the ceiling).

    python benchmarks/retention.py                      # all ten conversations, four budgets
    python benchmarks/retention.py --conversations 1 --budgets 1000 --out-dir /tmp/r
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.models import SessionContext, message_text
from viking_mcp.tokens import TokenCounter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attribution import Attribution, SpeakerIndex

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "locomo10.zip"
DEFAULT_BUDGETS = (1000, 2000, 4000, 8000)
CATEGORIES = (1, 2, 3, 4)
CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
SAMPLE_BUDGET = 4000
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@dataclass
class Conversation:
    name: str
    speaker_a: str
    speaker_b: str
    # (when, [(speaker, text)]) per LoCoMo session, in order
    sessions: list[tuple[datetime, list[tuple[str, str]]]]
    qa: list[dict[str, Any]]

    def transcript_lines(self) -> list[str]:
        lines = []
        for when, turns in self.sessions:
            lines.append(f"[{when:%-I:%M %p on %-d %B %Y}]")
            lines += [f"{speaker}: {text}" for speaker, text in turns]
        return lines


def load_conversations(path: Path) -> list[Conversation]:
    conversations = []
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".json"))
        for name in names:
            data = json.loads(archive.read(name))
            sessions = []
            number = 1
            while f"session_{number}_date_time" in data:
                turns = data.get(f"session_{number}") or []
                if turns:
                    when = datetime.strptime(data[f"session_{number}_date_time"], "%I:%M %p on %d %B, %Y")
                    sessions.append((when, [(t["speaker"], t["text"]) for t in turns]))
                number += 1
            conversations.append(
                Conversation(Path(name).stem, data["speaker_a"], data["speaker_b"], sessions, data["qa"])
            )
    return conversations


def scorable(conversation: Conversation, transcript_words: set[str]) -> list[tuple[int, set[str]]]:
    """(category, answer words) of the questions the transcript can answer at all."""
    questions = []
    for qa in conversation.qa:
        if qa.get("category") not in CATEGORIES or "answer" not in qa:
            continue
        answer = words(str(qa["answer"]))
        if answer and answer <= transcript_words:
            questions.append((qa["category"], answer))
    return questions


def last_tokens(tokens: TokenCounter, lines: list[str], budget: int) -> str:
    """The last `budget` tokens of the transcript: whole lines, then the tail of the first
    line that does not fit whole (cut on a word boundary)."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = tokens.count(line + "\n")
        if used + cost <= budget:
            kept.append(line)
            used += cost
            continue
        line_words = line.split()
        low, high = 0, len(line_words)  # the most trailing words that fit
        while low < high:
            middle = (low + high + 1) // 2
            if used + tokens.count(" ".join(line_words[-middle:]) + "\n") <= budget:
                low = middle
            else:
                high = middle - 1
        if low:
            kept.append(" ".join(line_words[-low:]))
        break
    return "\n".join(reversed(kept))


def context_payload(context: SessionContext) -> list[str]:
    """The texts get_context returns and its budget governs."""
    texts = [context.latest_archive_overview] if context.latest_archive_overview else []
    texts += [a.abstract for a in context.pre_archive_abstracts]
    texts += [message_text(m) for m in context.messages]
    return texts


@dataclass
class Tally:
    retained: dict[int, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    total: dict[int, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    def add(self, questions: list[tuple[int, set[str]]], text: str) -> None:
        present = words(text)
        for category, answer in questions:
            self.total[category] += 1
            self.retained[category] += answer <= present

    def merge(self, other: Tally) -> None:
        for c in CATEGORIES:
            self.retained[c] += other.retained[c]
            self.total[c] += other.total[c]

    def rate(self, category: int | None = None, categories: tuple[int, ...] = CATEGORIES) -> float:
        cats = categories if category is None else (category,)
        total = sum(self.total[c] for c in cats)
        return sum(self.retained[c] for c in cats) / total if total else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "per_category": {
                str(c): {"retained": self.retained[c], "questions": self.total[c], "rate": round(self.rate(c), 4)}
                for c in CATEGORIES
            },
            "overall": {
                "retained": sum(self.retained.values()),
                "questions": sum(self.total.values()),
                "rate": round(self.rate(), 4),
            },
        }


def attributed(index: SpeakerIndex, text: str) -> Attribution:
    """Speaker attribution of the overview and abstracts in what the model reads."""
    found = Attribution()
    overview = text.split("<overview", 1)[1].split("</overview>", 1)[0] if "<overview" in text else ""
    for line in overview.split("\n")[1:]:
        found.add(index.check(line, within_line=not line.startswith("#")))
    abstracts = text.split("<abstracts", 1)[1].split("</abstracts>", 1)[0] if "<abstracts" in text else ""
    for line in abstracts.splitlines()[1:]:
        found.add(index.check(line.split(": ", 1)[-1], within_line=True))
    return found


def run_conversation(
    conversation: Conversation, budgets: list[int], home: Path, log: Any
) -> tuple[dict[str, dict[int, Tally]], dict[str, Any], dict[str, Any] | None]:
    engine = Engine(Settings(home=home))
    try:
        session_id = f"locomo-{conversation.name}"
        phase2_seconds = 0.0
        for when, turns in conversation.sessions:
            created_at = when.isoformat()
            for speaker, text in turns:
                role = "user" if speaker == conversation.speaker_a else "assistant"
                engine.add_message(session_id, role, content=f"{speaker}: {text}", created_at=created_at)
            engine.commit(session_id)
            started = time.perf_counter()
            engine.run_pending_phase2()
            phase2_seconds += time.perf_counter() - started
        archives = engine.store.list_archives(session_id)
        assert all(a.status == "completed" for a in archives), [a.status for a in archives]

        lines = conversation.transcript_lines()
        transcript = "\n".join(lines)
        questions = scorable(conversation, words(transcript))
        tallies: dict[str, dict[int, Tally]] = {"mcp": {}, "ours": {}, "truncation": {}, "ceiling": {}}
        checks: dict[str, Any] = {"budgets": {}, "phase2_seconds": round(phase2_seconds, 2)}
        turns = [(speaker, text) for _, session_turns in conversation.sessions for speaker, text in session_turns]
        index = SpeakerIndex(turns, {conversation.speaker_a, conversation.speaker_b})
        sample = None
        for budget in budgets:
            context = engine.get_context(session_id, budget)
            payload = context_payload(context)
            payload_tokens = sum(engine.tokens.count(t) for t in payload)
            payload_tokens += 4 * len(context.messages)  # a message's overhead, as estimatedTokens counts it
            read = engine.read_context(session_id, budget)
            rendered_tokens = max(engine.tokens.count(read.text), read.estimated_tokens)
            # Python's json.dumps escapes non-ASCII: the contract's framing allowance covers that.
            escaped = engine.tokens.count(json.dumps(read.structured)) - max(50, budget // 50)
            if payload_tokens > budget or context.estimatedTokens > budget or payload_tokens != context.estimatedTokens:
                raise SystemExit(
                    f"conversation {conversation.name}, budget {budget}: payload {payload_tokens} tokens, "
                    f"estimatedTokens {context.estimatedTokens}"
                )
            if max(rendered_tokens, escaped) > budget:
                raise SystemExit(
                    f"conversation {conversation.name}, budget {budget}: MCP text {rendered_tokens} tokens"
                )
            named = attributed(index, read.text)
            checks["budgets"][str(budget)] = {
                "attribution": {"checked": named.checked, "correct": named.correct, "mistakes": named.mistakes[:5]},
                "payload_tokens": payload_tokens,
                "rendered_tokens": rendered_tokens,
                "overview_tokens": engine.tokens.count(context.latest_archive_overview),
                "abstracts": len(context.pre_archive_abstracts),
                "archives": context.stats.totalArchives,
            }
            for name, text in (
                ("mcp", read.text),
                ("ours", "\n".join(payload)),
                ("truncation", last_tokens(engine.tokens, lines, budget)),
                ("ceiling", transcript),
            ):
                tally = Tally()
                tally.add(questions, text)
                tallies[name][budget] = tally
            if budget == SAMPLE_BUDGET:
                sample = {"conversation": conversation.name, "budget": budget, "text": read.text}
        print(
            f"  conversation {conversation.name}: {len(conversation.sessions)} sessions, "
            f"{sum(len(t) for _, t in conversation.sessions)} turns, {len(questions)} questions, "
            f"Phase 2 {phase2_seconds:.1f} s, "
            + ", ".join(f"{b}: {tallies['ours'][b].rate():.2f}/{tallies['truncation'][b].rate():.2f}" for b in budgets),
            file=log,
        )
        return tallies, checks, sample
    finally:
        engine.close()


UNDATED = (1, 3, 4)


def ratio(tallies: dict[str, Tally], name: str, categories: tuple[int, ...] = CATEGORIES) -> float:
    """`name`'s retention over the last-N-tokens baseline's."""
    return tallies[name].rate(categories=categories) / max(tallies["truncation"].rate(categories=categories), 1e-9)


def category_rows(labels: tuple[tuple[str, str], ...], tallies: dict[str, Tally]) -> list[str]:
    """A markdown table: a row per (name, label) of `labels`, its rate per category and overall."""
    head = "| | " + " | ".join(f"{c} {CATEGORY_NAMES[c]}" for c in CATEGORIES) + " | overall |"
    rows = [head, "|---|" + "---:|" * (len(CATEGORIES) + 1)]
    for name, label in labels:
        tally = tallies[name]
        cells = [f"{tally.rate(c):.3f}" for c in CATEGORIES] + [f"**{tally.rate():.3f}**"]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def table(budget: int, tallies: dict[str, Tally]) -> str:
    rows = category_rows(ROWS, tallies)
    questions = sum(tallies["mcp"].total.values())
    # A date answer ("7 May 2023") is matched word by word, so a context dense in dates can
    # match one by chance: the ratio without the temporal category shows what that is worth.
    return (
        f"### {budget:,} tokens\n\n"
        + "\n".join(rows)
        + f"\n\nover MCP / last N tokens: **{ratio(tallies, 'mcp'):.2f}x** overall, "
        f"{ratio(tallies, 'mcp', UNDATED):.2f}x without the temporal category; typed fields: "
        f"{ratio(tallies, 'ours'):.2f}x, {ratio(tallies, 'ours', UNDATED):.2f}x ({questions} questions)\n"
    )


ROWS = (
    ("mcp", "get_context over MCP (the text)"),
    ("ours", "get_context typed fields (HTTP)"),
    ("truncation", "last N tokens"),
    ("ceiling", "full transcript"),
)

# Issue #16: what the model reads over MCP, without the temporal category, at least this
# many times the truncation baseline's retention.
TARGETS = {1000: 2.0, 2000: 1.8, 4000: 1.6, 8000: 1.3}


def targets_table(totals: dict[str, dict[int, Tally]], attribution: dict[int, tuple[int, int]]) -> str:
    rows = [
        "## Targets\n",
        "Judged on what the model reads over MCP, without the temporal category (date answers can "
        "match word by word by chance); speaker attribution over the overviews and abstracts it reads.\n",
        "| budget | target | over MCP, without temporal | verdict | over MCP, overall | typed fields, without "
        "temporal | typed fields, overall | speaker attribution |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for budget, by_name in sorted({b: {n: totals[n][b] for n in totals} for b in totals["mcp"]}.items()):
        target = TARGETS.get(budget)
        undated = ratio(by_name, "mcp", UNDATED)
        verdict = "" if target is None else ("met" if undated >= target else "NOT MET")
        wanted = f"{target:.1f}x" if target is not None else "-"
        checked, correct = attribution.get(budget, (0, 0))
        named = f"{correct / checked:.1%} ({correct:,} of {checked:,})" if checked else "-"
        rows.append(
            f"| {budget:,} | {wanted} | {undated:.2f}x | {verdict} | {ratio(by_name, 'mcp'):.2f}x "
            f"| {ratio(by_name, 'ours', UNDATED):.2f}x | {ratio(by_name, 'ours'):.2f}x | {named} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the LoCoMo zip (locomo10.zip)")
    parser.add_argument("--conversations", type=int, default=None, help="only the first N conversations")
    parser.add_argument("--budgets", type=str, default=",".join(map(str, DEFAULT_BUDGETS)), help="comma-separated")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="retention.md/.json")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    conversations = load_conversations(args.data)[: args.conversations]

    started = time.perf_counter()
    totals: dict[str, dict[int, Tally]] = {n: {b: Tally() for b in budgets} for n, _ in ROWS}
    attribution: dict[int, tuple[int, int]] = {}
    per_conversation: dict[str, Any] = {}
    sample = None
    with tempfile.TemporaryDirectory(prefix="viking-retention-") as scratch:
        for conversation in conversations:
            print(f"conversation {conversation.name} ...", file=sys.stderr, flush=True)
            tallies, checks, found = run_conversation(
                conversation, budgets, Path(scratch) / conversation.name, sys.stderr
            )
            sample = sample or found
            for name, by_budget in tallies.items():
                for budget, tally in by_budget.items():
                    totals[name][budget].merge(tally)
            for budget, check in checks["budgets"].items():
                done = attribution.get(int(budget), (0, 0))
                named = check["attribution"]
                attribution[int(budget)] = (done[0] + named["checked"], done[1] + named["correct"])
            per_conversation[conversation.name] = {
                **checks,
                "results": {n: {str(b): t.as_json()["overall"] for b, t in tallies[n].items()} for n in tallies},
            }
    seconds = time.perf_counter() - started

    machine = (
        f"Python {platform.python_version()}, {platform.platform()}, "
        f"{len(conversations)} conversations, {seconds:.0f} s"
    )
    by_budget = {b: {n: totals[n][b] for n in totals} for b in budgets}
    tables = targets_table(totals, attribution) + "\n" + "\n".join(table(b, by_budget[b]) for b in budgets)
    print(f"retention: {machine}\n\n{tables}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine,
        "seconds": round(seconds, 1),
        "budgets": budgets,
        "totals": {n: {str(b): totals[n][b].as_json() for b in budgets} for n in totals},
        "ratio_mcp": {str(b): round(ratio(by_budget[b], "mcp"), 3) for b in budgets},
        "ratio_mcp_without_temporal": {str(b): round(ratio(by_budget[b], "mcp", UNDATED), 3) for b in budgets},
        "ratio_typed": {str(b): round(ratio(by_budget[b], "ours"), 3) for b in budgets},
        "ratio_typed_without_temporal": {str(b): round(ratio(by_budget[b], "ours", UNDATED), 3) for b in budgets},
        "speaker_attribution": {str(b): {"checked": c, "correct": k} for b, (c, k) in attribution.items()},
        "targets": {str(b): TARGETS[b] for b in budgets if b in TARGETS},
        "conversations": per_conversation,
        "sample": sample,
    }
    (args.out_dir / "retention.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = [f"# Retention on LoCoMo\n\n`python benchmarks/retention.py` ({machine})\n", tables]
    if sample:
        markdown.append(
            f"## Sample: conversation {sample['conversation']} at {sample['budget']:,} tokens\n\n"
            "What the model reads from get_context over MCP (the text; the structured content carries "
            "the same):\n\n"
            f"```text\n{sample['text']}\n```\n"
        )
    (args.out_dir / "retention.md").write_text("\n".join(markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
