"""The four faces a benchmark drives: the engine, MCP in process, MCP over stdio, HTTP.

Each face offers the same few operations as coroutines, so one scenario measures all
four; the caller times each await. A face that talks to a server process knows that
process's pid, for its memory.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import child_pids, server_env

TERMINAL = ("completed", "failed")
# What MCP's texts say: a message of expand_archive, get_context's line counting the archives.
MESSAGE_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d\] \w+: ", re.MULTILINE)
ARCHIVES_LINE = re.compile(r"^(\d+) archives? \(", re.MULTILINE)
VALIDATE_OUTPUT = os.environ.get("VIKING_BENCH_VALIDATE") == "1"


class Face:
    """One way in. Operations return what a scenario checks; the caller times them."""

    name = ""
    label = ""
    pid: int | None = None  # the server process, when there is one

    async def start(self) -> None:
        """Open the face (spawn its server); not timed."""

    async def close(self) -> None:
        """Stop it."""

    async def add_message(self, session_id: str, role: str, text: str) -> int:
        """The session's live message count after the append."""
        raise NotImplementedError

    async def commit(self, session_id: str) -> str:
        """Commit Phase 1; returns the task id."""
        raise NotImplementedError

    async def task_status(self, task_id: str) -> str:
        raise NotImplementedError

    async def wait_task(self, task_id: str, timeout: float = 120.0) -> str:
        """Until the task is completed or failed (a server's own Phase 2 worker does it)."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.task_status(task_id)
            if status in TERMINAL or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.005)

    async def get_context(self, session_id: str, token_budget: int) -> dict[str, Any]:
        """The context's stats."""
        raise NotImplementedError

    async def expand_archive(self, session_id: str, archive_id: str, limit: int) -> int:
        """How many messages came back."""
        raise NotImplementedError

    async def message_count(self, session_id: str) -> int:
        raise NotImplementedError


class EngineFace(Face):
    """`viking_mcp.engine.Engine` called directly, no worker: Phase 2 runs in the waiting call."""

    name, label = "engine", "engine"

    def __init__(self, home: Path) -> None:
        self.home = home

    async def start(self) -> None:
        from viking_mcp.config import Settings
        from viking_mcp.engine import Engine
        from viking_mcp.heap import settle

        self.engine = Engine(Settings(home=self.home))
        self.engine.tokens.warm_up()
        # As the servers do once started: what exists now (this process's modules, the
        # fixtures, the tokenizer) is left out of later garbage collections, which would
        # otherwise walk it all, 50-70 ms, inside one call in 20-130 (viking_mcp/heap.py).
        settle()

    async def close(self) -> None:
        self.engine.close()

    async def add_message(self, session_id: str, role: str, text: str) -> int:
        return self.engine.add_message(session_id, role, content=text).message_count

    async def commit(self, session_id: str) -> str:
        task_id = self.engine.commit(session_id).task_id
        assert task_id is not None
        return task_id

    async def task_status(self, task_id: str) -> str:
        return str(self.engine.get_task(task_id).status)

    async def wait_task(self, task_id: str, timeout: float = 120.0) -> str:
        self.engine.run_pending_phase2()
        return await self.task_status(task_id)

    async def get_context(self, session_id: str, token_budget: int) -> dict[str, Any]:
        return self.engine.get_context(session_id, token_budget).stats.model_dump()

    async def expand_archive(self, session_id: str, archive_id: str, limit: int) -> int:
        return len(self.engine.expand_archive(session_id, archive_id, 0, limit).messages)

    async def message_count(self, session_id: str) -> int:
        return self.engine.get_session(session_id).message_count


class McpFace(Face):
    """An MCP client session: in process (`Client(build_server(...))`) or a spawned stdio server."""

    def __init__(self, home: Path, transport: str) -> None:
        self.home = home
        self.transport = transport
        self.name = "mcp_in_process" if transport == "memory" else "mcp_stdio"
        self.label = "MCP in process" if transport == "memory" else "MCP over stdio"
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        from mcp import Client, StdioServerParameters

        if self.transport == "memory":
            from viking_mcp.config import Settings
            from viking_mcp.mcp.server import build_server

            target: Any = build_server(Settings(home=self.home), settle_heap=True)  # as the stdio server
        else:
            target = StdioServerParameters(
                command=sys.executable, args=["-m", "viking_mcp"], env=server_env(self.home), cwd=str(self.home)
            )
        self.client = await self._stack.enter_async_context(Client(target))
        if not VALIDATE_OUTPUT:
            # The Python SDK's client re-validates every structured result against the tool's
            # output schema with jsonschema, in pure Python: 80% of an in-process get_context
            # round trip with 200 messages. That is this client's cost, not the server's (hosts
            # validate with their own validators, or not at all), so it is switched off here
            # by marking every tool as having no schema to check. VIKING_BENCH_VALIDATE=1 keeps it.
            tools = await self.client.list_tools()
            self.client.session._tool_output_schemas.update(dict.fromkeys(t.name for t in tools.tools))
        if self.transport == "stdio":
            pids = child_pids(os.getpid(), "viking_mcp")
            self.pid = pids[-1] if pids else None

    async def close(self) -> None:
        await self._stack.aclose()

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await self.client.call_tool(tool, arguments)
        if result.is_error or result.structured_content is None:
            raise RuntimeError(f"{tool} failed: {result.content}")
        return dict(result.structured_content)

    async def add_message(self, session_id: str, role: str, text: str) -> int:
        added = await self.call("add_message", session_id=session_id, role=role, content=text)
        return int(added["message_count"])

    async def commit(self, session_id: str) -> str:
        return str((await self.call("commit", session_id=session_id))["task_id"])

    async def task_status(self, task_id: str) -> str:
        return str((await self.call("get_task", task_id=task_id))["status"])

    async def get_context(self, session_id: str, token_budget: int) -> dict[str, Any]:
        # Over MCP the context is one text for the model; what it says of the archives is read off it.
        read = await self.call("get_context", session_id=session_id, token_budget=token_budget)
        archives = ARCHIVES_LINE.search(read["context"])
        return {"totalArchives": int(archives.group(1)) if archives else 0, "estimatedTokens": read["estimatedTokens"]}

    async def expand_archive(self, session_id: str, archive_id: str, limit: int) -> int:
        # A page holds what fits one tool result: read on as a model would, until `limit` messages.
        shown, offset = 0, 0
        while shown < limit:
            page = await self.call(
                "expand_archive", session_id=session_id, archive_id=archive_id, offset=offset, limit=limit - shown
            )
            shown += len(MESSAGE_LINE.findall(page["archive"]))
            if page["next_offset"] is None:
                break
            offset = page["next_offset"]
        return shown

    async def message_count(self, session_id: str) -> int:
        return int((await self.call("get_session", session_id=session_id))["message_count"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HttpServer:
    """`viking-mcp serve --transport http` on a free loopback port."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Spawn it and wait for /health; returns the seconds that took."""
        command = [sys.executable, "-m", "viking_mcp", "serve", "--transport", "http", "--port", str(self.port)]
        started = time.perf_counter()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=server_env(self.home), stdout=log, stderr=log, cwd=str(self.home.parent)
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the HTTP server exited with {self.process.returncode}; see {self.log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.perf_counter() - started
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not answer /health in {timeout} s; see {self.log}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class JsonClient:
    """One keep-alive connection, sequential requests: the OpenViking bench client's way."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._connect()

    def _connect(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        self.conn.connect()
        assert self.conn.sock is not None
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers=self.headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if method != "GET":
                raise
            # The server closes a keep-alive connection idle for 5 s: a GET may simply go again.
            self.conn.close()
            self._connect()
            self.conn.request(method, path, body=data, headers=self.headers)
            response = self.conn.getresponse()
        envelope = json.loads(response.read())
        if response.status != 200 or envelope.get("status") != "ok":
            raise RuntimeError(f"{method} {path} -> {response.status}: {str(envelope)[:300]}")
        result: dict[str, Any] = envelope["result"]
        return result

    def close(self) -> None:
        self.conn.close()


class HttpFace(Face):
    """OpenViking's session API on a real server process on loopback."""

    name, label = "http", "HTTP API"

    def __init__(self, home: Path, log: Path) -> None:
        self.server = HttpServer(home, log)

    async def start(self) -> None:
        self.server.start()
        self.pid = self.server.pid
        self.client = JsonClient(self.server.port)

    async def close(self) -> None:
        self.client.close()
        self.server.stop()

    async def add_message(self, session_id: str, role: str, text: str) -> int:
        body = {"role": role, "content": text}
        return int(self.client.request("POST", f"/api/v1/sessions/{session_id}/messages", body)["message_count"])

    async def commit(self, session_id: str) -> str:
        return str(self.client.request("POST", f"/api/v1/sessions/{session_id}/commit", {})["task_id"])

    async def task_status(self, task_id: str) -> str:
        return str(self.client.request("GET", f"/api/v1/tasks/{task_id}")["status"])

    async def get_context(self, session_id: str, token_budget: int) -> dict[str, Any]:
        path = f"/api/v1/sessions/{session_id}/context?token_budget={token_budget}"
        return dict(self.client.request("GET", path)["stats"])

    async def expand_archive(self, session_id: str, archive_id: str, limit: int) -> int:
        path = f"/api/v1/sessions/{session_id}/archives/{archive_id}?limit={limit}"
        return len(self.client.request("GET", path)["messages"])

    async def message_count(self, session_id: str) -> int:
        return int(self.client.request("GET", f"/api/v1/sessions/{session_id}")["message_count"])
