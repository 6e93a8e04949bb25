"""Two server processes, one data directory: Claude Desktop and an IDE, each running
`python -m viking_mcp` over stdio on the same VIKING_MCP_HOME, started together on a new
directory. Several agents on each add and commit at once, on shared sessions and on their
own, and sometimes retry an add through the other server.

What must hold: no message lost or stored twice, each agent's messages in the order it
sent them, archives numbered 1..n with disjoint ranges that together with the live
messages hold every message, no archive number returned by two commits, each commit's
count matching its archive, every archive's Phase 2 done once and in order, and both
servers reading back the same thing.

Knobs: VIKING_TWO_SERVERS_STEPS (steps per agent, default 100).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.conftest import listed_ids, message_ids, stdio_params
from tests.crash_driver import content_for
from tests.invariants import Ledger, check_store
from tests.test_stdio_server import call
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.models import archive_id

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

STEPS = int(os.environ.get("VIKING_TWO_SERVERS_STEPS", "100"))
AGENTS = 3  # per server
SHARED = ["shared-1", "shared-2"]


class Agent:
    """One agent talking to one of the two servers; `other` is the other server."""

    def __init__(self, name: str, client: Client, other: Client, ledger: Ledger, figures: Counter[str]) -> None:
        self.name = name
        self.client = client
        self.other = other
        self.ledger = ledger
        self.figures = figures
        self.rng = random.Random(f"{name}-{os.environ.get('VIKING_CRASH_SEED', '')}")
        self.sessions = [*SHARED, f"own-{name}"]
        self.written: list[str] = []  # sessions this agent has added to: they exist

    async def add(self, session: str, message_id: str, client: Client) -> None:
        self.ledger.send(session, message_id)
        added = await call(
            client, "add_message", session_id=session, role=self.rng.choice(["user", "assistant"]),
            content=content_for(message_id), message_id=message_id,
        )  # fmt: skip
        assert added["message_id"] == message_id
        self.ledger.acknowledge(session, message_id)
        if session not in self.written:
            self.written.append(session)
        if added["session_created"]:
            self.figures[f"created {session}"] += 1
        self.figures["duplicates answered" if added["duplicate"] else "adds"] += 1

    async def run(self) -> None:
        for step in range(STEPS):
            roll = self.rng.random()
            if roll < 0.15 and self.written:
                session = self.rng.choice(self.written)
            else:
                session, roll = self.rng.choice(self.sessions), 1.0
            if roll < 0.1:
                committed = await call(
                    self.client, "commit", session_id=session, keep_recent_count=self.rng.choice([0, 0, 2])
                )
                if committed["status"] == "accepted":
                    self.ledger.committed(session, committed["archive_id"], committed["archived_messages"])
                    self.figures["commits"] += 1
                else:
                    self.figures["commits skipped (nothing to archive)"] += 1
            elif roll < 0.15:
                await call(self.client, "get_context", session_id=session, token_budget=self.rng.choice([0, 2000]))
            else:
                message_id = f"{self.name}-{step:03d}"
                await self.add(session, message_id, self.client)
                if self.rng.random() < 0.05:  # a retry of the same add that lands on the other server
                    await self.add(session, message_id, self.other)
                    self.figures["retries through the other server"] += 1


async def settled(client: Client, timeout: float = 120) -> None:
    """Until no Phase 2 task is pending or running."""
    with anyio.fail_after(timeout):
        for status in ("pending", "running", "pending"):
            while listed_ids((await call(client, "list_tasks", status=status, limit=1))["tasks"]):
                await anyio.sleep(0.1)


async def read_back(clients: list[Client], session: str) -> tuple[dict[str, Any], list[str]]:
    """The session as each server sees it (they must agree) and its message ids, archives
    first (each archive read through one server or the other), then the live ones."""
    infos = [await call(c, "get_session", session_id=session) for c in clients]
    for info in infos:
        info.pop("updated_at", None)
    assert infos[0] == infos[1], "the two servers see different sessions"
    info = infos[0]
    ids: list[str] = []
    for number in range(1, info["commit_count"] + 1):
        name = archive_id(number)
        pages = [await call(c, "expand_archive", session_id=session, archive_id=name, limit=1000) for c in clients]
        assert pages[0] == pages[1], "the two servers show an archive differently"
        heading = pages[0]["archive"].splitlines()[0]
        archived = await message_ids(clients[number % 2], f"viking://session/{session}/history/{name}/messages.jsonl")
        assert heading.endswith(f": completed, {len(archived)} messages"), heading
        ids += archived
    contexts = [await call(c, "get_context", session_id=session, token_budget=20_000) for c in clients]
    assert contexts[0] == contexts[1], "the two servers assemble different contexts"
    ids += await message_ids(clients[0], f"viking://session/{session}/messages.jsonl")
    assert len(ids) == info["total_message_count"]
    return info, ids


async def test_two_servers_on_one_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"  # new: the two servers create it together
    ledger = Ledger()
    figures: Counter[str] = Counter()
    started = time.monotonic()
    async with Client(stdio_params(home)) as desktop, Client(stdio_params(home)) as ide:
        clients = [desktop, ide]
        agents = [
            Agent(f"{server}{number}", client, other, ledger, figures)
            for server, client, other in (("desktop", desktop, ide), ("ide", ide, desktop))
            for number in range(AGENTS)
        ]
        with anyio.fail_after(300):
            async with anyio.create_task_group() as group:
                for agent in agents:
                    group.start_soon(agent.run)
        stream_seconds = time.monotonic() - started
        await settled(desktop)
        await settled(ide)

        sessions = sorted({*SHARED, *(f"own-{a.name}" for a in agents)})
        seen: Counter[str] = Counter()
        archives = 0
        for session in sessions:
            info, ids = await read_back(clients, session)
            seen.update(ids)
            archives += info["commit_count"]
            for agent in agents:  # each agent's messages in the order it sent them
                mine = [m for m in ids if m.startswith(f"{agent.name}-")]
                assert mine == sorted(mine), f"{agent.name}'s messages in {session} are out of order"
        tasks: list[dict[str, Any]] = []
        offset = 0
        while offset is not None:  # every commit's task, a page at a time, each read whole
            page = await call(ide, "list_tasks", task_type="session_commit", limit=500, offset=offset)
            tasks += [await call(ide, "get_task", task_id=task_id) for task_id in listed_ids(page["tasks"])]
            offset = page["next_offset"]

    twice = [m for m, n in seen.items() if n > 1]
    assert not twice, f"stored twice: {twice[:5]}"
    created = {name: n for name, n in figures.items() if name.startswith("created ")}
    assert created == {f"created {s}": 1 for s in sessions}, "a session was created twice or never"
    assert set(seen) == ledger.acknowledged == set(ledger.sent), "a message was lost"
    # Phase 2 ran once per archive, and its result names that archive.
    assert all(t["status"] == "completed" for t in tasks)
    done = Counter((t["resource_id"], t["result"]["archive_id"]) for t in tasks)
    assert done == Counter(list(ledger.archives)) and len(done) == archives, "an archive's Phase 2 ran twice or never"

    engine = Engine(Settings(home=home))
    try:
        checked = check_store(engine, ledger)
        for session in SHARED:  # Phase 2 of archive N+1 never finished before archive N's
            done_at = [a.done_at for a in engine.store.list_archives(session)]
            assert done_at == sorted(done_at), f"{session}: Phase 2 finished out of order"
    finally:
        engine.close()
    assert set(checked.archives) == {"completed"}

    print(f"\ntwo stdio servers on one directory, {AGENTS} agents each, {STEPS} steps per agent:", flush=True)
    for name, value in {
        "messages acknowledged (all stored once)": len(ledger.acknowledged),
        **{name: n for name, n in figures.most_common() if not name.startswith("created ")},
        "archives (numbers never reused, ranges disjoint and complete)": archives,
        "archives per shared session": {s: sum(1 for (o, _) in ledger.archives if o == s) for s in SHARED},
        "stream seconds": round(stream_seconds, 1),
        "total seconds": round(time.monotonic() - started, 1),
    }.items():
        print(f"  {name}: {value}", flush=True)
