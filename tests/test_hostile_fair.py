"""Issue 15, one tenant starving the others: Phase 2 takes turns between tenants (B4a), and
listing one user's sessions costs the same whatever other tenants hold (B9).

Each runs on both stores. The Phase 2 test floods the queue for one key and commits with
`wait` for another on a real `viking-mcp serve --transport http`; it asserts the order in
which work was done, not how long it took.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLlmServer
from tests.test_http_api import ADA, BOB, KEYS, http_server
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.models import Owner, utc_now
from viking_mcp.store.base import TaskRow

pytestmark = pytest.mark.both_stores

ADA_OWNER = Owner("acme", "ada", "claude")  # the keys' owners in tests/test_http_api.py
BOB_OWNER = Owner("acme", "bob", "claude")
CY_OWNER = Owner("other", "cy", "claude")


def queue_commits(engine: Engine, owner: Owner, sessions: list[str], commits: int) -> None:
    """`commits` add+commit pairs, taking the sessions in turn; Phase 2 is only queued."""
    for n in range(commits):
        session = sessions[n % len(sessions)]
        engine.add_message(session, "user", f"Message {n} of {session}: the Kyoto offsite moved to April.", actor=owner)
        engine.commit(session, actor=owner)


def llm_env(llm: FakeLlmServer) -> dict[str, str]:
    """A server with both users' keys, summarising through the fake endpoint, one try each."""
    return {
        "VIKING_MCP_API_KEYS": json.dumps(KEYS), "VIKING_MCP_LLM_MODEL": "fake",
        "VIKING_MCP_LLM_BASE_URL": llm.base_url, "VIKING_MCP_LLM_API_KEY": "sk-test",
        "VIKING_MCP_LLM_MAX_ATTEMPTS": "1",
    }  # fmt: skip


# --- B4a: Phase 2 round-robin over tenants ---------------------------------------------------


def test_phase2_takes_turns_between_tenants_and_keeps_each_sessions_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_commits(engine, ADA_OWNER, ["ada-0", "ada-1", "ada-2"], 30)
    queue_commits(engine, BOB_OWNER, ["bob-0"], 2)
    queue_commits(engine, CY_OWNER, ["cy-0"], 1)
    claimed: list[TaskRow] = []
    claim = engine.store.claim_phase2

    def recorded(*args: Any) -> TaskRow | None:
        task = claim(*args)
        if task is not None:
            claimed.append(task)
        return task

    monkeypatch.setattr(engine.store, "claim_phase2", recorded)
    assert engine.run_pending_phase2() == 33
    users = [task.user_id for task in claimed]
    # Round-robin from the first claim: Ada's 30 queued first do not hold Bob's or Cy's back.
    assert users[:6] == ["ada", "bob", "cy", "ada", "bob", "ada"], users
    archives: dict[str, list[int | None]] = defaultdict(list)
    for task in claimed:
        archives[task.session_id].append(task.archive_number)
    for session, numbers in archives.items():
        assert numbers == sorted(numbers), (session, numbers)  # a session's archives in order
    assert engine.store.list_tasks("session_commit", "pending", None, 10) == []


SUMMARY = {
    "abstract": "The team moved the Kyoto offsite.",
    "overview": "## Offsite\nThe Kyoto offsite moved to April.",
    "memories": [{"category": "events", "abstract": "The Kyoto offsite moved to April.", "when": "2026-04-01"}],
}


def slow_summary(_request: dict[str, Any]) -> str:
    time.sleep(0.05)  # an endpoint taking its time: the backlog outlasts the test's own calls
    return json.dumps(SUMMARY)


@pytest.mark.slow
def test_a_flood_of_commits_does_not_hold_back_another_keys_commit_and_wait(settings: Settings, tmp_path: Path) -> None:
    """Ada's backlog of 300 Phase 2 tasks is queued before the server starts; Bob then commits
    with wait=true. FIFO made him wait for all of Ada's (the issue: 3,720 tasks ahead, still
    pending after 40 s); taking turns, no task of Ada's starts between his commit and his
    Phase 2 but the one that was running."""
    flood = ["flood-0", "flood-1", "flood-2"]
    engine = Engine(settings)
    try:
        queue_commits(engine, ADA_OWNER, flood, 300)
    finally:
        engine.close()
    with FakeLlmServer(responder=slow_summary) as llm:
        env = llm_env(llm)
        if settings.store is not None:
            env["VIKING_MCP_STORE"] = settings.store
        with http_server(tmp_path, **env) as server:
            message = {"role": "user", "content": "Book the Kyoto hotel."}
            server.ok("POST", "/api/v1/sessions/bob-0/messages", message, key=BOB)
            result = server.ok("POST", "/api/v1/sessions/bob-0/commit", {"wait": True}, key=BOB)
            assert result["task_status"] == "completed", result
            bob = server.ok("GET", f"/api/v1/tasks/{result['task_id']}", key=BOB)
            ada_done = server.ok("GET", "/api/v1/tasks?status=completed&limit=500", key=ADA)["tasks"]
            ada_pending = server.ok("GET", "/api/v1/tasks?status=pending&limit=500", key=ADA)["tasks"]
    # A task's updated_at is when its Phase 2 started, its created_at when its commit began.
    # Between Bob's and his Phase 2, at most two of Ada's started (FIFO: all that were left):
    # the one the worker was taking as he committed, and one taken before his commit's
    # transaction was visible. Her backlog was still there when his finished.
    cut_in = [t for t in ada_done if bob["created_at"] < t["updated_at"] < bob["updated_at"]]
    assert len(cut_in) <= 2, f"{len(cut_in)} of Ada's tasks ran between Bob's commit and his Phase 2"
    assert ada_pending, "Ada's backlog drained before Bob's commit: the test did not test anything"
    engine = Engine(settings)
    try:
        for session in flood:  # Ada's archives were done in order, never one before an earlier one
            statuses = [archive.status for archive in engine.store.list_archives(session)]
            done = statuses.count("completed")
            assert statuses[:done] == ["completed"] * done and "completed" not in statuses[done:], statuses
    finally:
        engine.close()


def queue_raw(engine: Engine, owner: Owner, session_id: str, count: int) -> None:
    """`count` queued Phase 2 tasks of one session, written straight into the tables (fast)."""
    store: Any = engine.store
    engine.create_session(session_id, actor=owner)
    now = utc_now()
    with store._write() as tx:
        tx.executemany(
            "INSERT INTO archives (session_id, archive_no, first_seq, last_seq, message_count, tokens, status, "
            "created_at) VALUES (?, ?, 1, 1, 1, 1, 'pending', ?)",
            [(session_id, n, now) for n in range(1, count + 1)],
        )
        tx.executemany(
            "INSERT INTO tasks (task_id, task_type, status, session_id, archive_no, created_at, updated_at, "
            "account_id, user_id) VALUES (?, 'session_commit', 'pending', ?, ?, ?, ?, ?, ?)",
            [(f"{session_id}-{n}", session_id, n, now, now, owner.account_id, owner.user_id)
             for n in range(1, count + 1)],
        )  # fmt: skip


def test_finding_the_next_phase2_task_reads_the_queue_index(engine: Engine, store_backend: str) -> None:
    """With 3,000 tasks of one tenant queued, a look reads one index entry per tenant, not
    every queued task (timed with 5,000: see docs/RELIABILITY.md)."""
    from viking_mcp.store.sql import QUEUED_TENANTS, tenant_head

    queue_raw(engine, ADA_OWNER, "deep", 3000)
    queue_raw(engine, BOB_OWNER, "bob-0", 1)
    store: Any = engine.store
    if store_backend == "sqlite":
        from viking_mcp.store.sqlite import RUNNABLE_PHASE2

        with store._read() as conn:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {RUNNABLE_PHASE2}")]
            heads = [row[0] for row in conn.execute(RUNNABLE_PHASE2)]
        task_steps = [step for step in plan if step.startswith(("SEARCH t ", "SCAN t"))]
        assert task_steps and all("USING INDEX tasks_queue" in step for step in task_steps), plan
        assert heads == ["deep-1", "bob-0-1"]  # one head per tenant, the oldest runnable
    else:
        with store._write() as tx:
            tx.execute("ANALYZE")
        with store._read() as tx:
            # Bob's oldest task, behind Ada's 3,000: read from his own entries of the index.
            for sql, params in ((QUEUED_TENANTS, ()), (tenant_head("t.task_id", "?", "seq"), ("acme/bob",))):
                plan = "\n".join(row["QUERY PLAN"] for row in tx.execute(f"EXPLAIN {sql}", params))
                assert "Seq Scan on tasks" not in plan and "tasks_queue" in plan, plan
    task = engine.store.claim_phase2("here|1|x", utc_now(), time.time() + 600, lambda *_: False)
    assert task is not None and task.task_id == "deep-1"  # neither served yet: by name, acme/ada first
    task = engine.store.claim_phase2("here|1|x", utc_now(), time.time() + 600, lambda *_: False)
    assert task is not None and task.task_id == "bob-0-1"  # Ada's next is blocked by deep-1 anyway


# --- B9: listing sessions by owner ----------------------------------------------------------


def test_a_users_session_listing_reads_the_owner_first_index(
    engine: Engine, store_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 sessions of another tenant: Ada's pages and Bob's empty one read only their own
    entries of sessions_by_owner (the issue: 0.35 s a page beside a million)."""
    store: Any = engine.store
    now = utc_now()
    with store._write() as tx:
        tx.executemany(
            "INSERT INTO sessions (session_id, account_id, user_id, agent_id, created_at, updated_at) "
            "VALUES (?, 'other', 'mallory', 'x', ?, ?)",
            [(f"m-{n:05d}", now, now) for n in range(3000)],
        )
    for name in ("ada-a", "ada-b", "ada-c"):
        engine.create_session(name, actor=ADA_OWNER)
    selects: list[tuple[str, tuple[Any, ...]]] = []
    select_as = store._select_as

    def recorded(record: Any, sql: str, params: Any) -> list[Any]:
        selects.append((sql, tuple(params)))
        return list(select_as(record, sql, params))

    monkeypatch.setattr(store, "_select_as", recorded)
    first = engine.list_sessions(limit=2, actor=ADA_OWNER)
    assert first.next_cursor is not None
    second = engine.list_sessions(limit=2, cursor=first.next_cursor, actor=ADA_OWNER)
    names = [s.session_id for s in first.sessions + second.sessions]
    assert sorted(names) == ["ada-a", "ada-b", "ada-c"] and len(set(names)) == 3
    assert second.next_cursor is None
    assert engine.list_sessions(actor=BOB_OWNER).sessions == []
    listings = [(sql, params) for sql, params in selects if "FROM sessions" in sql]
    assert len(listings) == 3
    if store_backend == "sqlite":
        with store._read() as conn:
            for sql, params in listings:
                plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
                assert "USING INDEX sessions_by_owner (account_id=? AND user_id=?" in plan, (sql, plan)
    else:
        with store._write() as tx:
            tx.execute("ANALYZE sessions")
        with store._read() as tx:
            for sql, params in listings:
                plan = "\n".join(row["QUERY PLAN"] for row in tx.execute(f"EXPLAIN {sql}", params))
                assert "sessions_by_owner" in plan and "Seq Scan" not in plan, (sql, plan)


# --- B4b: extracts on threads of their own, a few per user --------------------------------------


@pytest.mark.slow
def test_extracts_held_by_a_slow_endpoint_do_not_hold_back_another_users_requests(tmp_path: Path) -> None:
    """45 extracts at once from Ada while the endpoint holds every reply (the issue: on the
    shared pool, Bob's GET /sessions/x then waited 18 s). Two of Ada's run (on threads of
    their own), the others are refused at once with RESOURCE_EXHAUSTED; Bob is answered
    meanwhile, and Ada's two complete once the endpoint answers."""
    release = threading.Event()

    def held(_request: dict[str, Any]) -> str:
        release.wait(60)
        return json.dumps(SUMMARY)

    with FakeLlmServer(responder=held) as llm:
        env = llm_env(llm)
        with http_server(tmp_path, **env) as server:
            server.ok("POST", "/api/v1/sessions/ada-0/messages", {"role": "user", "content": "I moved to Porto."})
            server.ok("POST", "/api/v1/sessions/bob-0/messages", {"role": "user", "content": "Hi."}, key=BOB)
            outcomes: list[tuple[int, str]] = []
            refusals: list[str] = []

            def extract() -> None:
                status, envelope = server.call("POST", "/api/v1/sessions/ada-0/extract")
                outcomes.append((status, envelope["status"] if status == 200 else envelope["error"]["code"]))
                if status != 200:
                    refusals.append(envelope["error"]["message"])

            threads = [threading.Thread(target=extract) for _ in range(45)]
            try:
                for thread in threads:
                    thread.start()
                deadline = time.monotonic() + 30
                while len(outcomes) < 43 and time.monotonic() < deadline:
                    time.sleep(0.05)
                # Ada's two running extracts wait on the endpoint; Bob's calls do not wait for them.
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                conn.request("GET", "/api/v1/sessions/bob-0", headers={"X-API-Key": BOB})
                assert conn.getresponse().status == 200
                conn.close()
                refused = (429, "RESOURCE_EXHAUSTED")  # too many at once: retry later, as B1's cap
                assert sorted(outcomes) == [refused] * 43, outcomes
                assert "VIKING_MCP_EXTRACTS_PER_USER" in refusals[0] and "retry" in refusals[0]
                assert len(llm.requests) <= 2
            finally:
                release.set()
                for thread in threads:
                    thread.join(60)
            assert sorted(outcomes)[:2] == [(200, "ok")] * 2
