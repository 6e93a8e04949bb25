"""Issue 15, the outbound HTTP client: a hostile LLM endpoint, and a hostile `--url` server.

Each test runs the real server (`viking-mcp serve --transport http`) with VIKING_MCP_LLM_*
pointing at tests/fake_llm.py, or the real CLI, and checks what a user would: the commit's
task failed with a reason that says what to fix, the key went nowhere else, nothing was
stored half-way, and nothing resembling the key is in the task, the database, the export
or the log.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLlmServer, Reply
from tests.test_cli import cli, fails
from tests.test_http_api import KEYS, Server, http_server

KEY = "sk-proj-Hostile0123456789abcdefXYZ"

GOOD: dict[str, Any] = {
    "abstract": "Ada planned a trip to Lisbon.",
    "overview": "# Overview\n\n- Ada flies to Lisbon on 3 May.",
    "memories": [
        {"category": "events", "name": "Lisbon trip", "abstract": "Ada flies to Lisbon.", "when": "2024-05-03"}
    ],
}

pytestmark = pytest.mark.slow


# --- helpers -------------------------------------------------------------------------------------


class Recorder:
    """A second listening socket: where a followed redirect would go. Records every connection."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="recorder", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    self.received.append(connection.recv(65536))
                except OSError:
                    self.received.append(b"")

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


class Redirector:
    """An HTTP server that answers everything with a redirect to `target` (a --url gone bad)."""

    def __init__(self, target: str, status: int = 302) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _redirect(self) -> None:
                self.send_response(status)
                self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_DELETE = _redirect

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Redirector:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def llm_server(root: Path, fake: FakeLlmServer, provider: str = "openai", **env: str) -> Iterator[Server]:
    """The real HTTP server with the fake as its LLM endpoint, one try per request."""
    settings = {
        "VIKING_MCP_API_KEYS": json.dumps(KEYS),
        "VIKING_MCP_LLM_MODEL": "fake-model",
        "VIKING_MCP_LLM_PROVIDER": provider,
        "VIKING_MCP_LLM_BASE_URL": fake.url_for(provider),
        "VIKING_MCP_LLM_API_KEY": KEY,
        "VIKING_MCP_LLM_MAX_ATTEMPTS": "1",
        **env,
    }
    with http_server(root, **settings) as server:
        yield server


def commit(server: Server, session_id: str, wait: float = 20.0) -> dict[str, Any]:
    """A session with one message, committed; its Phase 2 task once it has finished (or after `wait`)."""
    server.ok("POST", "/api/v1/sessions", {"session_id": session_id})
    server.ok(
        "POST", f"/api/v1/sessions/{session_id}/messages", {"role": "user", "content": "I fly to Lisbon on 3 May."}
    )
    committed = server.ok("POST", f"/api/v1/sessions/{session_id}/commit")
    return server.wait_task(committed["task_id"], timeout=wait)


def key_fragments() -> set[str]:
    """Every run of 8 characters of the key, lower-cased: none may appear anywhere (B10)."""
    lowered = KEY.lower()
    return {lowered[i : i + 8] for i in range(len(lowered) - 7)}


def assert_no_key(text: str, where: str) -> None:
    lowered = text.lower()
    found = sorted(fragment for fragment in key_fragments() if fragment in lowered)
    assert not found, f"{where} holds pieces of the key: {found}"


# --- B2: redirects are not followed; the key goes nowhere else -----------------------------------


@pytest.mark.parametrize(("provider", "status"), [("openai", 302), ("anthropic", 307)])
def test_a_redirect_from_the_llm_endpoint_is_refused_and_the_key_goes_nowhere(
    tmp_path: Path, provider: str, status: int
) -> None:
    with Recorder() as elsewhere, FakeLlmServer() as fake:
        fake.script([Reply(status=status, headers={"Location": f"{elsewhere.url}/v1/chat/completions?k=1"})])
        with llm_server(tmp_path, fake, provider) as server:
            task = commit(server, "redirected")
        assert elsewhere.received == [], "the redirect was followed"
        assert task["status"] == "failed", task
        assert f"HTTP {status}" in task["error"] and "redirects are not followed" in task["error"]
        assert "VIKING_MCP_LLM_BASE_URL" in task["error"] and "?k=1" not in task["error"]
        assert_no_key(task["error"], "task.error")
        # The endpoint itself did get the key (in the header its provider uses).
        sent = fake.requests[0].headers
        assert sent.get("authorization") == f"Bearer {KEY}" or sent.get("x-api-key") == KEY


def test_the_cli_does_not_follow_a_redirect_with_its_api_key(tmp_path: Path) -> None:
    with Recorder() as elsewhere, Redirector(elsewhere.url) as server:
        done = cli(tmp_path, "--url", server.url, "--api-key", KEY, "session", "list")
        assert elsewhere.received == [], "the CLI followed the redirect"
        message = fails(tmp_path, "--url", server.url, "--api-key", KEY, "session", "list", code="UNAVAILABLE")
        assert "redirected (HTTP 302)" in message and "--url" in message and done.stderr == message


# --- B3: one deadline over each try --------------------------------------------------------------


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_an_endpoint_dripping_bytes_is_cut_at_the_deadline(tmp_path: Path, drip_headers: bool) -> None:
    # A byte every 0.05 s: each read is quick, the whole reply would take over a minute.
    with FakeLlmServer(responder=lambda _request: json.dumps(GOOD)) as fake:
        fake.script([Reply(content=json.dumps(GOOD), drip=0.05, drip_headers=drip_headers)])
        with llm_server(tmp_path, fake, VIKING_MCP_LLM_TIMEOUT_SECONDS="1") as server:
            task = commit(server, "dripped", wait=15)
            assert task["status"] == "failed", f"still {task['status']}: the dripping endpoint holds the worker"
            assert "no answer from http://127.0.0.1" in task["error"] and "within 1 s" in task["error"]
            assert "VIKING_MCP_LLM_TIMEOUT_SECONDS" in task["error"]
            # The Phase 2 worker is free again: the next commit is summarised.
            assert commit(server, "after")["status"] == "completed"


# --- B3b: the reply's size, and what the LLM may write -----------------------------------------


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_a_huge_reply_is_refused_at_the_bound(tmp_path: Path, declare_length: bool) -> None:
    huge = {**GOOD, "overview": "Lisbon. " * 400_000}  # 3.2 MB
    with FakeLlmServer() as fake:
        fake.script([Reply(content=json.dumps(huge), declare_length=declare_length)])
        with llm_server(tmp_path, fake, VIKING_MCP_LLM_MAX_REPLY_BYTES="1000000") as server:
            task = commit(server, "huge")
            archive = server.call("GET", "/api/v1/sessions/huge/archives/archive_001")
    assert task["status"] == "failed", task
    assert "the limit is 1000000 bytes (VIKING_MCP_LLM_MAX_REPLY_BYTES)" in task["error"]
    assert archive[0] == 404 and "Phase 2 failed" in archive[1]["error"]["message"], "nothing stored"


@pytest.mark.parametrize("excess", ["overview", "memories"])
def test_llm_output_is_held_to_the_limits_of_an_agents_commit(tmp_path: Path, excess: str) -> None:
    reply = dict(GOOD)
    if excess == "overview":
        reply["overview"] = "Lisbon. " * 5_000  # 40 KB
    else:
        reply["memories"] = [{"category": "events", "abstract": f"Ada went to place {n}."} for n in range(2_000)]
    limits = {"VIKING_MCP_MAX_SUMMARY_BYTES": "20000"}
    with FakeLlmServer() as fake:
        fake.script([Reply(content=json.dumps(reply))])
        with llm_server(tmp_path, fake, **limits) as server:
            task = commit(server, "flood")
            # An agent sending the same is refused the same way.
            server.ok("POST", "/api/v1/sessions", {"session_id": "agent"})
            server.ok("POST", "/api/v1/sessions/agent/messages", {"role": "user", "content": "hello"})
            code = server.error(
                "POST", "/api/v1/sessions/agent/commit", {excess: reply[excess]}, status=413, code="RESOURCE_EXHAUSTED"
            )
            found = server.ok("GET", "/api/v1/memories/search?query=place")["memories"]
            archive = server.call("GET", "/api/v1/sessions/flood/archives/archive_001")
    assert task["status"] == "failed", task
    assert task["error"].startswith("LlmError: LLM output refused, as an agent's commit would be")
    assert f"{excess} is " in task["error"] and "the limit is 20000" in task["error"] and f"{excess} is " in code
    assert "VIKING_MCP_MAX_SUMMARY_BYTES" in task["error"]
    assert found == [] and archive[0] == 404 and "Phase 2 failed" in archive[1]["error"]["message"]


# --- B10: nothing resembling the key is kept -----------------------------------------------------


def test_an_endpoint_echoing_the_key_changed_gets_it_nowhere(tmp_path: Path) -> None:
    echo = f"Invalid key {KEY.upper()} (starts {KEY[:12]}, ends {KEY[-10:].lower()})"
    written = {
        **GOOD,
        "abstract": f"Ada's key is {KEY.swapcase()}.",
        "overview": f"# Overview\n\nThe key {KEY[3:20]} was used.",
        "memories": [{"category": "entities", "name": KEY[:16].upper(), "abstract": f"A key: {KEY[-12:]}"}],
    }
    with FakeLlmServer() as fake:
        fake.script([Reply(status=401, json_body={"error": {"message": echo}}), Reply(content=json.dumps(written))])
        with llm_server(tmp_path, fake, VIKING_MCP_LOG_LEVEL="DEBUG") as server:
            refused = commit(server, "refused")
            kept = commit(server, "kept")
            archive = server.ok("GET", "/api/v1/sessions/kept/archives/archive_001")
            tasks = json.dumps(server.ok("GET", "/api/v1/tasks"))
            home, log = server.home, server.stderr
    assert refused["status"] == "failed" and "HTTP 401" in refused["error"] and "***" in refused["error"]
    assert kept["status"] == "completed" and "***" in archive["abstract"] + archive["overview"]
    assert_no_key(refused["error"], "task.error")
    assert_no_key(tasks, "GET /tasks")
    assert_no_key(json.dumps(archive), "the archive")
    assert_no_key(log.read_text(), "the server's log")
    database = b"".join(path.read_bytes() for path in sorted(home.glob("viking.db*")))
    assert_no_key(database.decode("latin-1"), "the database")
    exported = tmp_path / "export"
    done = cli(home, "export", str(exported))
    assert done.returncode == 0, done.stderr
    files = [path for path in exported.rglob("*") if path.is_file()]
    assert files and all(KEY[:8].lower() not in path.read_text().lower() for path in files)
    assert_no_key("\n".join(path.read_text() for path in files), "the export")


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (f"key {KEY}", "key ***"),
        (f"key {KEY.upper()}!", "key ***!"),
        (f"[{KEY[:8]}][{KEY[5:14]}][{KEY[-9:].upper()}]", "[***][***][***]"),
        (f"{KEY[:7]} and {KEY[10:17]}", f"{KEY[:7]} and {KEY[10:17]}"),  # 7 characters are not the key
        (
            "sk-proj- is a prefix, not a key: Ünïcode İstanbul stays",
            "*** is a prefix, not a key: Ünïcode İstanbul stays",
        ),
    ],
)
def test_anything_resembling_the_key_is_redacted(text: str, redacted: str) -> None:
    from viking_mcp.memory.llm import redact_secret

    assert redact_secret(text, KEY) == redacted
    assert redact_secret(text, None) == text and redact_secret("abc ABC", "abc") == "abc ABC"
    assert redact_secret("EMPTY is not empty", "EMPTY") == "*** is not empty"  # a placeholder: as it is
