"""The data directory every face starts from, built once per run through the engine.

Sessions that a scenario only reads, or that would take too long to build through a
slow face, are made here and the database is copied into each face's own directory:

- `ctx_N` (N = 0, 10, 100, 1000): N completed archives of 4 messages each, then 200
  live messages. Their summaries are supplied with the commit, as an agent would pass
  them, so that building 1,000 archives takes seconds; get_context reads them the
  same way whichever summariser wrote them.
- `expand`: one completed archive of 1,000 messages (offline summariser).
- `c100_I`: sessions of 100 live messages, to commit.
- `c10k_I`: sessions of 10,000 live messages, to commit.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import message_texts, role_of


@dataclass(frozen=True)
class Sizes:
    growth: int  # messages appended to one session through each face
    windows: tuple[int, ...]  # the appends reported: windows of 100 ending at these
    context_archives: tuple[int, ...]
    live_messages: int
    expand_messages: int
    commit_small: int  # sessions of 100 messages to commit
    commit_large: int  # extra sessions of `growth` messages to commit
    reads: int  # repetitions of each read
    cold_starts: int
    round_trips: int  # bare server tool calls
    throughput_messages: int  # per configuration
    bench_quick: bool


FULL = Sizes(
    growth=10_000,
    windows=(100, 1_000, 10_000),
    context_archives=(0, 10, 100, 1_000),
    live_messages=200,
    expand_messages=1_000,
    commit_small=20,
    commit_large=2,
    reads=50,
    cold_starts=15,
    round_trips=1_000,
    throughput_messages=3_000,
    bench_quick=False,
)
QUICK = Sizes(
    growth=1_000,
    windows=(100, 500, 1_000),
    context_archives=(0, 10, 100, 1_000),
    live_messages=200,
    expand_messages=1_000,
    commit_small=3,
    commit_large=1,
    reads=5,
    cold_starts=2,
    round_trips=100,
    throughput_messages=300,
    bench_quick=True,
)

DB_NAME = "viking.db"


def build(home: Path, sizes: Sizes) -> dict[str, float]:
    """Build the template data directory; returns how long each part took (seconds)."""
    from viking_mcp.config import Settings
    from viking_mcp.engine import Engine

    texts = message_texts(max(sizes.growth, 2_000))
    took: dict[str, float] = {}
    engine = Engine(Settings(home=home))
    try:
        started = time.perf_counter()
        for count in sizes.context_archives:
            session = f"ctx_{count}"
            engine.create_session(session)
            for number in range(1, count + 1):
                for index in range(4):
                    engine.add_message(session, role_of(index + 1), content=texts[(number * 4 + index) % len(texts)])
                engine.commit(
                    session,
                    abstract=f"Archive {number}: Ada and the assistant planned the Lisbon trip, hotel and flights.",
                    overview="\n".join(
                        f"- Point {line} of archive {number}: the booking, the budget, the dates." for line in range(30)
                    ),
                    memories=[],
                )
                engine.run_pending_phase2()
            for index in range(sizes.live_messages):
                engine.add_message(session, role_of(index + 1), content=texts[index])
        took["context_sessions"] = time.perf_counter() - started

        started = time.perf_counter()
        for index in range(sizes.expand_messages):
            engine.add_message("expand", role_of(index + 1), content=texts[index % len(texts)])
        engine.commit("expand")
        engine.run_pending_phase2()
        took["expand_session"] = time.perf_counter() - started

        started = time.perf_counter()
        for number in range(sizes.commit_small):
            for index in range(100):
                engine.add_message(f"c100_{number}", role_of(index + 1), content=texts[index])
        for number in range(sizes.commit_large):
            for index in range(sizes.growth):
                engine.add_message(f"c10k_{number}", role_of(index + 1), content=texts[index])
        took["commit_sessions"] = time.perf_counter() - started
    finally:
        engine.close()  # checkpoints the WAL: the database is one file again
    return {k: round(v, 2) for k, v in took.items()}


def copy_to(template: Path, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):  # the WAL is checkpointed at close; copied if it is not
        if (template / (DB_NAME + suffix)).exists():
            shutil.copyfile(template / (DB_NAME + suffix), home / (DB_NAME + suffix))
