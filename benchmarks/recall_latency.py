"""How long a search takes: on a 10,000-message session, and on a store of 100 LoCoMo-sized
sessions (issue #17: p50 <= 10 ms on each, engine and MCP faces).

The store is built once through the engine: the ten LoCoMo conversations, ten copies of
each under their own ids (100 sessions, about 60,000 messages, a commit after each LoCoMo
session and its Phase 2 by the offline summariser), owned by ten users (ten sessions
each), beside one session of 10,000 messages (benchmarks/common.py's seeded text, a commit
every 1,000). Then, for each face (the engine in this process; the MCP server in process,
`Client(build_server(...))`), every search is timed around the call:

- `session_10k`: three words of the seeded vocabulary, in that session;
- `locomo_session`: a LoCoMo question, in its conversation's session;
- `locomo_store`: a LoCoMo question over every session (no key: every session is the
  caller's to see, as on a local data directory);
- `locomo_user`: the same as one of the ten users (an API key's caller: its ten sessions).

Each search asks for 10 results within 2,000 tokens (the MCP tool's default budget).

    python benchmarks/recall_latency.py             # the full store, about 2 minutes
    python benchmarks/recall_latency.py --quick     # 10 sessions, a 2,000-message one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import message_texts, role_of, summary_ms
from recall import questions
from retention import DEFAULT_DATA, load_conversations, words

from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.models import Owner

LIMIT = 10
BUDGET = 2000
QUERIES = 200


def build(home: Path, copies: int, big: int) -> dict[str, Any]:
    """The store; what it holds and how long it took."""
    started = time.perf_counter()
    engine = Engine(Settings(home=home))
    asked: list[tuple[str, str]] = []  # (session, question)
    try:
        conversations = load_conversations(DEFAULT_DATA)
        messages = 0
        for copy in range(copies):
            for conversation in conversations:
                session_id = f"locomo-{conversation.name}-{copy}"
                owner = Owner("bench", f"user{copy}")
                for when, turns in conversation.sessions:
                    for speaker, text in turns:
                        role = "user" if speaker == conversation.speaker_a else "assistant"
                        engine.add_message(
                            session_id, role, content=f"{speaker}: {text}", created_at=when.isoformat(), actor=owner
                        )
                        messages += 1
                    engine.commit(session_id, actor=owner)
                engine.run_pending_phase2()
                if copy == 0:
                    found = questions(conversation, words("\n".join(conversation.transcript_lines())))
                    asked += [(session_id, q.text) for q in found]
        texts = message_texts(big)
        for i, text in enumerate(texts):
            engine.add_message("big", role_of(i), content=text)
            if (i + 1) % 1000 == 0:
                engine.commit("big")
        engine.run_pending_phase2()
        engine.store.catch_up_recall()  # a store at rest is indexed (its own thread does it when writes pause)
    finally:
        engine.close()
    rng = random.Random(17)
    rng.shuffle(asked)
    vocabulary = sorted({w.strip(".?!").lower() for t in texts[:200] for w in t.split()})
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "sessions": copies * len(conversations) + 1,
        "messages": messages + big,
        "questions": asked[:QUERIES],
        "big_queries": [" ".join(rng.sample(vocabulary, 3)) for _ in range(QUERIES)],
        "users": copies,
    }


def calls(store: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's search calls, as keyword arguments (`actor` as (account, user))."""
    questions = store["questions"]
    return {
        "session_10k": [{"query": q, "session_id": "big"} for q in store["big_queries"]],
        "locomo_session": [{"query": q, "session_id": s} for s, q in questions],
        "locomo_store": [{"query": q} for _, q in questions],
        # The questions are of the first copy, whose sessions are user0's.
        "locomo_user": [{"query": q, "actor": ("bench", "user0")} for _, q in questions],
    }


def engine_face(home: Path, scenarios: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    engine = Engine(Settings(home=home))
    out: dict[str, Any] = {}
    try:
        for name, arguments in scenarios.items():
            samples, hits = [], 0
            for call in arguments:
                actor = Owner(*call["actor"]) if "actor" in call else None
                started = time.perf_counter_ns()
                found = engine.search(
                    call["query"], call.get("session_id"), limit=LIMIT, token_budget=BUDGET, actor=actor
                )
                samples.append(time.perf_counter_ns() - started)
                hits += len(found.results)
            out[name] = {**summary_ms(samples), "results_per_search": round(hits / max(len(arguments), 1), 1)}
    finally:
        engine.close()
    return out


async def mcp_face(home: Path, scenarios: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The MCP server in process. Without API keys every call is the data directory's owner's, so
    the one-user scenario is left out (over HTTP a key makes the caller; see test_recall.py)."""
    from mcp import Client

    from viking_mcp.mcp.server import build_server

    out: dict[str, Any] = {}
    async with Client(build_server(Settings(home=home), settle_heap=True)) as client:
        tools = await client.list_tools()  # the SDK client's own schema checks are not the server's cost
        client.session._tool_output_schemas.update(dict.fromkeys(t.name for t in tools.tools))
        for name, arguments in scenarios.items():
            if name == "locomo_user":
                continue
            samples = []
            for call in arguments:
                payload = {"query": call["query"], "limit": LIMIT, "token_budget": BUDGET}
                if "session_id" in call:
                    payload["session_id"] = call["session_id"]
                started = time.perf_counter_ns()
                result = await client.call_tool("search", payload)
                samples.append(time.perf_counter_ns() - started)
                if result.is_error:
                    raise RuntimeError(f"search failed: {result.content}")
            out[name] = summary_ms(samples)
    return out


def measure(workdir: Path, quick: bool = False) -> dict[str, Any]:
    home = workdir / "recall-store"
    store = build(home, copies=1 if quick else 10, big=2_000 if quick else 10_000)
    scenarios = calls(store)
    return {
        "store": {k: v for k, v in store.items() if k not in ("questions", "big_queries")},
        "limit": LIMIT,
        "token_budget": BUDGET,
        "engine": engine_face(home, scenarios),
        "mcp_in_process": asyncio.run(mcp_face(home, scenarios)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small store: a smoke run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="viking-recall-latency-") as scratch:
        report = measure(Path(scratch), args.quick)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
