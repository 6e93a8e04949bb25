"""The HTTP face: OpenViking's session API and MCP over streamable HTTP, from a real server.

The slow tests start `python -m viking_mcp serve --transport http` on 127.0.0.1 with API
keys in the environment and talk to it with a plain HTTP client, as curl, an
OpenClaw-style plugin, the OpenViking bench client and an MCP host would. The others
run the app in process (no subprocess) for what needs a controlled engine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.testclient import TestClient

from tests.conftest import REPO, listed_ids, server_env, shown_messages
from viking_mcp import __version__
from viking_mcp.api.app import build_app
from viking_mcp.auth import KeyRing
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary

ADA = "key-of-ada-0123456789abcdef"
BOB = "key-of-bob-0123456789abcdef"
BENCH = "key-of-bench-0123456789abcd"
ADMIN = "admin-key-0123456789abcdef"
KEYS = {
    "keys": {
        ADA: {"account_id": "acme", "user_id": "ada", "agent_id": "claude"},
        BOB: {"account_id": "acme", "user_id": "bob", "agent_id": "claude"},
        BENCH: {"account_id": "bench", "user_id": "bench"},
    },
    "admin_keys": [ADMIN],
}
BENCH_SCRIPT = Path(os.environ.get("VIKING_BENCH_SCRIPT", REPO.parent / "shared" / "bench" / "session_api_bench.py"))

NO_KEY = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running `viking-mcp serve --transport http` and a small JSON client for it."""

    port: int
    process: subprocess.Popen[bytes]
    home: Path
    stdout: Path
    stderr: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def raw(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None, *, key: str = ADA) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if key:
            headers["X-API-Key"] = key
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, _, raw = self.raw(method, path, data, headers)
        return status, json.loads(raw)

    def ok(self, method: str, path: str, body: Any = None, *, key: str = ADA) -> Any:
        status, envelope = self.call(method, path, body, key=key)
        assert status == 200, (method, path, envelope)
        assert envelope["status"] == "ok", envelope
        assert isinstance(envelope["time"], float) and envelope["time"] >= 0
        assert set(envelope) == {"status", "result", "time"}
        return envelope["result"]

    def error(self, method: str, path: str, body: Any = None, *, key: str = ADA, status: int, code: str) -> str:
        got, envelope = self.call(method, path, body, key=key)
        assert got == status, (method, path, envelope)
        assert envelope["status"] == "error" and envelope["error"]["code"] == code, envelope
        message: str = envelope["error"]["message"]
        return message

    def wait_task(self, task_id: str, key: str = ADA, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, Any] = self.ok("GET", f"/api/v1/tasks/{task_id}", key=key)
            if task["status"] in ("completed", "failed") or time.monotonic() > deadline:
                return task
            time.sleep(0.05)


def start_server(home: Path, logs: Path, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, "-m", "viking_mcp", "serve", "--transport", "http", "--port", str(port), *args]
    with (logs / "stdout.txt").open("wb") as out, (logs / "stderr.txt").open("wb") as err:
        process = subprocess.Popen(command, env=server_env(home, **env), stdout=out, stderr=err, cwd=logs)
    return process, port


@contextmanager
def http_server(root: Path, *args: str, **env: str) -> Iterator[Server]:
    """`viking-mcp serve --transport http` on data in root/home, from its first /health 200
    until it has stopped on SIGTERM (cleanly, with nothing on stdout)."""
    process, port = start_server(root / "home", root, *args, **env)
    running = Server(port, process, root / "home", root / "stdout.txt", root / "stderr.txt")
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {running.stderr.read_text()}")
        try:
            if running.raw("GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not answer /health in 30 s: {running.stderr.read_text()}")
        time.sleep(0.05)
    try:
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("the server did not stop within 15 s of SIGTERM")
        assert code == 0, running.stderr.read_text()
        assert running.stdout.read_bytes() == b"", "the HTTP server must log to stderr only"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with http_server(tmp_path_factory.mktemp("http"), VIKING_MCP_API_KEYS=json.dumps(KEYS)) as running:
        yield running


# --- 1. OpenViking's documented curl flow ---------------------------------------------------------


@pytest.mark.slow
def test_health_and_openapi_need_no_key(server: Server) -> None:
    status, _, body = server.raw("GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "version": __version__}
    status, _, body = server.raw("GET", "/openapi.json")
    assert status == 200
    paths = json.loads(body)["paths"]
    for path in (
        "/api/v1/sessions",
        "/api/v1/sessions/{session_id}",
        "/api/v1/sessions/{session_id}/messages",
        "/api/v1/sessions/{session_id}/used",
        "/api/v1/sessions/{session_id}/commit",
        "/api/v1/sessions/{session_id}/extract",
        "/api/v1/sessions/{session_id}/context",
        "/api/v1/sessions/{session_id}/archives/{archive_id}",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks",
    ):
        assert path in paths


@pytest.mark.slow
def test_openviking_curl_flow(server: Server) -> None:
    # curl -X POST /api/v1/sessions -d '{}'
    created = server.ok("POST", "/api/v1/sessions", {})
    sid = created["session_id"]
    assert created["uri"] == f"viking://session/{sid}"
    assert created["user"] == {"account_id": "acme", "user_id": "ada", "agent_id": "claude"}

    # content mode
    first = server.ok(
        "POST", f"/api/v1/sessions/{sid}/messages", {"role": "user", "content": "I'm Ada. I fly to Lisbon on 3 May."}
    )
    assert first["session_id"] == sid and first["message_count"] == 1
    assert first["message_id"].startswith("msg_")
    # parts mode (text, context, tool)
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "Booked: TAP flight TP1351, seat 14C."},
        {"type": "context", "uri": "viking://user/ada/memories/preferences/seats", "context_type": "memory",
         "abstract": "Ada prefers aisle seats"},
        {"type": "tool", "tool_id": "call_1", "tool_name": "book_flight", "tool_input": {"flight": "TP1351"},
         "tool_output": "confirmed", "tool_status": "completed"},
    ]  # fmt: skip
    second = server.ok("POST", f"/api/v1/sessions/{sid}/messages", {"role": "assistant", "parts": parts})
    assert second["message_count"] == 2

    used = server.ok(
        "POST",
        f"/api/v1/sessions/{sid}/used",
        {"contexts": ["viking://user/ada/memories/preferences/seats"],
         "skill": {"uri": "viking://agent/claude/skills/booking", "input": "TP1351", "output": "ok", "success": True}},
    )  # fmt: skip
    assert used == {"session_id": sid, "contexts_used": 1, "skills_used": 1}

    info = server.ok("GET", f"/api/v1/sessions/{sid}")
    assert info["message_count"] == 2 and info["commit_count"] == 0
    assert info["pending_tokens"] > 0

    committed = server.ok("POST", f"/api/v1/sessions/{sid}/commit")
    assert committed["status"] == "accepted"
    assert committed["task_id"] and committed["archive_id"] == "archive_001"
    assert committed["archive_uri"] == f"viking://session/{sid}/history/archive_001"
    assert committed["archived"] is True and committed["archived_messages"] == 2

    task = server.wait_task(committed["task_id"])
    assert task["status"] == "completed", task
    assert task["task_type"] == "session_commit" and task["resource_id"] == sid
    assert task["result"]["archive_uri"] == committed["archive_uri"]
    assert set(task) >= {"task_id", "created_at", "updated_at", "error"}

    server.ok("POST", f"/api/v1/sessions/{sid}/messages", {"role": "user", "content": "What seat did I get?"})
    context = server.ok("GET", f"/api/v1/sessions/{sid}/context?token_budget=4000")
    assert context["latest_archive_id"] == "archive_001"
    assert "Lisbon" in context["latest_archive_overview"]
    assert [m["parts"][0]["text"] for m in context["messages"]] == ["What seat did I get?"]
    assert context["stats"]["totalArchives"] == 1 and context["estimatedTokens"] <= 4000
    assert set(context["stats"]) == {
        "totalArchives", "includedArchives", "droppedArchives", "failedArchives", "activeTokens", "archiveTokens"
    }  # fmt: skip
    default_budget = server.ok("GET", f"/api/v1/sessions/{sid}/context")
    assert default_budget["latest_archive_overview"] == context["latest_archive_overview"]

    archive = server.ok("GET", f"/api/v1/sessions/{sid}/archives/archive_001")
    assert archive["status"] == "completed" and archive["abstract"] and archive["overview"]
    assert [m["role"] for m in archive["messages"]] == ["user", "assistant"]
    assert archive["messages"][1]["parts"] == [
        {"type": "text", "text": "Booked: TAP flight TP1351, seat 14C."},
        {**parts[1]},
        {**parts[2], "skill_uri": None},
    ]
    server.error("GET", f"/api/v1/sessions/{sid}/archives/archive_002", status=404, code="NOT_FOUND")

    tasks = server.ok("GET", f"/api/v1/tasks?task_type=session_commit&resource_id={sid}")["tasks"]
    assert [t["task_id"] for t in tasks] == [committed["task_id"]]
    completed = server.ok("GET", "/api/v1/tasks?status=completed&limit=500")["tasks"]
    assert committed["task_id"] in {t["task_id"] for t in completed}
    assert server.ok("GET", f"/api/v1/tasks?status=pending&resource_id={sid}")["tasks"] == []

    listed = server.ok("GET", "/api/v1/sessions?limit=500")
    assert sid in {s["session_id"] for s in listed["sessions"]}

    assert server.ok("DELETE", f"/api/v1/sessions/{sid}") == {"session_id": sid, "deleted": True}
    server.error("GET", f"/api/v1/sessions/{sid}", status=404, code="NOT_FOUND")
    server.error("DELETE", f"/api/v1/sessions/{sid}", status=404, code="NOT_FOUND")
    assert server.ok("GET", f"/api/v1/sessions/{sid}?auto_create=true")["message_count"] == 0


@pytest.mark.slow
def test_sessions_metadata_paging_and_errors(server: Server) -> None:
    created = server.ok("POST", "/api/v1/sessions", {"session_id": "meta-1", "metadata": {"topic": "trip", "n": 1}})
    assert created["metadata"] == {"topic": "trip", "n": 1}
    server.error("POST", "/api/v1/sessions", {"session_id": "meta-1"}, status=409, code="ALREADY_EXISTS")
    merged = server.ok("PATCH", "/api/v1/sessions/meta-1/metadata", {"metadata": {"n": 2, "lang": "pt"}})
    assert merged["metadata"] == {"topic": "trip", "n": 2, "lang": "pt"}
    server.error(
        "POST", "/api/v1/sessions", {"session_id": "meta-2", "user_id": "bob"}, status=403, code="PERMISSION_DENIED"
    )
    for n in range(3):
        server.ok("POST", "/api/v1/sessions", {"session_id": f"page-{n}"})
    first = server.ok("GET", "/api/v1/sessions?limit=2")
    assert len(first["sessions"]) == 2 and first["next_cursor"]
    second = server.ok("GET", f"/api/v1/sessions?limit=2&cursor={first['next_cursor']}")
    assert not {s["session_id"] for s in first["sessions"]} & {s["session_id"] for s in second["sessions"]}
    server.error("GET", "/api/v1/sessions?cursor=bogus", status=400, code="INVALID_ARGUMENT")
    server.error("GET", "/api/v1/sessions/a..b", status=400, code="INVALID_ARGUMENT")
    server.error("POST", "/api/v1/sessions/meta-1/messages", {"role": "user"}, status=400, code="INVALID_ARGUMENT")
    server.error("GET", "/api/v1/no/such/thing", status=404, code="NOT_FOUND")


# --- 2. tenant isolation ------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_user_never_reaches_another_users_data(server: Server) -> None:
    secret = "Ada's passport number is X1234567 and she lives in Porto."
    server.ok("POST", "/api/v1/sessions", {"session_id": "ada-private", "metadata": {"secret": "porto"}})
    server.ok("POST", "/api/v1/sessions/ada-private/messages", {"role": "user", "content": secret})
    tool_call = {"type": "tool", "tool_id": "t1", "tool_name": "payroll_lookup", "tool_input": {"who": "Ada"},
                 "tool_output": "salary 250000", "tool_status": "completed"}  # fmt: skip
    server.ok("POST", "/api/v1/sessions/ada-private/messages", {"role": "assistant", "parts": [tool_call]})
    skill = {"uri": "viking://agent/claude/skills/payroll", "input": "Ada", "output": "250000", "success": True}
    server.ok("POST", "/api/v1/sessions/ada-private/used", {"skill": skill})
    committed = server.ok(
        "POST",
        "/api/v1/sessions/ada-private/commit",
        {"wait": True, "memories": [{"category": "entities", "name": "Porto", "abstract": "Ada lives in Porto"}]},
    )
    assert committed["task_status"] == "completed"
    server.ok("POST", "/api/v1/sessions/ada-private/messages", {"role": "user", "content": secret})
    extracted = server.ok("POST", "/api/v1/sessions/ada-private/extract")
    task_ids = [committed["task_id"], extracted["task_id"]]
    assert server.ok("GET", "/api/v1/memories/search?query=Porto")["memories"], "Ada finds her own memory"
    ada_agent = server.ok("GET", "/api/v1/memories/search?query=payroll")["memories"]
    assert {m["category"] for m in ada_agent} == {"tools", "skills"}  # her agent's memories (same agent as Bob's)

    def no_leak(raw: Any) -> None:
        text = json.dumps(raw)
        for secret_bit in ("X1234567", "Porto", "porto", "payroll", "250000"):
            assert secret_bit not in text, text

    sid = "ada-private"
    reads_and_writes: list[tuple[str, str, Any]] = [
        ("GET", f"/api/v1/sessions/{sid}", None),
        ("DELETE", f"/api/v1/sessions/{sid}", None),
        ("PATCH", f"/api/v1/sessions/{sid}/metadata", {"metadata": {"x": 1}}),
        ("POST", f"/api/v1/sessions/{sid}/used", {"contexts": ["viking://x"]}),
        ("POST", f"/api/v1/sessions/{sid}/commit", {"wait": True}),
        ("POST", f"/api/v1/sessions/{sid}/commit", None),
        ("POST", f"/api/v1/sessions/{sid}/extract", None),
        ("GET", f"/api/v1/sessions/{sid}/context", None),
        ("GET", f"/api/v1/sessions/{sid}/context?query=passport", None),
        ("POST", "/api/v1/search", {"query": "passport", "session_id": sid}),
        ("GET", f"/api/v1/sessions/{sid}/archives/archive_001", None),
        ("POST", f"/api/v1/sessions/{sid}/archives/archive_001/retry", None),
        *(("GET", f"/api/v1/tasks/{task_id}", None) for task_id in task_ids),
    ]
    for method, path, body in reads_and_writes:
        status, envelope = server.call(method, path, body, key=BOB)
        assert status == 404 and envelope["error"]["code"] == "NOT_FOUND", (method, path, envelope)
        no_leak(envelope)
    # Ids are one namespace: Bob cannot take Ada's id, and learns nothing else about it.
    creating: list[tuple[str, str, Any]] = [
        ("POST", f"/api/v1/sessions/{sid}/messages", {"role": "user", "content": "hijack"}),
        ("POST", "/api/v1/sessions", {"session_id": sid}),
        ("GET", f"/api/v1/sessions/{sid}?auto_create=true", None),
    ]
    for method, path, body in creating:
        status, envelope = server.call(method, path, body, key=BOB)
        assert status in (404, 409) and envelope["status"] == "error", (method, path, envelope)
        no_leak(envelope)

    for path in (
        "/api/v1/sessions?limit=500",
        "/api/v1/tasks?limit=500",
        f"/api/v1/tasks?resource_id={sid}",
        "/api/v1/tasks?task_type=session_extract",
    ):
        result = server.ok("GET", path, key=BOB)
        no_leak(result)
        assert sid not in json.dumps(result)
    for query in ("Porto", "passport%20X1234567", "Ada&category=entities", "payroll", "payroll&category=tools"):
        assert server.ok("GET", f"/api/v1/memories/search?query={query}", key=BOB)["memories"] == []
    # Search over everything finds Ada's messages, summaries and memories for Ada, none for Bob.
    everything = {"query": "Ada passport X1234567 Porto payroll salary"}
    assert {hit["kind"] for hit in server.ok("POST", "/api/v1/search", everything)["results"]} == {
        "message",
        "archive",
        "memory",
    }
    for kinds in (None, ["message"], ["archive"], ["memory"]):
        found = server.ok("POST", "/api/v1/search", {**everything, "kinds": kinds}, key=BOB)
        assert found["results"] == [] and found["estimatedTokens"] == 0, found

    # Ada's session is untouched by all of that; the admin key sees it.
    info = server.ok("GET", f"/api/v1/sessions/{sid}")
    assert info["message_count"] == 1 and info["commit_count"] == 1 and info["metadata"] == {"secret": "porto"}
    assert server.ok("GET", f"/api/v1/sessions/{sid}", key=ADMIN)["user"]["user_id"] == "ada"
    assert sid in {s["session_id"] for s in server.ok("GET", "/api/v1/sessions?limit=500", key=ADMIN)["sessions"]}


@pytest.mark.slow
def test_missing_or_wrong_key_is_401(server: Server) -> None:
    for key in (NO_KEY, "wrong-key-0123456789abcdef", ADA + "x", ADA[:-1]):
        for method, path in (("GET", "/api/v1/sessions"), ("GET", "/api/v1/tasks/abc"), ("POST", "/api/v1/sessions")):
            status, envelope = server.call(method, path, {} if method == "POST" else None, key=key)
            assert status == 401, envelope
            assert envelope["status"] == "error" and envelope["error"]["code"] == "UNAUTHENTICATED"
    status, headers, _ = server.raw("GET", "/api/v1/sessions", headers={"Authorization": f"Bearer {ADA}"})
    assert status == 200
    status, headers, body = server.raw("GET", "/api/v1/sessions", headers={"Authorization": f"Basic {ADA}"})
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    # MCP at /mcp takes the same keys.
    init = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    mcp_headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    status, _, body = server.raw("POST", "/mcp", json.dumps(init).encode(), mcp_headers)
    assert status == 401 and json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    status, _, body = server.raw("POST", "/mcp", json.dumps(init).encode(), {**mcp_headers, "X-API-Key": "nope"})
    assert status == 401


@pytest.mark.slow
def test_dns_rebinding_host_is_refused(server: Server) -> None:
    for path in ("/api/v1/sessions", "/mcp", "/health"):
        status, _, body = server.raw("GET", path, headers={"Host": "evil.example:1933", "X-API-Key": ADA})
        assert status == 403 and json.loads(body)["error"]["code"] == "PERMISSION_DENIED"
    assert server.raw("GET", "/health", headers={"Host": f"localhost:{server.port}"})[0] == 200


# --- 3. OpenClaw-style clients -------------------------------------------------------------------------


@pytest.mark.slow
def test_openclaw_style_commit_and_pending_tokens(server: Server) -> None:
    sid = "claw-1"
    before = 0
    for n in range(15):
        body = {"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n}: talk about Lisbon trams",
                "role_id": "ignored", "channel": "discord"}  # fmt: skip
        server.ok("POST", f"/api/v1/sessions/{sid}/messages", body)
        pending = server.ok("GET", f"/api/v1/sessions/{sid}")["pending_tokens"]
        assert pending > before
        before = pending

    committed = server.ok(
        "POST",
        f"/api/v1/sessions/{sid}/commit",
        {"wait": True, "keep_recent_count": 10, "enable_working_memory": True, "telemetry": {"x": [1, 2]}},
    )
    assert committed["status"] == "accepted" and committed["archived_messages"] == 5
    assert committed["task_status"] == "completed" and committed["task_id"] and committed["archive_uri"]
    after = server.ok("GET", f"/api/v1/sessions/{sid}")
    assert after["message_count"] == 10 and after["commit_count"] == 1
    assert 0 < after["pending_tokens"] < before

    for n in range(3):
        server.ok("POST", f"/api/v1/sessions/{sid}/messages", {"role": "user", "content": f"more {n}"})
    camel = server.ok("POST", f"/api/v1/sessions/{sid}/commit", {"keepRecentCount": 2, "wait": True})
    assert camel["archived_messages"] == 11 and camel["archive_id"] == "archive_002"
    assert camel["task_status"] == "completed"

    # A bare POST: no body, no Content-Type.
    status, _, raw = server.raw("POST", f"/api/v1/sessions/{sid}/commit", headers={"X-API-Key": ADA})
    bare = json.loads(raw)
    assert status == 200 and bare["result"]["archived_messages"] == 2 and bare["result"]["task_id"]
    # Empty JSON body and JSON null work too; nothing left to archive then.
    status, _, raw = server.raw(
        "POST", f"/api/v1/sessions/{sid}/commit", b"", {"X-API-Key": ADA, "Content-Type": "application/json"}
    )
    empty = json.loads(raw)["result"]
    assert status == 200 and empty["status"] == "skipped"
    assert empty["archived"] is False and empty["archived_messages"] == 0
    assert server.ok("POST", f"/api/v1/sessions/{sid}/commit", None)["status"] == "skipped"
    assert server.ok("POST", f"/api/v1/sessions/{sid}/commit", {"wait": None})["status"] == "skipped"

    # parts win over content (OpenViking's rule), and OpenViking's extra part fields are dropped
    both = {
        "role": "assistant",
        "content": "not stored",
        "parts": [{"type": "text", "text": "stored"},
                  {"type": "tool", "tool_id": "t1", "tool_name": "search", "tool_uri": "", "tool_input": None}],
    }  # fmt: skip
    server.ok("POST", f"/api/v1/sessions/{sid}/messages", both)
    messages = server.ok("GET", f"/api/v1/sessions/{sid}/context")["messages"]
    assert messages[-1]["parts"][0] == {"type": "text", "text": "stored"}
    assert messages[-1]["parts"][1]["tool_input"] == {}
    # message_id makes a retried add idempotent
    once = {"role": "user", "content": "retry me", "message_id": "m-1"}
    assert server.ok("POST", f"/api/v1/sessions/{sid}/messages", once)["duplicate"] is False
    assert server.ok("POST", f"/api/v1/sessions/{sid}/messages", once)["duplicate"] is True


@pytest.mark.slow
def test_openviking_bench_client_runs_without_error(server: Server, tmp_path: Path) -> None:
    if not BENCH_SCRIPT.exists():
        pytest.skip(f"{BENCH_SCRIPT} is not here (set VIKING_BENCH_SCRIPT)")
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable, str(BENCH_SCRIPT), "--base-url", server.base, "--api-key", BENCH,
            "--auth-scheme", "bearer", "--out", str(out), "--quick", "--max-seconds", "60", "--task-timeout", "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(out.read_text())
    assert result["http"]["errors"] == 0, result["http"]["first_errors"]
    assert "warmup_error" not in result
    assert result["tasks"]["terminal_status_counts"].keys() == {"completed"}, result["tasks"]
    for name in ("a_create_session", "b_add_message_growth", "c_commit"):
        assert not result[name].get("failed"), result[name]
    assert result["server_health"]["status"] == "ok"
    contexts = result["d_get_session_context"]
    assert contexts["archives_3"]["response_has_overview"] is True
    assert all(entry["messages_in_archive"] == 20 for entry in result["e_get_session_archive"]["archives_3"].values()
               if isinstance(entry, dict))  # fmt: skip


# --- 4. MCP over HTTP, the same sessions --------------------------------------------------------------


def mcp_client(server: Server, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=30)
    return Client(streamable_http_client(f"{server.base}/mcp", http_client=http))


async def tool(client: Client, name: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


@pytest.mark.slow
@pytest.mark.anyio
async def test_mcp_over_http_sees_the_same_sessions(server: Server) -> None:
    sid = "shared-1"
    async with mcp_client(server, ADA) as client:
        added = await tool(client, "add_message", session_id=sid, role="user", content="Hello over MCP")
        assert added["session_created"] is True
        rest = await anyio.to_thread.run_sync(lambda: server.ok("GET", f"/api/v1/sessions/{sid}"))
        assert rest["message_count"] == 1 and rest["user"]["user_id"] == "ada"

        await anyio.to_thread.run_sync(
            lambda: server.ok(
                "POST", f"/api/v1/sessions/{sid}/messages", {"role": "assistant", "content": "Hi over REST"}
            )
        )
        context = await tool(client, "get_context", session_id=sid, token_budget=1000)
        assert shown_messages(context["context"]) == ["user: Hello over MCP", "assistant: Hi over REST"]

        committed = await tool(client, "commit", session_id=sid, wait=True)
        assert committed["task_status"] == "completed"
        task = await anyio.to_thread.run_sync(lambda: server.ok("GET", f"/api/v1/tasks/{committed['task_id']}"))
        assert task["status"] == "completed"
        archive = await anyio.to_thread.run_sync(
            lambda: server.ok("GET", f"/api/v1/sessions/{sid}/archives/archive_001")
        )
        assert len(archive["messages"]) == 2

        found = await tool(client, "search", query="Hello over MCP")
        assert "Hello over MCP" in found["results"]

    async with mcp_client(server, BOB) as client:
        result = await client.call_tool("get_context", {"session_id": sid, "token_budget": 1000})
        assert result.is_error and "NOT_FOUND" in str(result.content)
        assert (await tool(client, "search", query="Hello over MCP"))["results"].startswith("(nothing matches")
        result = await client.call_tool("search", {"query": "Hello", "session_id": sid})
        assert result.is_error and "NOT_FOUND" in str(result.content)
        listed = await tool(client, "list_sessions", limit=500)
        assert sid not in listed_ids(listed["sessions"]) and listed["next_cursor"] is None


# --- start-up rules ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_refuses_to_listen_beyond_loopback_without_keys(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "viking_mcp", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "1"]
    done = subprocess.run(command, env=server_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing" in done.stderr and "VIKING_MCP_API_KEYS" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "viking_mcp", "serve", "--transport", "http", "--port", str(port)]
        done = subprocess.run(command, env=server_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "address already in use" in done.stderr and f"127.0.0.1:{port}" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_body_limits_on_the_wire(server: Server) -> None:
    # A declared 3 MiB body is refused from its headers alone: nothing of it is sent.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/sessions/big/messages")
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(3 * 1024 * 1024)),
                            ("X-API-Key", ADA)):  # fmt: skip
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "RESOURCE_EXHAUSTED"
    finally:
        conn.close()

    def chunks() -> Iterator[bytes]:
        yield b'{"role": "user", "content": "'
        for _ in range(48):
            yield b"x" * 65536
        yield b'"}'

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "X-API-Key": ADA}
        # The server may answer and close before the client has sent everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", "/api/v1/sessions/big/messages", body=chunks(), headers=headers, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "RESOURCE_EXHAUSTED"
    finally:
        conn.close()
    server.error("GET", "/api/v1/sessions/big", status=404, code="NOT_FOUND")


# --- in process: archives before Phase 2, failed archives ----------------------------------------------


class Exploding:
    name = "exploding"

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        raise RuntimeError("summariser is down")


@pytest.fixture
def quiet_engine(settings: Settings) -> Iterator[Engine]:
    """No Phase 2 worker: a commit's archive stays pending until the test runs Phase 2."""
    engine = Engine(settings)
    try:
        yield engine
    finally:
        engine.close()


def envelope(response: Any, status: int = 200) -> Any:
    body = response.json()
    assert response.status_code == status, body
    return body["result"] if status == 200 else body["error"]


def test_archive_is_404_until_phase2_completes(quiet_engine: Engine) -> None:
    with TestClient(build_app(quiet_engine.settings, engine=quiet_engine, keyring=KeyRing())) as client:
        envelope(client.post("/api/v1/sessions/s/messages", json={"role": "user", "content": "I live in Porto."}))
        committed = envelope(client.post("/api/v1/sessions/s/commit"))
        assert envelope(client.get(f"/api/v1/tasks/{committed['task_id']}"))["status"] == "pending"
        error = envelope(client.get("/api/v1/sessions/s/archives/archive_001"), 404)
        assert error["code"] == "NOT_FOUND" and "pending" in error["message"]
        context = envelope(client.get("/api/v1/sessions/s/context"))
        assert [m["parts"][0]["text"] for m in context["messages"]] == ["I live in Porto."]

        quiet_engine.run_pending_phase2()
        assert envelope(client.get("/api/v1/sessions/s/archives/archive_001"))["status"] == "completed"
        assert envelope(client.get(f"/api/v1/tasks/{committed['task_id']}"))["status"] == "completed"
        # wait=true with no worker: the request's thread runs Phase 2 itself
        envelope(client.post("/api/v1/sessions/s/messages", json={"role": "user", "content": "More."}))
        waited = envelope(client.post("/api/v1/sessions/s/commit", json={"wait": True}))
        assert waited["task_status"] == "completed"


def test_failed_archive_is_412_until_retried(settings: Settings) -> None:
    engine = Engine(settings, summariser=Exploding())
    try:
        with TestClient(build_app(settings, engine=engine, keyring=KeyRing())) as client:
            envelope(client.post("/api/v1/sessions/s/messages", json={"role": "user", "content": "one"}))
            first = envelope(client.post("/api/v1/sessions/s/commit", json={"wait": True}))
            task = envelope(client.get(f"/api/v1/tasks/{first['task_id']}"))
            assert task["status"] == "failed" and "summariser is down" in task["error"]
            assert envelope(client.get("/api/v1/sessions/s/archives/archive_001"), 404)["code"] == "NOT_FOUND"
            assert envelope(client.get("/api/v1/sessions/s/context"))["stats"]["failedArchives"] == 1

            envelope(client.post("/api/v1/sessions/s/messages", json={"role": "user", "content": "two"}))
            refused = envelope(client.post("/api/v1/sessions/s/commit"), 412)
            assert refused["code"] == "FAILED_PRECONDITION" and "archive_001" in refused["message"]

            skipped = envelope(client.post("/api/v1/sessions/s/archives/archive_001/retry", json={"action": "skip"}))
            assert skipped["status"] == "skipped"
            assert envelope(client.post("/api/v1/sessions/s/commit"))["archive_id"] == "archive_002"
    finally:
        engine.close()


def test_without_a_running_engine_the_api_is_503(settings: Settings) -> None:
    app = build_app(settings, keyring=KeyRing())  # its lifespan never ran: no engine yet
    client = TestClient(app)
    error = envelope(client.get("/api/v1/sessions"), 503)
    assert error["code"] == "UNAVAILABLE"
    assert client.get("/health").status_code == 200


def test_app_lifespan_owns_engine_and_worker(settings: Settings) -> None:
    app = build_app(settings, keyring=KeyRing())
    with TestClient(app) as client:
        envelope(client.post("/api/v1/sessions/w/messages", json={"role": "user", "content": "hello"}))
        committed = envelope(client.post("/api/v1/sessions/w/commit"))
        deadline = time.monotonic() + 20
        while envelope(client.get(f"/api/v1/tasks/{committed['task_id']}"))["status"] != "completed":
            assert time.monotonic() < deadline, "the app's Phase 2 worker did not run the task"
            time.sleep(0.02)
        engine = app.state.viking.engine
        assert engine is not None and engine.has_worker
    assert app.state.viking.engine is None and engine.closed


@pytest.mark.slow
@pytest.mark.anyio
async def test_one_session_through_mcp_rest_and_the_cli(server: Server) -> None:
    """Must show 4: the same session, consistent through MCP over HTTP, REST and the CLI."""
    sid = "three-faces"

    def cli(*args: str) -> Any:
        run = subprocess.run(
            [sys.executable, "-m", "viking_mcp", "--json", "--url", server.base, "--api-key", ADA, *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    async with mcp_client(server, ADA) as client:
        await tool(client, "add_message", session_id=sid, role="user", content="one, over MCP")
        await anyio.to_thread.run_sync(
            lambda: server.ok(
                "POST", f"/api/v1/sessions/{sid}/messages", {"role": "assistant", "content": "two, over REST"}
            )
        )
        await anyio.to_thread.run_sync(
            lambda: cli("session", "add-message", sid, "--role", "user", "--content", "three, from the CLI")
        )
        texts = ["one, over MCP", "two, over REST", "three, from the CLI"]
        shown = ["user: one, over MCP", "assistant: two, over REST", "user: three, from the CLI"]
        over_mcp = await tool(client, "get_context", session_id=sid, token_budget=1000)
        over_rest = await anyio.to_thread.run_sync(
            lambda: server.ok("GET", f"/api/v1/sessions/{sid}/context?token_budget=1000")
        )
        over_cli = await anyio.to_thread.run_sync(lambda: cli("session", "context", sid, "--budget", "1000"))
        for context in (over_rest, over_cli):
            assert [m["parts"][0]["text"] for m in context["messages"]] == texts
        assert over_rest == over_cli
        # MCP shows the model the same messages, as text.
        assert shown_messages(over_mcp["context"]) == shown

        committed = await anyio.to_thread.run_sync(lambda: cli("session", "commit", sid, "--wait"))
        assert committed["archive_id"] == "archive_001"
        archive = await tool(client, "expand_archive", session_id=sid, archive_id="archive_001")
        assert shown_messages(archive["archive"]) == shown
        info = await tool(client, "get_session", session_id=sid)
        rest_info = await anyio.to_thread.run_sync(lambda: server.ok("GET", f"/api/v1/sessions/{sid}"))
        cli_info = await anyio.to_thread.run_sync(lambda: cli("session", "get", sid))
        assert info == rest_info == cli_info
        assert info["commit_count"] == 1 and info["total_message_count"] == 3


def test_an_append_waits_for_another_writer_off_the_event_loop(quiet_engine: Engine) -> None:
    """An append runs on the event loop only when it need not wait: while another process
    holds the write lock it waits on a worker thread, the server answers other requests
    meanwhile, and the append lands once the lock is released."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    settings = quiet_engine.settings
    with TestClient(build_app(settings, engine=quiet_engine, keyring=KeyRing())) as client:
        envelope(client.post("/api/v1/sessions/s/messages", json={"role": "user", "content": "first"}))
        other = sqlite3.connect(settings.database_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with ThreadPoolExecutor(1) as pool:
                second = {"role": "user", "content": "second"}
                pending = pool.submit(client.post, "/api/v1/sessions/s/messages", json=second)
                time.sleep(0.3)
                assert not pending.done()  # still waiting for the lock
                # Had the append blocked the event loop, this request could not be answered now.
                assert envelope(client.get("/api/v1/sessions/s"))["message_count"] == 1
                other.execute("COMMIT")
                assert envelope(pending.result(timeout=10))["message_count"] == 2
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
