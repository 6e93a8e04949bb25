"""Does appending a message get slower as a session grows? It should not.

    python benchmarks/append_cost.py                 # 10,000 messages, a few seconds
    python benchmarks/append_cost.py --messages 2000 --out /tmp/append_cost.json

Runs the engine in-process (`viking_mcp.engine.Engine`, the embedded SQLite store in a
temporary directory, default settings: WAL, synchronous=NORMAL) and appends N messages
of realistic text (20-80 words, seeded, so every run appends the same text) to one
session, timing each `add_message` call with `time.perf_counter_ns`. Each call is the
whole engine path: validation, token counting with tiktoken, and one SQLite write
transaction.

Two sessions are measured:

- `live`: no commit, so all N messages stay live in one session.
- `with_commits`: a commit every 1,000 messages (Phase 1 timed, inside the append
  loop's wall clock but not in any append's time; Phase 2 is then run in the same
  thread, outside the timings, so the session accumulates completed archives, as it
  would under a server's background worker).

For each it reports p50/p95/p99 of the first 100 appends ("the 100th") and of the last
100 ("the 10,000th" at the default N), and the ratio of the p50s: close to 1 means the
cost of an append does not grow with the session. It also times commit Phase 1 of the
`live` session with all N messages live (`engine.commit`, not waiting for Phase 2).

Prints a markdown table; writes JSON (default benchmarks/results/append_cost.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from viking_mcp import __version__
from viking_mcp.config import Settings
from viking_mcp.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import message_texts  # the same text as the suite's (python -m benchmarks)

WINDOW = 100  # appends per measured window: the first 100 and the last 100
COMMIT_EVERY = 1_000
WARMUP = 1_000  # appends to a throwaway session first, so the first window is not a cold start
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "append_cost.json"


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    """p50/p95/p99 of nanosecond samples, in milliseconds (nearest-rank on the sorted list)."""
    ordered = sorted(samples_ns)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    return {
        "p50_ms": round(statistics.median(ordered) / 1e6, 4),
        "p95_ms": round(rank(95), 4),
        "p99_ms": round(rank(99), 4),
        "mean_ms": round(statistics.fmean(ordered) / 1e6, 4),
    }


def append_all(
    engine: Engine, session_id: str, texts: list[str], commit_every: int | None
) -> tuple[list[int], list[dict[str, Any]]]:
    """Append every text (alternating user/assistant); returns per-append ns and commit records."""
    timings: list[int] = []
    commits: list[dict[str, Any]] = []
    clock = time.perf_counter_ns
    for index, text in enumerate(texts, start=1):
        role = "user" if index % 2 else "assistant"
        start = clock()
        engine.add_message(session_id, role, content=text)
        timings.append(clock() - start)
        if commit_every and index % commit_every == 0 and index < len(texts):
            start = clock()
            result = engine.commit(session_id)
            phase1_ns = clock() - start
            start = clock()
            engine.run_pending_phase2()
            phase2_ns = clock() - start
            commits.append(
                {
                    "after_message": index,
                    "archive_id": result.archive_id,
                    "archived_messages": result.archived_messages,
                    "phase1_ms": round(phase1_ns / 1e6, 3),
                    "phase2_ms": round(phase2_ns / 1e6, 1),
                }
            )
    return timings, commits


def windows(timings: list[int]) -> dict[str, Any]:
    n = len(timings)
    size = min(WINDOW, n // 2)
    first, last = percentiles_ms(timings[:size]), percentiles_ms(timings[n - size :])
    return {
        "window": size,
        "first": {"appends": f"1-{size}", **first},
        "last": {"appends": f"{n - size + 1}-{n}", **last},
        "p50_ratio_last_over_first": round(last["p50_ms"] / first["p50_ms"], 3) if first["p50_ms"] else None,
        "all": percentiles_ms(timings),
    }


def run(messages: int) -> dict[str, Any]:
    texts = message_texts(messages)
    with tempfile.TemporaryDirectory(prefix="viking-bench-") as home:
        engine = Engine(Settings(home=Path(home)))
        try:
            # Load the tokenizer and warm SQLite's caches outside the timings: the first
            # call of a process pays for both, and that is a cold-start cost, not an append cost.
            engine.tokens.warm_up()
            for text in texts[:WARMUP]:
                engine.add_message("warmup", "user", content=text)

            started = time.perf_counter()
            live_ns, _ = append_all(engine, "live", texts, commit_every=None)
            live_seconds = time.perf_counter() - started

            start = time.perf_counter_ns()
            commit = engine.commit("live")
            commit_ns = time.perf_counter_ns() - start
            # Summarise that archive now, so that its Phase 2 is not counted in the next session's.
            start = time.perf_counter_ns()
            engine.run_pending_phase2()
            big_phase2_ns = time.perf_counter_ns() - start

            started = time.perf_counter()
            committed_ns, commits = append_all(engine, "with_commits", texts, commit_every=COMMIT_EVERY)
            committed_seconds = time.perf_counter() - started
            info = engine.get_session("with_commits")
        finally:
            engine.close()
    return {
        "live": {
            **windows(live_ns),
            "messages": messages,
            "wall_seconds": round(live_seconds, 2),
        },
        "with_commits": {
            **windows(committed_ns),
            "messages": messages,
            "commit_every": COMMIT_EVERY,
            "commits": commits,
            "archives_at_end": info.commit_count,
            "live_messages_at_end": info.message_count,
            "wall_seconds": round(committed_seconds, 2),
        },
        "commit_phase1": {
            "live_messages": messages,
            "archived_messages": commit.archived_messages,
            "status": commit.status,
            "ms": round(commit_ns / 1e6, 3),
            "phase2_ms": round(big_phase2_ns / 1e6, 1),
        },
    }


def environment() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "viking_mcp": __version__,
        "sqlite": __import__("sqlite3").sqlite_version,
    }


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for name, label in (("live", "no commits"), ("with_commits", f"commit every {COMMIT_EVERY:,}")):
        data = report[name]
        for key in ("first", "last"):
            w = data[key]
            rows.append(
                f"| {label} | {w['appends']} | {w['p50_ms']:.3f} | {w['p95_ms']:.3f} | {w['p99_ms']:.3f} | "
                + (f"{data['p50_ratio_last_over_first']:.2f} |" if key == "last" else " |")
            )
    commit = report["commit_phase1"]
    phase1 = [c["phase1_ms"] for c in report["with_commits"]["commits"]]
    env = report["environment"]
    lines = [
        f"append_cost: {report['messages']:,} messages per session; "
        f"Python {env['python']}, SQLite {env['sqlite']}, {env['cpu_count']} CPUs, {env['platform']}",
        "",
        "| session | appends | p50 ms | p95 ms | p99 ms | p50 last/first |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"commit Phase 1 with {commit['live_messages']:,} live messages: {commit['ms']:.2f} ms "
        f"({commit['archived_messages']:,} archived; its Phase 2 then took {commit['phase2_ms']:.0f} ms)",
    ]
    if phase1:
        lines.append(
            f"commit Phase 1 every {COMMIT_EVERY:,} messages: median {statistics.median(phase1):.2f} ms, "
            f"max {max(phase1):.2f} ms over {len(phase1)} commits"
        )
        phase2 = [c["phase2_ms"] for c in report["with_commits"]["commits"]]
        lines.append(
            f"commit Phase 2 (offline extractive summariser, {COMMIT_EVERY:,}-message archive; not in any "
            f"append's time): median {statistics.median(phase2):.0f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per session (default 10000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.messages < 2:
        parser.error("--messages must be at least 2")

    report: dict[str, Any] = {"benchmark": "append_cost", "messages": args.messages, "environment": environment()}
    report.update(run(args.messages))
    print(markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
