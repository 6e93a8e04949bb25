"""One hostile tenant beside another, on a real HTTP server: issue 15's benchmark rows.

    python -m benchmarks.hostile_tenant                      # about a minute on 2 cores
    python -m benchmarks.hostile_tenant --flood 5000 --extracts 45 --llm-seconds 20
    python -m benchmarks.hostile_tenant --store postgresql://user@127.0.0.1/db --json /tmp/hostile.json

A server (`viking-mcp serve --transport http` on a temporary data directory, or on the
PostgreSQL database `--store` names) holds two keys, and its LLM endpoint is a fake on
loopback that answers at once, except that it takes `--llm-seconds` for a prompt holding
the word STALL. The hostile key, all at once:
- B4a: `--flood` add+commit pairs, from `--flood-clients` connections, each pair a message
  to one of its sessions and a commit: a Phase 2 backlog of thousands;
- B4b: `--extracts` extracts at once, again and again, on a session whose messages hold
  STALL, so that each waits `--llm-seconds` on the endpoint;
- B1: `--mcp-sessions` MCP sessions opened at /mcp (initialize, never closed), from
  `--mcp-clients` connections.
Once the backlog has built up (`--head-start` seconds), the other key adds `--appends`
messages one after another, timing each, then commits with wait=true `--commits` times
(a message before each), timing each to its answer. Targets (issue 15): add_message p99
under 50 ms, every commit(wait=true) completed in under 5 s; and the other key can still
open an MCP session.

It prints a markdown table and, with `--json`, writes every figure. Not part of the test
suite: run it on demand, on a quiet machine.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import machine, message_texts, server_env, summary_ms

HOSTILE = "key-of-mallory-0123456789abcdef"
VICTIM = "key-of-ada-0123456789abcdef"
KEYS = {
    "keys": {
        HOSTILE: {"account_id": "acme", "user_id": "mallory", "agent_id": "bot"},
        VICTIM: {"account_id": "acme", "user_id": "ada", "agent_id": "claude"},
    }
}
STALL = "STALL"
SUMMARY = json.dumps(
    {
        "abstract": "The team planned the Kyoto offsite.",
        "overview": "## Offsite\nThe team planned the Kyoto offsite in April.",
        "memories": [{"category": "events", "abstract": "Planned the Kyoto offsite.", "when": "2026-04-01"}],
    }
)


class SlowEndpoint:
    """An OpenAI-compatible chat endpoint on loopback: at once, or after `stall` seconds for a
    prompt that holds STALL."""

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.stopping = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if STALL.encode() in raw and endpoint.stopping.wait(endpoint.stall):
                    return
                body = json.dumps(
                    {
                        "id": "chatcmpl-bench",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "bench",
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": SUMMARY}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                    }
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> SlowEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Client:
    """One keep-alive connection for one key; answers (status, error code or None, result)."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", "X-API-Key": key}
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, str | None, Any]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                response = self.conn.getresponse()
                envelope = json.loads(response.read() or b"{}")
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = self._connect()  # the server closed an idle keep-alive connection
                if attempt:
                    raise
        error = envelope.get("error") if isinstance(envelope, dict) else None
        return response.status, (error or {}).get("code"), envelope.get("result")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, code, result = self.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status} {code}")
        return result

    def close(self) -> None:
        self.conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(home: Path, store: str | None, llm_url: str) -> Iterator[int]:
    port = free_port()
    env = server_env(
        home,
        VIKING_MCP_API_KEYS=json.dumps(KEYS),
        VIKING_MCP_LLM_MODEL="bench",
        VIKING_MCP_LLM_BASE_URL=llm_url,
        VIKING_MCP_LLM_API_KEY="sk-bench",
        VIKING_MCP_LLM_MAX_ATTEMPTS="1",
        VIKING_MCP_LLM_TIMEOUT_SECONDS="120",
        **({"VIKING_MCP_STORE": store} if store else {}),
    )
    command = [sys.executable, "-m", "viking_mcp", "serve", "--transport", "http", "--port", str(port)]
    with (home.parent / "server.log").open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=home.parent)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}; see {home.parent / 'server.log'}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /health in 60 s")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Hostile:
    """The hostile key's work, on threads, until `stop` is set."""

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.port = port
        self.args = args
        self.stop = threading.Event()
        self.pairs = itertools.count()
        self.mcp_opened = itertools.count()
        self.pairs_done = 0
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        setup = Client(self.port, HOSTILE)
        for n in range(3):  # the sessions the extracts read, each message asking the endpoint to stall
            setup.ok("POST", f"/api/v1/sessions/stall-{n}/messages", {"role": "user", "content": f"{STALL} {n}"})
        setup.close()
        for n in range(self.args.flood_clients):
            self.threads.append(threading.Thread(target=self._flood, args=(n,), daemon=True))
        for n in range(self.args.extracts):
            self.threads.append(threading.Thread(target=self._extract, args=(n,), daemon=True))
        for _ in range(self.args.mcp_clients):
            self.threads.append(threading.Thread(target=self._open_mcp_sessions, daemon=True))
        for thread in self.threads:
            thread.start()

    def _count(self, what: str) -> None:
        with self.lock:
            self.outcomes[what] += 1

    def _flood(self, client_no: int) -> None:
        client = Client(self.port, HOSTILE)
        texts = message_texts(200, seed=client_no)
        try:
            while not self.stop.is_set() and next(self.pairs) < self.args.flood:
                session = f"flood-{client_no}-{self.pairs_done % 50}"
                client.ok("POST", f"/api/v1/sessions/{session}/messages", {"role": "user", "content": texts[0]})
                status, code, _ = client.call("POST", f"/api/v1/sessions/{session}/commit", {})
                self._count(f"commit {status} {code or ''}".strip())
                with self.lock:
                    self.pairs_done += 1
                texts.append(texts.pop(0))
        finally:
            client.close()

    def _extract(self, n: int) -> None:
        client = Client(self.port, HOSTILE)
        try:
            while not self.stop.is_set():
                status, code, _ = client.call("POST", f"/api/v1/sessions/stall-{n % 3}/extract")
                self._count(f"extract {status} {code or ''}".strip())
                if status != 200:
                    self.stop.wait(0.2)  # refused: ask again shortly, as a client that retries would
        finally:
            client.close()

    def _open_mcp_sessions(self) -> None:
        while not self.stop.is_set() and next(self.mcp_opened) < self.args.mcp_sessions:
            self._count(f"mcp initialize {open_mcp_session(self.port, HOSTILE)}")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.args.llm_seconds + 30)


def victim(port: int, args: argparse.Namespace) -> dict[str, Any]:
    client = Client(port, VICTIM)
    texts = message_texts(args.appends + args.commits)
    appends: list[int] = []
    for text in texts[: args.appends]:
        started = time.perf_counter_ns()
        client.ok("POST", "/api/v1/sessions/ada-work/messages", {"role": "user", "content": text})
        appends.append(time.perf_counter_ns() - started)
    commits: list[dict[str, Any]] = []
    for n, text in enumerate(texts[args.appends :]):
        client.ok("POST", f"/api/v1/sessions/ada-commit-{n}/messages", {"role": "user", "content": text})
        began = time.perf_counter()
        result = client.ok("POST", f"/api/v1/sessions/ada-commit-{n}/commit", {"wait": True})
        commits.append({"seconds": round(time.perf_counter() - began, 3), "task_status": result["task_status"]})
    began = time.perf_counter()
    client.ok("GET", "/api/v1/sessions/ada-work")
    get_session = time.perf_counter() - began
    client.close()
    return {"add_message": summary_ms(appends), "commit_wait": commits, "get_session_s": round(get_session, 3)}


def open_mcp_session(port: int, key: str) -> int:
    """The HTTP status of an MCP `initialize` at /mcp (200: a session opened and left open)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", "X-API-Key": key}
    try:
        conn.request("POST", "/mcp", body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def backlog(port: int) -> int:
    """The hostile key's Phase 2 tasks still pending (at most 500: a page)."""
    client = Client(port, HOSTILE)
    try:
        return len(client.ok("GET", "/api/v1/tasks?status=pending&limit=500")["tasks"])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=5000, help="hostile add+commit pairs (B4a)")
    parser.add_argument("--flood-clients", type=int, default=4, help="hostile connections doing them")
    parser.add_argument("--extracts", type=int, default=45, help="hostile extracts at once (B4b)")
    parser.add_argument("--llm-seconds", type=float, default=20.0, help="how long the endpoint stalls")
    parser.add_argument("--mcp-sessions", type=int, default=2000, help="hostile MCP sessions to open (B1)")
    parser.add_argument("--mcp-clients", type=int, default=2, help="hostile connections opening them")
    parser.add_argument("--head-start", type=float, default=10.0, help="seconds of hostile load first")
    parser.add_argument("--appends", type=int, default=500, help="the other key's timed add_message calls")
    parser.add_argument("--commits", type=int, default=5, help="the other key's timed commit(wait=true) calls")
    parser.add_argument("--store", help="a postgresql:// URL (default: SQLite in a temporary directory)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="viking-hostile-") as scratch, SlowEndpoint(args.llm_seconds) as llm:
        home = Path(scratch) / "home"
        with http_server(home, args.store, llm.base_url) as port:
            hostile = Hostile(port, args)
            hostile.start()
            time.sleep(args.head_start)
            backlog_before = backlog(port)
            measured = victim(port, args)
            measured["mcp_initialize_status"] = open_mcp_session(port, VICTIM)
            backlog_after = backlog(port)
            pairs = hostile.pairs_done
            hostile.finish()
    figures = {
        "machine": machine(),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "victim": measured,
        "hostile": {
            "pairs_done": pairs,
            "outcomes": dict(hostile.outcomes),
            "backlog_before": backlog_before,
            "backlog_after": backlog_after,
        },
    }
    appends = measured["add_message"]
    worst = max(c["seconds"] for c in measured["commit_wait"]) if measured["commit_wait"] else None
    all_done = all(c["task_status"] == "completed" for c in measured["commit_wait"])
    rows = [
        ("victim add_message p50 / p95 / p99 (ms)", f"{appends['p50_ms']} / {appends['p95_ms']} / {appends['p99_ms']}",
         "met" if appends["p99_ms"] < 50 else "NOT MET"),
        ("victim commit(wait=true), worst of " + str(args.commits) + " (s)", f"{worst}",
         "met" if worst is not None and worst < 5 and all_done else "NOT MET"),
        ("victim commit(wait=true) statuses", ", ".join(c["task_status"] for c in measured["commit_wait"]), ""),
        ("victim GET /sessions/x after it all (s)", str(measured["get_session_s"]), ""),
        ("victim opens an MCP session after it all (HTTP status)", str(measured["mcp_initialize_status"]),
         "met" if measured["mcp_initialize_status"] == 200 else "NOT MET"),
        ("hostile add+commit pairs done meanwhile", str(pairs), ""),
        ("hostile Phase 2 backlog before / after the victim (pending, max 500)",
         f"{backlog_before} / {backlog_after}", ""),
        ("hostile outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(hostile.outcomes.items())), ""),
    ]  # fmt: skip
    print("| figure | value | target |\n|---|---|---|")
    for name, value, verdict in rows:
        print(f"| {name} | {value} | {verdict} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
