"""The real server process, spawned over stdio as Claude Desktop or an IDE would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.conftest import listed_ids, server_env, shown_messages, stdio_params
from viking_mcp.config import Settings
from viking_mcp.engine import Engine

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def wait_for_task(client: Client, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            task = await call(client, "get_task", task_id=task_id)
            if task["status"] in ("completed", "failed"):
                return task
            await anyio.sleep(0.05)


async def test_whole_lifecycle_over_stdio(tmp_path: Path) -> None:
    async with Client(stdio_params(tmp_path / "home")) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"create_session", "add_message", "commit", "get_context", "expand_archive"} <= tools

        created = await call(client, "create_session", session_id="trip", metadata={"topic": "travel"})
        assert created["uri"] == "viking://session/trip"
        assert created["user"] == {"account_id": "default", "user_id": "default", "agent_id": "default"}

        first = await call(
            client, "add_message", session_id="trip", role="user", content="I'm Ada. I fly to Lisbon on 3 May."
        )
        assert first["message_count"] == 1 and first["session_created"] is False
        parts = [
            {"type": "text", "text": "Booked: TAP flight TP1351, seat 14C."},
            {"type": "context", "uri": "viking://user/default/memories/preferences/seats", "context_type": "memory",
             "abstract": "Ada prefers aisle seats"},
            {"type": "tool", "tool_id": "call_1", "tool_name": "book_flight", "tool_input": {"flight": "TP1351"},
             "tool_output": "confirmed", "tool_status": "completed"},
        ]  # fmt: skip
        second = await call(client, "add_message", session_id="trip", role="assistant", parts=parts)
        assert second["message_count"] == 2

        committed = await call(client, "commit", session_id="trip")
        assert committed["status"] == "accepted" and committed["archive_id"] == "archive_001"
        assert committed["archived"] is True and committed["archived_messages"] == 2
        task = await wait_for_task(client, committed["task_id"])
        assert task["status"] == "completed", task
        assert task["task_type"] == "session_commit" and task["resource_id"] == "trip"
        assert task["result"]["archive_uri"] == "viking://session/trip/history/archive_001"

        await call(client, "add_message", session_id="trip", role="user", content="What seat did I get?")
        context = await call(client, "get_context", session_id="trip", token_budget=2000)
        overview = context["context"].split("<overview>\n", 1)[1].split("</overview>")[0]
        assert "Lisbon" in overview
        assert shown_messages(context["context"]) == ["user: What seat did I get?"]
        assert "1 archive (1 in the overview)" in context["context"] and context["estimatedTokens"] <= 2000

        archive = (await call(client, "expand_archive", session_id="trip", archive_id="archive_001"))["archive"]
        lines = archive.splitlines()
        assert (
            lines[0] == "archive_001 of session trip (viking://session/trip/history/archive_001): completed, 2 messages"
        )
        assert lines[1].startswith("abstract: ") and len(lines[1]) > len("abstract: ")
        assert shown_messages(archive) == [
            "user: I'm Ada. I fly to Lisbon on 3 May.",
            "assistant: Booked: TAP flight TP1351, seat 14C.",
        ]
        assert "  [memory: viking://user/default/memories/preferences/seats] Ada prefers aisle seats" in lines
        assert "  [tool book_flight (completed)] {'flight': 'TP1351'} -> confirmed" in lines
        stored = await client.read_resource("viking://session/trip/history/archive_001/messages.jsonl")
        kept = [json.loads(line) for line in stored.contents[0].text.splitlines()]  # type: ignore[union-attr]
        assert kept[1]["parts"] == [{**parts[0]}, {**parts[1]}, {**parts[2], "skill_uri": None}]

        done = await client.read_resource("viking://session/trip/history/archive_001/.done")
        assert done.contents[0].text.startswith("20")  # type: ignore[union-attr]

        tasks = await call(client, "list_tasks", resource_id="trip")
        assert listed_ids(tasks["tasks"]) == [committed["task_id"]] and tasks["next_offset"] is None

        deleted = await call(client, "delete_session", session_id="trip")
        assert deleted == {"session_id": "trip", "deleted": True}
        gone = await client.call_tool("get_session", {"session_id": "trip"})
        assert gone.is_error and "NOT_FOUND" in gone.content[0].text  # type: ignore[union-attr]


async def test_a_restart_resumes_phase_2_left_pending(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # This process takes no Phase 2 work, so the task is still pending when it stops.
    async with Client(stdio_params(home, VIKING_MCP_PHASE2_WORKERS="0")) as client:
        for i in range(20):
            await call(client, "add_message", session_id="s", role="user", content=f"Fact {i}: Ada visited Porto.")
        committed = await call(client, "commit", session_id="s", keep_recent_count=5)
        assert committed["archived_messages"] == 15
        await anyio.sleep(0.3)
        task = await call(client, "get_task", task_id=committed["task_id"])
        assert task["status"] == "pending"

    async with Client(stdio_params(home)) as client:
        task = await wait_for_task(client, committed["task_id"])
        assert task["status"] == "completed"
        archive = await call(client, "expand_archive", session_id="s", archive_id="archive_001", limit=1000)
        context = await call(client, "get_context", session_id="s", token_budget=10_000)
        texts = shown_messages(archive["archive"]) + shown_messages(context["context"])
        assert texts == [f"user: Fact {i}: Ada visited Porto." for i in range(20)]  # none lost, none twice
        done = await client.read_resource("viking://session/s/history/archive_001/.done")
        assert done.contents


CLAIM_AND_HANG = """
import sys, time
from pathlib import Path
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.engine.engine import owner_is_gone, PHASE2_LEASE_SECONDS
from viking_mcp.models import utc_now
engine = Engine(Settings(home=Path(sys.argv[1])))
task = engine.store.claim_phase2(engine.worker_id, utc_now(), time.time() + PHASE2_LEASE_SECONDS, owner_is_gone)
print(task.task_id if task else "none", flush=True)
time.sleep(600)
"""


async def test_a_server_killed_in_the_middle_of_phase_2_is_taken_over(tmp_path: Path) -> None:
    home = tmp_path / "home"
    engine = Engine(Settings(home=home))
    for i in range(10):
        engine.add_message("s", "user", content=f"Note {i}: the boiler was serviced in March.")
    commit = engine.commit("s")
    engine.close()

    # A process claims the Phase 2 task (status running, owned by it) and is killed.
    hung = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_HANG, str(home)], stdout=subprocess.PIPE, text=True, env=server_env(home)
    )
    try:
        assert hung.stdout is not None
        assert hung.stdout.readline().strip() == commit.task_id
    finally:
        os.kill(hung.pid, signal.SIGKILL)
        hung.wait()

    async with Client(stdio_params(home)) as client:
        task = await wait_for_task(client, commit.task_id or "")
        assert task["status"] == "completed"
        archive = (await call(client, "expand_archive", session_id="s", archive_id="archive_001"))["archive"]
        assert archive.splitlines()[0].endswith(": completed, 10 messages") and len(shown_messages(archive)) == 10
        session = await call(client, "get_session", session_id="s")
        assert session["total_message_count"] == 10 and session["commit_count"] == 1


def test_nothing_but_protocol_on_stdout(tmp_path: Path) -> None:
    """Initialize, list tools, exit: every stdout line is JSON-RPC; the rest is on stderr."""
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "viking_mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env(tmp_path / "home", VIKING_MCP_LOG_LEVEL="INFO"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    for request in requests:
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
    lines = [json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())]
    proc.stdin.close()  # the host goes away: the server exits cleanly
    proc.wait(timeout=30)
    assert proc.stderr is not None
    rest, stderr = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert rest == ""
    assert [line.get("id") for line in lines] == [1, 2]
    assert len(lines[1]["result"]["tools"]) == 16
    assert "viking-mcp" in stderr  # the start-up line went to stderr


def test_sigterm_stops_the_server_promptly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "viking_mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(tmp_path / "home", VIKING_MCP_LOG_LEVEL="INFO"),
    )
    assert proc.stderr is not None
    assert b"serving data" in proc.stderr.readline()  # started: stdin still open, nothing sent
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert b"stopping (SIGTERM)" in proc.stderr.read()


@pytest.mark.parametrize(
    ("make_home", "expected"),
    [
        (lambda home: home.write_text("a file, not a folder"), "cannot use the data directory"),
        (lambda home: (home.mkdir(), (home / "viking.db").write_text("not sqlite")), "viking.db is damaged"),
    ],
)
def test_a_bad_data_directory_is_one_clear_line(tmp_path: Path, make_home: Any, expected: str) -> None:
    home = tmp_path / "home"
    make_home(home)
    proc = subprocess.run(
        [sys.executable, "-m", "viking_mcp"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=server_env(home), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("viking-mcp: ") and expected in proc.stderr
    assert "Traceback" not in proc.stderr
