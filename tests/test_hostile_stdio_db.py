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
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from mcp_types import INVALID_REQUEST

from tests.conftest import stdio_params
from viking_mcp.mcp.stdio import AnsweredStdin


class StdioProcess:
    """The real stdio server, spoken to in raw JSON-RPC lines, its stderr kept in a file."""

    def __init__(self, home: Path, stderr: Path, protocol_version: str = "2025-03-26") -> None:
        params = stdio_params(home)
        self.stderr = stderr
        with stderr.open("wb") as log:
            self.proc = subprocess.Popen(
                [params.command, *params.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=params.env,
            )  # fmt: skip
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        hello = {"protocolVersion": protocol_version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        answer = self.receive()
        assert answer["id"] == 0 and answer["result"]["protocolVersion"] == protocol_version
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def send(self, message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 30) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.lines.get(timeout=timeout))
        return answer

    def receive_ids(self, request_ids: set[int], timeout: float = 10) -> dict[int, dict[str, Any]]:
        """The answers to these requests, in whatever order they come; nothing else may come."""
        answers: dict[int, dict[str, Any]] = {}
        while set(answers) != request_ids:
            try:
                answer = self.receive(timeout)
            except queue.Empty:
                pytest.fail(f"no answer within {timeout} s to requests {sorted(request_ids - set(answers))}")
            assert answer.get("id") in request_ids - set(answers), answer
            answers[answer["id"]] = answer
        return answers

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def tool_call(request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


# --- B6: a JSON-RPC batch on stdin ---------------------------------------------------------------


@pytest.mark.parametrize("protocol_version", ["2025-03-26", "2025-11-25"])
def test_a_batch_on_stdin_is_refused_per_request_and_runs_nothing(tmp_path: Path, protocol_version: str) -> None:
    server = StdioProcess(tmp_path / "home", tmp_path / "stderr.txt", protocol_version)
    try:
        batch = [
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
            tool_call(2, "add_message", {"session_id": "batched", "role": "user", "content": "in a batch"}),
            tool_call(2, "add_message", {"session_id": "batched", "role": "user", "content": "the same id again"}),
        ]
        server.send(batch)
        server.send({"jsonrpc": "2.0", "id": 3, "method": "ping"})
        answers = server.receive_ids({1, 2, 3})
        assert answers[3] == {"jsonrpc": "2.0", "id": 3, "result": {}}
        for request_id in (1, 2):
            assert answers[request_id]["error"]["code"] == INVALID_REQUEST, answers
            message = answers[request_id]["error"]["message"]
            assert "does not take JSON-RPC batches" in message and "a line of its own" in message
        # Nothing of the batch ran: the session it would have created does not exist.
        server.send(tool_call(4, "get_session", {"session_id": "batched"}))
        answer = server.receive()
        assert answer["id"] == 4 and answer["result"]["isError"] is True
        assert "NOT_FOUND:" in answer["result"]["content"][0]["text"]
        # The same requests, one per line, are served.
        server.send(tool_call(5, "add_message", {"session_id": "batched", "role": "user", "content": "one by one"}))
        assert server.receive()["result"]["structuredContent"]["message_count"] == 1
    finally:
        server.close()
    log = server.stderr.read_text()
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
