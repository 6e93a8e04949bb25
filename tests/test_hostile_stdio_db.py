"""Hostile stdio lines and a damaged database file (issue 15, B6 and B7), on real server processes.

B6: a JSON-RPC batch on stdin is refused whole, each request in it answered with an error
under its own id, and logged; the server then carries on.
B7: a database file with zeroed pages is refused at start with a coded error that names the
file and says how to recover, and is not changed; damage met while serving is a coded error,
and the file is not written to after it.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mcp_types import INVALID_REQUEST

from tests.conftest import server_env
from tests.test_bad_input import RawStdioServer, tool_call
from tests.test_http_api import NO_KEY, http_server
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.mcp.stdio import AnsweredStdin

# --- B6: a JSON-RPC batch on stdin ---------------------------------------------------------------


@pytest.mark.parametrize("protocol_version", ["2025-03-26", "2025-11-25"])
def test_a_batch_on_stdin_is_refused_per_request_and_runs_nothing(tmp_path: Path, protocol_version: str) -> None:
    stderr = tmp_path / "stderr.txt"
    server = RawStdioServer(tmp_path / "home", stderr, protocol_version)
    try:
        batch = [
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
            tool_call(2, "add_message", {"session_id": "batched", "role": "user", "content": "in a batch"}),
            tool_call(2, "add_message", {"session_id": "batched", "role": "user", "content": "the same id again"}),
        ]
        server.send_json(batch)
        server.send_json({"jsonrpc": "2.0", "id": 3, "method": "ping"})
        answers = server.receive_ids({1, 2, 3})
        assert answers[3] == {"jsonrpc": "2.0", "id": 3, "result": {}}
        for request_id in (1, 2):
            assert answers[request_id]["error"]["code"] == INVALID_REQUEST, answers
            message = answers[request_id]["error"]["message"]
            assert "does not take JSON-RPC batches" in message and "a line of its own" in message
        # Nothing of the batch ran: the session it would have created does not exist.
        server.send_json(tool_call(4, "get_session", {"session_id": "batched"}))
        answer = server.receive()
        assert answer["id"] == 4 and answer["result"]["isError"] is True
        assert "NOT_FOUND:" in answer["result"]["content"][0]["text"]
        # The same requests, one per line, are served.
        server.send_json(
            tool_call(5, "add_message", {"session_id": "batched", "role": "user", "content": "one by one"})
        )
        assert server.receive()["result"]["structuredContent"]["message_count"] == 1
    finally:
        server.close()
    log = stderr.read_text()
    assert "refused a JSON-RPC batch of 4 messages" in log and "ids 1, 2" in log, log


def test_a_batch_with_no_request_in_it_is_logged_and_answers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Nobody waits for an answer to a notification (or to an empty batch): nothing is sent,
    and the batch is still not run."""
    notification = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    lines = [json.dumps(line).encode() for line in ([], [notification], [7, "x"], ping)]
    reader = io.BufferedReader(AnsweredStdin(io.BytesIO(b"".join(line + b"\n" for line in lines))))
    assert reader.read().splitlines() == [lines[-1]]
    refusals = [r.getMessage() for r in caplog.records if "refused a JSON-RPC batch" in r.getMessage()]
    assert [m.split(",")[0] for m in refusals] == [f"refused a JSON-RPC batch of {n} messages" for n in (0, 1, 2)]


# --- B7: a damaged database file -------------------------------------------------------------------

LONG_TAIL = b"END-OF-THE-LONG-MESSAGE"


def build_database(home: Path) -> Path:
    """A real database of 2,001 messages in 21 sessions; the last one, in session `long`, is
    longer than a page, so that its end is stored on an overflow page of its own."""
    settings = Settings(home=home)
    engine = Engine(settings)
    try:
        for session in range(20):
            for number in range(100):
                text = f"message {number} of session {session}: " + "words of the conversation " * 8
                engine.add_message(f"s{session:02d}", "user" if number % 2 == 0 else "assistant", text)
        engine.add_message("long", "user", "L" * 12_000 + " " + LONG_TAIL.decode())
    finally:
        engine.close()
    assert not (home / "viking.db-wal").exists() or (home / "viking.db-wal").stat().st_size == 0
    return settings.database_path


def page_size(data: bytes) -> int:
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


def zero_pages(db: Path, first: int, count: int) -> bytes:
    """Zero `count` pages of the file from page index `first`; the damaged bytes."""
    data = bytearray(db.read_bytes())
    size = page_size(data)
    data[first * size : (first + count) * size] = bytes(count * size)
    db.write_bytes(data)
    return bytes(data)


def quick_check(db: Path) -> list[str]:
    """What SQLite's own check finds in the file, read-only."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        conn.close()


def assert_tells_how_to_recover(message: str, db: Path) -> None:
    assert f"the database file {db} is damaged" in message, message
    assert "viking-mcp writes nothing more to it" in message
    assert "move it aside (with any -wal and -shm files beside it)" in message
    assert "restore it from a backup" in message and "`viking-mcp import` it" in message


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_database_with_zeroed_pages_in_the_middle_is_refused_at_start(tmp_path: Path, transport: str) -> None:
    home = tmp_path / "home"
    db = build_database(home)
    pages = db.stat().st_size // page_size(db.read_bytes())
    damaged = zero_pages(db, pages // 2, 8)
    assert quick_check(db) != ["ok"]  # damage of the kind SQLite can see
    command = [sys.executable, "-m", "viking_mcp"]
    if transport == "http":
        command += ["serve", "--transport", "http", "--port", "0"]
    proc = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=server_env(home), timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    line = proc.stderr.strip()
    assert line.startswith("viking-mcp: INTERNAL: ") and "\n" not in line and "Traceback" not in line, line
    assert_tells_how_to_recover(line, db)
    assert db.read_bytes() == damaged, "the damaged file was changed"


def test_damage_met_while_serving_is_a_coded_error_and_stops_every_write(tmp_path: Path) -> None:
    """A zeroed page at the end of a long message: SQLite's checks cannot see it (the page
    ends the value's overflow chain anyway), so the server starts; reading the message is
    where the damage shows."""
    home = tmp_path / "home"
    db = build_database(home)
    data = db.read_bytes()
    stored = LONG_TAIL + b'"'  # the message as stored (JSON); search's index holds its text too
    assert data.count(stored) == 1
    damaged = zero_pages(db, data.index(stored) // page_size(data), 1)
    assert quick_check(db) == ["ok"]
    with http_server(tmp_path) as server:
        # What is undamaged is served.
        assert server.ok("GET", "/api/v1/sessions/s01", key=NO_KEY)["message_count"] == 100
        context = server.ok("GET", "/api/v1/sessions/s01/context", key=NO_KEY)
        assert "message 99 of session 1" in json.dumps(context)
        # The damaged message is a coded error that says what to do, every time it is read.
        for path in ("/api/v1/sessions/long/context", "/api/v1/sessions/long/context?token_budget=500"):
            message = server.error("GET", path, key=NO_KEY, status=500, code="INTERNAL")
            assert "a stored message does not read back as JSON" in message, message
            assert_tells_how_to_recover(message, db)
        # From then on, nothing is written to the file: every write is refused, with the same words.
        body = {"role": "user", "content": "written to a damaged database?"}
        message = server.error("POST", "/api/v1/sessions/s01/messages", body, key=NO_KEY, status=500, code="INTERNAL")
        assert_tells_how_to_recover(message, db)
        server.error("POST", "/api/v1/sessions/s01/commit", key=NO_KEY, status=500, code="INTERNAL")
        assert server.ok("GET", "/api/v1/sessions/s01", key=NO_KEY)["message_count"] == 100
    assert db.read_bytes() == damaged, "the damaged file was changed"
    assert "Traceback" not in server.stderr.read_text()
