"""The CLI, run the way a person or a script runs it: `python -m viking_mcp ...` in a fresh
data directory, reading what it prints. Remote mode (`--url`) against a real HTTP server
started on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import server_env
from viking_mcp import models
from viking_mcp.cli import render


def cli(home: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viking_mcp", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=server_env(home, **env),
        timeout=120,
    )


def ok(home: Path, *args: str, stdin: str | None = None, **env: str) -> str:
    done = cli(home, *args, stdin=stdin, **env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def as_json(home: Path, *args: str, stdin: str | None = None, **env: str) -> Any:
    return json.loads(ok(home, *args, "--json", stdin=stdin, **env))


def fails(home: Path, *args: str, code: str, status: int = 1, **env: str) -> str:
    """The command fails the documented way: one line `viking-mcp: CODE: ...`, nothing on stdout."""
    done = cli(home, *args, **env)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith(f"viking-mcp: {code}: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    return done.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# --- a session, start to end ---------------------------------------------------------------------


def test_a_session_from_new_to_delete(home: Path) -> None:
    created = ok(home, "session", "new", "--id", "demo", "--metadata", '{"project": "trip"}')
    assert created.startswith("Created session demo.")
    assert "viking://session/demo" in created and '{"project": "trip"}' in created

    added = ok(home, "session", "add-message", "demo", "--role", "user",
               stdin="I'm Ada. I moved to Lisbon in May 2024. I prefer tea over coffee.\n")  # fmt: skip
    assert re.fullmatch(r"Added msg_[0-9a-f]+ to session demo: 1 live message\.\n", added)
    tool = '[{"type": "tool", "tool_id": "t1", "tool_name": "search", "tool_input": {"q": "flats"}, ' \
           '"tool_output": "3 found", "tool_status": "completed"}]'  # fmt: skip
    ok(home, "session", "add-message", "demo", "--role", "assistant", "--parts", tool)

    done = cli(home, "session", "commit", "demo", "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Committed 2 messages of session demo to archive_001.")
    assert "Summarised" in done.stdout
    # not a terminal: the progress indicator is one line
    assert done.stderr == "viking-mcp: committing demo and waiting for its summary...\n"

    ok(home, "session", "add-message", "demo", "--role", "user", "--content", "The deadline is Friday.")
    context = ok(home, "session", "context", "demo", "--budget", "4000")
    assert "Latest archive overview (archive_001):" in context
    assert "user: The deadline is Friday." in context
    assert "Archives: 1 in all" in context

    archive = ok(home, "session", "archive", "demo", "archive_001")
    assert archive.startswith("archive_001 of session demo: completed, 2 messages")
    assert "user: I'm Ada. I moved to Lisbon" in archive and "[tool search (completed)]" in archive

    info = ok(home, "session", "get", "demo")
    assert info.startswith("Session demo\n")
    assert "1 live, 3 in all" in info and "commits" in info

    listing = ok(home, "session", "list")
    assert listing.splitlines()[0].split() == ["SESSION", "LIVE", "MESSAGES", "UPDATED", "METADATA"]
    assert listing.splitlines()[1].startswith("demo ")

    tasks = ok(home, "task", "list")
    assert "session_commit" in tasks and "completed" in tasks
    task_id = tasks.splitlines()[1].split()[0]
    task = ok(home, "task", "get", task_id)
    assert task.startswith(f"Task {task_id}\n") and "archive_001" in task

    found = ok(home, "search", "tea coffee")
    assert "preferences" in found and "viking://user/default/memories/preferences/" in found
    found = ok(home, "search", "tea coffee", "--kinds", "message,archive")
    assert found.startswith("2 results for 'tea coffee', best first") and "viking://session/demo/" in found
    assert "memories/preferences" not in found

    assert ok(home, "session", "delete", "demo").startswith("Deleted session demo")
    fails(home, "session", "get", "demo", code="NOT_FOUND")
    assert "No sessions" in ok(home, "session", "list")


def test_json_output_is_the_result_object(home: Path) -> None:
    created = as_json(home, "session", "new", "--id", "j1")
    assert created["session_id"] == "j1" and created["uri"] == "viking://session/j1"
    added = as_json(home, "session", "add-message", "j1", "--role", "user", "--content", "hello there",
                    "--message-id", "m-1", "--created-at", "2026-01-02T03:04:05Z")  # fmt: skip
    assert added == {"session_id": "j1", "message_id": "m-1", "message_count": 1, "session_created": False,
                     "duplicate": False}  # fmt: skip
    # the global options also go before the command
    again = json.loads(ok(home, "--json", "session", "add-message", "j1", "--role", "user", "--content", "hello there",
                          "--message-id", "m-1"))  # fmt: skip
    assert again["duplicate"] is True and again["message_count"] == 1
    committed = as_json(home, "session", "commit", "j1", "--wait", "--abstract", "Said hello.",
                        "--overview", "# Hello\n\nA greeting.")  # fmt: skip
    assert committed["status"] == "accepted" and committed["task_status"] == "completed"
    assert committed["archive_id"] == "archive_001"
    assert committed["archived"] is True and committed["archived_messages"] == 1
    context = as_json(home, "session", "context", "j1", "--budget", "1000")
    assert context["latest_archive_overview"] == "# Hello\n\nA greeting." and context["messages"] == []
    assert context["stats"]["totalArchives"] == 1
    archive = as_json(home, "session", "archive", "j1", "archive_001")
    assert (
        archive["abstract"] == "Said hello." and archive["messages"][0]["created_at"] == "2026-01-02T03:04:05.000000Z"
    )
    info = as_json(home, "session", "get", "j1")
    assert info["commit_count"] == 1 and info["total_message_count"] == 1
    page = as_json(home, "session", "list", "--limit", "1")
    assert [s["session_id"] for s in page["sessions"]] == ["j1"] and page["next_cursor"] is None
    tasks = as_json(home, "task", "list", "--session", "j1", "--status", "completed", "--type", "session_commit")
    assert [t["task_id"] for t in tasks["tasks"]] == [committed["task_id"]]
    assert as_json(home, "task", "get", committed["task_id"])["result"]["archive_id"] == "archive_001"
    skipped = as_json(home, "session", "commit", "j1")
    assert skipped["status"] == "skipped" and skipped["task_id"] is None
    search = as_json(home, "search", "hello", "--category", "events", "--limit", "5")
    assert search["query"] == "hello" and isinstance(search["memories"], list)
    assert as_json(home, "session", "delete", "j1") == {"session_id": "j1", "deleted": True}


def test_message_text_comes_from_stdin_without_the_final_newline(home: Path) -> None:
    ok(home, "session", "add-message", "s", "--role", "user", stdin="two lines\nof text\n")
    [message] = as_json(home, "session", "context", "s")["messages"]
    assert message["parts"] == [{"type": "text", "text": "two lines\nof text"}]


def test_commit_without_wait_queues_phase_2_and_a_later_wait_runs_it(home: Path) -> None:
    ok(home, "session", "add-message", "q", "--role", "user", "--content", "first")
    queued = ok(home, "session", "commit", "q")
    assert "Summaries and memories follow in the background" in queued
    match = re.search(r"\(task ([0-9a-f]+)\)", queued)
    assert match is not None
    first = match.group(1)
    assert as_json(home, "task", "get", first)["status"] == "pending"
    ok(home, "session", "add-message", "q", "--role", "user", "--content", "second")
    second = as_json(home, "session", "commit", "q", "--wait")
    assert second["task_status"] == "completed"
    assert as_json(home, "task", "get", first)["status"] == "completed"  # run first, in order


def test_keep_recent_leaves_the_newest_messages_live(home: Path) -> None:
    for n in range(5):
        ok(home, "session", "add-message", "k", "--role", "user", "--content", f"message {n}")
    committed = as_json(home, "session", "commit", "k", "--keep-recent", "2")
    assert committed["archived_messages"] == 3
    assert as_json(home, "session", "get", "k")["message_count"] == 2


def test_human_output_is_aligned(home: Path) -> None:
    ok(home, "session", "add-message", "a", "--role", "user", "--content", "hi")
    lines = ok(home, "session", "get", "a").splitlines()[1:]
    columns = {len(re.match(r"\s+\S+(?: \S+)*\s+", line).group(0)) for line in lines}  # type: ignore[union-attr]
    assert len(columns) == 1, lines  # every value starts in the same column
    assert all(len(line) < 120 for line in lines)


def test_the_progress_indicator_spins_on_a_terminal(home: Path) -> None:
    pty = pytest.importorskip("pty")
    ok(home, "session", "add-message", "p", "--role", "user", "--content", "something to summarise")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "viking_mcp", "session", "commit", "p", "--wait"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, env=server_env(home),
        )  # fmt: skip
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert proc.returncode == 0
    assert b"Committed 1 message" in out
    assert re.search(rb"\r\x1b\[K\S+ committing p and waiting for its summary.* \d+s", shown), shown
    assert shown.endswith(b"\r\x1b[K")  # erased at the end


# --- errors ----------------------------------------------------------------------------------------


def test_errors_are_one_coded_line_and_exit_1(home: Path) -> None:
    ok(home, "session", "new", "--id", "here")
    assert "session nope not found" in fails(home, "session", "get", "nope", code="NOT_FOUND")
    fails(home, "session", "context", "nope", code="NOT_FOUND")
    fails(home, "session", "commit", "nope", code="NOT_FOUND")
    fails(home, "session", "delete", "nope", code="NOT_FOUND")
    fails(home, "session", "archive", "here", "archive_001", code="NOT_FOUND")
    fails(home, "task", "get", "0123abcd", code="NOT_FOUND")
    fails(home, "session", "get", "../etc", code="INVALID_ARGUMENT")
    fails(home, "session", "archive", "here", "archive_1", code="INVALID_ARGUMENT")
    fails(home, "session", "context", "here", "--budget", "-1", code="INVALID_ARGUMENT")
    fails(home, "session", "new", "--id", "here", code="ALREADY_EXISTS")
    fails(home, "session", "list", "--limit", "0", code="INVALID_ARGUMENT")
    fails(home, "search", "  ", code="INVALID_ARGUMENT")
    fails(home, "search", "x", "--category", "events", "--session", "s1", code="INVALID_ARGUMENT")
    fails(home, "search", "x", "--since", "last week", code="INVALID_ARGUMENT")


def test_usage_errors_are_one_line_and_exit_2(home: Path) -> None:
    message = fails(home, "session", "add-message", "s", "--role", "robot", code="INVALID_ARGUMENT", status=2)
    assert "--role" in message and "session add-message --help" in message
    fails(home, "session", "new", "--metadata", "[1, 2]", code="INVALID_ARGUMENT", status=2)
    fails(home, "session", "add-message", "s", "--role", "user", "--parts", "not json", code="INVALID_ARGUMENT",
          status=2)  # fmt: skip
    fails(home, "session", "add-message", "s", "--role", "user", "--content", "a", "--parts", "[]",
          code="INVALID_ARGUMENT", status=2)  # fmt: skip
    fails(home, "session", code="INVALID_ARGUMENT", status=2)
    fails(home, "session", "frobnicate", code="INVALID_ARGUMENT", status=2)


def test_a_bad_data_directory_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("a file, not a folder")
    message = fails(home, "session", "list", code="UNAVAILABLE")
    assert "cannot use the data directory" in message


# --- export and import ------------------------------------------------------------------------------


def test_export_and_import_through_the_cli(home: Path, tmp_path: Path) -> None:
    ok(home, "session", "add-message", "x", "--role", "user", "--content", "I'm Ada and I live in Lisbon.")
    ok(home, "session", "commit", "x", "--wait")
    ok(home, "session", "add-message", "x", "--role", "user", "--content", "Still live.")
    exported = ok(home, "export", str(tmp_path / "tree"))
    assert exported.startswith("Exported 1 session (2 messages, 1 archive, 0 tool records), 1 task and")
    assert (tmp_path / "tree" / "session" / "x" / "history" / "archive_001" / ".done").is_file()
    fails(home, "export", str(tmp_path / "tree"), code="FAILED_PRECONDITION")

    copy = tmp_path / "copy"
    counts = as_json(copy, "import", str(tmp_path / "tree"))
    assert counts["sessions"] == 1 and counts["messages"] == 2 and counts["tasks"] == 1
    for args in (["session", "context", "x", "--budget", "50"], ["session", "get", "x"], ["task", "list"],
                 ["session", "archive", "x", "archive_001"], ["search", "Lisbon"]):  # fmt: skip
        assert ok(copy, *args, "--json") == ok(home, *args, "--json"), args
    assert "import with --replace" in fails(copy, "import", str(tmp_path / "tree"), code="ALREADY_EXISTS")
    assert "Imported 1 session" in ok(copy, "import", str(tmp_path / "tree"), "--replace")


# --- remote: a running server's HTTP API ----------------------------------------------------------------

needs_http = pytest.mark.skipif(
    importlib.util.find_spec("viking_mcp.api.app") is None, reason="the HTTP API is not built yet"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`viking-mcp serve --transport http` on loopback, with two API keys; yields its URL and home."""
    home = tmp_path / "server-home"
    port = free_port()
    keys = {"keys": {"key-of-ada-0123456789": {"user_id": "ada"}, "key-of-bob-0123456789": {"user_id": "bob"}}}
    log = tmp_path / "server.log"
    with log.open("w") as stderr:  # a file, not a pipe: nobody has to drain it
        proc = subprocess.Popen(
            [sys.executable, "-m", "viking_mcp", "serve", "--transport", "http", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            env=server_env(home, VIKING_MCP_API_KEYS=json.dumps(keys)),
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield url, home
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@needs_http
@pytest.mark.slow
def test_remote_mode_speaks_the_http_api(server: tuple[str, Path], tmp_path: Path) -> None:
    url, server_home = server
    here = tmp_path / "unused-home"  # remote mode never touches a local data directory
    ada = {"VIKING_MCP_URL": url, "VIKING_MCP_API_KEY": "key-of-ada-0123456789"}
    assert as_json(here, "session", "new", "--id", "r1", **ada)["user"]["user_id"] == "ada"
    ok(here, "session", "add-message", "r1", "--role", "user", "--content", "I'm Ada. I live in Lisbon.", **ada)
    parts = '[{"type": "text", "text": "Noted, Ada."}]'
    ok(here, "session", "add-message", "r1", "--role", "assistant", "--parts", parts, **ada)
    committed = as_json(here, "session", "commit", "r1", "--wait", **ada)
    assert committed["status"] == "accepted" and committed["task_status"] == "completed"
    assert committed["archived"] is True and committed["archived_messages"] == 2
    context = as_json(here, "session", "context", "r1", "--budget", "2000", **ada)
    assert context["latest_archive_id"] == "archive_001" and context["stats"]["totalArchives"] == 1
    assert as_json(here, "session", "archive", "r1", "archive_001", **ada)["message_count"] == 2
    assert as_json(here, "session", "get", "r1", **ada)["commit_count"] == 1
    assert [s["session_id"] for s in as_json(here, "session", "list", **ada)["sessions"]] == ["r1"]
    assert as_json(here, "task", "get", committed["task_id"], **ada)["status"] == "completed"
    assert len(as_json(here, "task", "list", "--session", "r1", **ada)["tasks"]) == 1
    found = as_json(here, "search", "Lisbon", **ada)
    assert any("I live in Lisbon" in hit["text"] for hit in found["results"]), found
    in_session = as_json(here, "search", "Lisbon", "--session", "r1", "--kinds", "message", **ada)
    assert [hit["kind"] for hit in in_session["results"]] == ["message"]
    assert isinstance(as_json(here, "search", "Lisbon", "--category", "profile", **ada)["memories"], list)
    assert "Context:" in ok(here, "session", "context", "r1", **ada)  # human output in remote mode too
    assert not here.exists()

    # the same session, read embedded on the server's data directory, is the same
    local = as_json(server_home, "session", "get", "r1")
    assert local == as_json(here, "session", "get", "r1", **ada)

    # errors arrive coded, as embedded; another user's session is not found
    bob = {"VIKING_MCP_URL": url, "VIKING_MCP_API_KEY": "key-of-bob-0123456789"}
    fails(here, "session", "get", "r1", code="NOT_FOUND", **bob)
    fails(here, "session", "get", "nope", code="NOT_FOUND", **ada)
    fails(here, "session", "list", code="UNAUTHENTICATED", VIKING_MCP_URL=url)
    fails(here, "--url", url, "--api-key", "wrong-key-0123456789", "session", "list", code="UNAUTHENTICATED")
    fails(here, "export", str(tmp_path / "tree"), code="FAILED_PRECONDITION", **ada)
    assert as_json(here, "session", "delete", "r1", **ada)["deleted"] is True
    fails(here, "session", "get", "r1", code="NOT_FOUND", **ada)


def test_a_commit_result_from_an_older_server_still_reads() -> None:
    """Servers before `archived` became OpenViking's boolean sent the count in it; remote mode
    reads that as archived=true plus the count, and prints the count."""
    old = {"session_id": "r1", "status": "accepted", "task_id": "t1", "archive_id": "archive_001",
           "archive_uri": "viking://session/r1/history/archive_001", "archived": 3}  # fmt: skip
    result = models.CommitResult.model_validate(old)
    assert result.archived is True and result.archived_messages == 3
    assert render.commit_result(result).startswith("Committed 3 messages of session r1 to archive_001.")
    skipped = models.CommitResult.model_validate({**old, "status": "skipped", "archived": 0})
    assert skipped.archived is False and skipped.archived_messages == 0
    new = models.CommitResult.model_validate({**old, "archived": True, "archived_messages": 5})
    assert new.archived is True and new.archived_messages == 5


def test_an_unreachable_server_is_one_line(home: Path) -> None:
    message = fails(home, "--url", f"http://127.0.0.1:{free_port()}", "session", "list", code="UNAVAILABLE")
    assert "cannot reach" in message
    fails(home, "--url", "ftp://example.org", "session", "list", code="INVALID_ARGUMENT")


def test_remote_mode_checks_ids_urls_and_keys_before_sending(home: Path) -> None:
    """No server is needed: what embedded mode refuses as INVALID_ARGUMENT, remote mode refuses
    before building a request, instead of INTERNAL or a 404 for a path that is no endpoint."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would be UNAVAILABLE
    for args in (
        ("session", "get", ""),
        ("session", "get", "a/b"),
        ("session", "delete", ".."),
        ("session", "context", "a b"),
        ("session", "commit", "a/b"),
        ("session", "add-message", "a/b", "--role", "user", "--content", "hi"),
        ("session", "archive", "s", "archive_1"),
        ("session", "archive", "s", "../x"),
        ("session", "new", "--id", "a/b"),
        ("task", "get", ""),
        ("task", "get", "a/b"),
        ("task", "list", "--session", "a/b"),
    ):
        fails(home, "--url", url, *args, code="INVALID_ARGUMENT")
    for bad in ("http://[::1", "http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://exa mple.org", "http://"):
        assert "--url" in fails(home, "--url", bad, "session", "list", code="INVALID_ARGUMENT")
    for key in ("a\nb", "key\r\nX-Other: 1", "\x01key", "clé"):
        message = fails(home, "--url", url, "--api-key", key, "session", "list", code="INVALID_ARGUMENT")
        assert "--api-key" in message
    fails(home, "session", "list", code="INVALID_ARGUMENT", VIKING_MCP_URL=url, VIKING_MCP_API_KEY="a\tb")
    fails(home, "--url", url, "--api-key", "a key with spaces", "session", "list", code="UNAVAILABLE")
