"""A fake LLM endpoint on 127.0.0.1 for tests: real HTTP, scripted replies.

It speaks OpenAI chat completions (`/v1/chat/completions`, `/chat/completions`) and
Anthropic messages (`/v1/messages`), records every request, and answers each one with
the next scripted `Reply`, or, when the script is empty, with `responder(request_json)`
wrapped as a success body of the request's protocol.

    with FakeLlmServer(responder=lambda body: '{"abstract": ...}') as server:
        server.script([Reply(status=429, headers={"Retry-After": "0"})])
        settings = LlmSettings(provider="openai", base_url=server.base_url, ...)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], str]

OPENAI_PATHS = ("/v1/chat/completions", "/chat/completions")
ANTHROPIC_PATHS = ("/v1/messages", "/messages")


def openai_body(content: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> dict[str, Any]:
    """A chat.completion success body with `content` as the assistant's reply."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"},
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def anthropic_body(content: str, input_tokens: int = 100, output_tokens: int = 20) -> dict[str, Any]:
    """A Messages API success body with `content` as one text block."""
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "fake",
        "content": [{"type": "text", "text": content}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


@dataclass
class Reply:
    """One scripted answer. `content` becomes a success body in the request's protocol;
    `json_body` or `body` are sent as they are. `delay` seconds pass before anything is sent.

    A hostile endpoint: `drip` sends the body one byte every `drip` seconds (and the status
    line and headers too with `drip_headers`); `declare_length=False` leaves out Content-Length
    (the body ends when the connection closes)."""

    status: int = 200
    content: str | None = None
    json_body: Any = None
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    usage: tuple[int, int] = (100, 20)
    drip: float = 0.0
    drip_headers: bool = False
    declare_length: bool = True


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    json: Any  # the parsed body (None when it was not JSON)
    raw: bytes

    @property
    def protocol(self) -> str:
        return "anthropic" if self.path in ANTHROPIC_PATHS else "openai"

    @property
    def system(self) -> str:
        """The system prompt, in either protocol."""
        if self.protocol == "anthropic":
            return str(self.json.get("system", ""))
        return "".join(m["content"] for m in self.json.get("messages", []) if m.get("role") == "system")

    @property
    def user(self) -> str:
        """The user prompt, in either protocol."""
        return "".join(str(m["content"]) for m in self.json.get("messages", []) if m.get("role") == "user")


class FakeLlmServer:
    """Context manager: a ThreadingHTTPServer on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, responder: Responder | None = None, *, usage: tuple[int, int] = (100, 20)) -> None:
        self.responder: Responder = responder or (lambda _request: "{}")
        self.usage = usage
        self.requests: list[RecordedRequest] = []
        self._queue: list[Reply] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, in every test's teardown.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-llm", daemon=True
        )

    # --- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> FakeLlmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()  # delayed replies stop waiting
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # --- what tests use ---------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def root_url(self) -> str:
        """http://127.0.0.1:PORT: the base URL for the Anthropic provider."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT/v1: the base URL for the OpenAI provider."""
        return f"{self.root_url}/v1"

    def url_for(self, provider: str) -> str:
        return self.root_url if provider == "anthropic" else self.base_url

    def script(self, replies: Iterable[Reply]) -> None:
        """Answer the next requests with these replies, in order, then fall back to the responder."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def bodies(self) -> list[Any]:
        with self._lock:
            return [request.json for request in self.requests]

    # --- serving ----------------------------------------------------------------------

    def _next(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._queue:
                return self._queue.pop(0)
        return Reply(content=self.responder(request.json), usage=self.usage)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    parsed = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    parsed = None
                path = self.path.split("?", 1)[0]
                request = RecordedRequest(
                    "POST", path, {name.lower(): value for name, value in self.headers.items()}, parsed, raw
                )
                if path not in OPENAI_PATHS + ANTHROPIC_PATHS:
                    self._send(404, json.dumps({"error": {"message": f"no route {path}"}}).encode(), {})
                    return
                reply = server._next(request)
                if reply.delay and server._closing.wait(reply.delay):
                    return
                if reply.drip:
                    self._drip(reply, self._body(reply, request))
                    return
                self._send(reply.status, self._body(reply, request), reply.headers, reply.declare_length)

            def _body(self, reply: Reply, request: RecordedRequest) -> bytes:
                if reply.body is not None:
                    return reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
                if reply.json_body is not None:
                    return json.dumps(reply.json_body).encode("utf-8")
                if reply.content is not None:
                    build = anthropic_body if request.protocol == "anthropic" else openai_body
                    return json.dumps(build(reply.content, *reply.usage)).encode("utf-8")
                return b""

            def _send(self, status: int, body: bytes, headers: dict[str, str], declare_length: bool = True) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if declare_length:
                        self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (a timeout test): nothing to answer
                    pass

            def _drip(self, reply: Reply, body: bytes) -> None:
                """Status line, headers and body, a byte at a time where the reply says so."""
                head = f"HTTP/1.0 {reply.status} OK\r\nContent-Type: application/json\r\n"
                head += f"Content-Length: {len(body)}\r\n\r\n"
                data = head.encode() + body
                at = 0 if reply.drip_headers else len(head)
                try:
                    self.wfile.write(data[:at])
                    self.wfile.flush()
                    for byte in data[at:]:
                        if server._closing.wait(reply.drip):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:  # the client gave up: what a deadline is for
                    pass

        return Handler
