"""Two real `viking-mcp serve --transport http` instances on one PostgreSQL database, as
behind a load balancer: several HTTP clients write to shared sessions through both, and
nothing is lost or duplicated, archive numbers stay distinct, every Phase 2 runs once;
then one instance is killed in the middle of a Phase 2 and the other finishes it.

Phase 2 goes through a fake LLM endpoint (tests/fake_llm.py) so that the test can hold a
summary in flight for as long as it needs, and count how often each archive was summarised.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLlmServer
from tests.pg_server import PostgresServer
from tests.test_http_api import KEYS, Server, start_server
from viking_mcp.models import archive_id
from viking_mcp.store.postgres import PostgresStore

pytestmark = pytest.mark.slow

SUMMARY = {
    "abstract": "The team planned the Kyoto offsite.",
    "overview": "## Offsite\nThe team planned the Kyoto offsite in April.",
    "memories": [{"category": "events", "abstract": "Planned the Kyoto offsite.", "when": "2026-04-01"}],
}
SESSIONS = ["shared-0", "shared-1", "shared-2"]
CLIENTS, PER_CLIENT, COMMIT_EVERY = 6, 30, 10


class SlowLlm:
    """The fake endpoint, answering after `hold` is released (at once while it is set)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.server = FakeLlmServer(responder=self._reply)

    def _reply(self, _body: dict[str, Any]) -> str:
        self.release.wait(60)
        return json.dumps(SUMMARY)

    def prompts(self) -> list[str]:
        return [r.user for r in self.server.requests]


@pytest.fixture
def llm() -> Iterator[SlowLlm]:
    slow = SlowLlm()
    with slow.server:
        try:
            yield slow
        finally:
            slow.release.set()


def start_instance(root: Path, url: str, llm: SlowLlm) -> Server:
    root.mkdir()
    process, port = start_server(
        root / "home", root,
        VIKING_MCP_API_KEYS=json.dumps(KEYS), VIKING_MCP_STORE=url,
        VIKING_MCP_LLM_MODEL="fake", VIKING_MCP_LLM_BASE_URL=llm.server.base_url, VIKING_MCP_LLM_API_KEY="sk-test",
        VIKING_MCP_LLM_TIMEOUT_SECONDS="90", VIKING_MCP_LLM_MAX_ATTEMPTS="1", VIKING_MCP_LOG_LEVEL="INFO",
        VIKING_MCP_PG_LEASE_SECONDS="3",  # a killed instance's task is taken over when its lease runs out
    )  # fmt: skip
    server = Server(port, process, root / "home", root / "stdout.txt", root / "stderr.txt")
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"an instance exited with {process.returncode}: {server.stderr.read_text()}")
        try:
            if server.raw("GET", "/health")[0] == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"an instance did not answer /health in 60 s: {server.stderr.read_text()}")
        time.sleep(0.1)


@pytest.fixture
def instances(postgres_server: PostgresServer, llm: SlowLlm, tmp_path: Path) -> Iterator[tuple[str, list[Server]]]:
    url = postgres_server.fresh_url()
    PostgresStore(url).close()  # migrated once here; the instances' own runs are the migrate tests'
    servers = [start_instance(tmp_path / name, url, llm) for name in ("a", "b")]
    try:
        yield url, servers
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.process.wait(15)
            except Exception:
                server.process.kill()
                server.process.wait()


def raced(servers: list[Server]) -> int:
    """How many Phase 2 runs found a memory written meanwhile and gave their task back."""
    return sum(s.stderr.read_text().count("raced another writer") for s in servers)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_two_instances_share_sessions_and_finish_a_dead_ones_phase_2(
    instances: tuple[str, list[Server]], llm: SlowLlm
) -> None:
    url, servers = instances
    commits: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS)

    def client(c: int) -> None:
        try:
            barrier.wait(30)
            for n in range(PER_CLIENT):
                session = SESSIONS[(c + n) % len(SESSIONS)]
                via = servers[(c + n) % 2]  # each client's calls alternate between the instances
                body = {
                    "role": "user",
                    "content": f"Client {c} says {n} about the offsite.",
                    "message_id": f"c{c}-{n:03d}",
                }
                via.ok("POST", f"/api/v1/sessions/{session}/messages", body)
                if n % COMMIT_EVERY == COMMIT_EVERY - 1:
                    other = servers[(c + n + 1) % 2]
                    commits.append(other.ok("POST", f"/api/v1/sessions/{session}/commit", {}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors[0]

    store = PostgresStore(url)
    try:
        # No message lost or duplicated; each session's messages numbered 1..n without gaps.
        every_id: list[str] = []
        for session in SESSIONS:
            stored = store.read_messages(session, 0, None, 0, None)
            assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
            every_id += [m.message.id for m in stored]
        expected = [f"c{c}-{n:03d}" for c in range(CLIENTS) for n in range(PER_CLIENT)]
        assert Counter(every_id) == Counter(expected)

        # Distinct archive numbers, 1..k per session, disjoint and covering the archived messages.
        accepted = [c for c in commits if c["status"] == "accepted"]
        assert len({(c["session_id"], c["archive_id"]) for c in accepted}) == len(accepted)
        archives_total = 0
        for session in SESSIONS:
            archives = store.list_archives(session)
            numbers = sorted(
                int(c["archive_id"].removeprefix("archive_")) for c in accepted if c["session_id"] == session
            )
            assert numbers == [a.number for a in archives] == list(range(1, len(archives) + 1))
            spans = [(a.first_seq, a.last_seq) for a in archives]
            assert all(later[0] == earlier[1] + 1 for earlier, later in itertools.pairwise(spans))
            archives_total += len(archives)
        assert archives_total == len(accepted) >= len(SESSIONS)

        # Every Phase 2 ran, on one instance or the other, and its result was written once.
        # Two archives may plan the same new memory at once (the fake LLM gives every archive
        # the same one): the second finds it created meanwhile, writes nothing, and runs
        # again. Each such retry is logged; no other second run may happen (no double claim).
        def all_done() -> bool:
            tasks = store.list_tasks("session_commit", None, None, 500)
            return len(tasks) == archives_total and all(t.status == "completed" for t in tasks)

        wait_until(all_done, 120, "every Phase 2 to complete")
        tasks = store.list_tasks("session_commit", None, None, 500)
        retries = sum(t.attempts - 1 for t in tasks)
        assert retries == raced(servers), [t.attempts for t in tasks]
        assert len(llm.prompts()) == archives_total + retries
        for session in SESSIONS:
            assert {a.status for a in store.list_archives(session)} == {"completed"}
        assert sorted(t.result["archive_uri"] for t in tasks if t.result) == sorted(
            f"viking://session/{c['session_id']}/history/{c['archive_id']}" for c in accepted
        )
        # Both instances answer the same from the shared database.
        contexts = [s.ok("GET", "/api/v1/sessions/shared-0/context?token_budget=2000") for s in servers]
        assert contexts[0] == contexts[1]

        # Now kill, with SIGKILL, the instance running a Phase 2; the other one finishes it.
        llm.release.clear()  # summaries hang until released
        before = len(llm.prompts())
        servers[0].ok("POST", "/api/v1/sessions/doomed/messages", {"role": "user", "content": "Plan the venue."})
        task_id = servers[0].ok("POST", "/api/v1/sessions/doomed/commit", {})["task_id"]
        wait_until(lambda: len(llm.prompts()) == before + 1, 30, "the summary to be in flight")
        running = store.get_task(task_id)
        assert running is not None and running.status == "running" and running.owner is not None
        owner_pid = int(running.owner.split("|")[1])
        victim = next(s for s in servers if s.process.pid == owner_pid)
        survivor = next(s for s in servers if s is not victim)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        llm.release.set()

        finished = survivor.wait_task(task_id, timeout=90)
        assert finished["status"] == "completed", finished
        task = store.get_task(task_id)
        assert task is not None and task.attempts == 2  # the dead instance's try, and the survivor's
        assert len(llm.prompts()) == before + 2
        (archive,) = store.list_archives("doomed")
        assert archive.status == "completed" and archive_id(archive.number) == "archive_001"
        detail = survivor.ok("GET", "/api/v1/sessions/doomed/archives/archive_001")
        assert detail["abstract"] == SUMMARY["abstract"]
    finally:
        store.close()
