"""Hostile pages, keys and connections against a real `viking-mcp serve --transport http` (issue 15).

- B13: a web page of another origin cannot change data, on a server without keys or with.
- B11: an MCP session opened with one key is another key's 404.
- B1: one key cannot hold more than its share of MCP sessions, and idle ones end.
- B5: connections that never finish their headers, or their body, are closed; past the
  connection limit, new ones are answered 503 at once.

Every assertion is on an outcome (answered, refused with a code, closed, not stored); the
waits are generous upper bounds, never measurements.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_http_api import Server, http_server

pytestmark = pytest.mark.slow

ADA = "key-of-ada-hostile-0123456789"
BOB = "key-of-bob-hostile-0123456789"
EVE = "key-of-eve-hostile-0123456789"
KEYS = {
    "keys": {
        ADA: {"account_id": "acme", "user_id": "ada"},
        BOB: {"account_id": "acme", "user_id": "bob"},
        EVE: {"account_id": "evil", "user_id": "eve"},
    }
}
EVIL = "https://evil.example"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "hostile", "version": "0"}},
}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No keys (so loopback only), short deadlines for headers and bodies."""
    with http_server(
        tmp_path_factory.mktemp("open"),
        VIKING_MCP_HTTP_HEADER_TIMEOUT_SECONDS="1",
        VIKING_MCP_HTTP_BODY_TIMEOUT_SECONDS="5",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """API keys, default limits."""
    with http_server(tmp_path_factory.mktemp("keyed"), VIKING_MCP_API_KEYS=json.dumps(KEYS)) as running:
        yield running


def error_code(body: bytes) -> str:
    envelope = json.loads(body)
    assert envelope["status"] == "error", envelope
    code: str = envelope["error"]["code"]
    return code


def open_mcp_session(server: Server, key: str | None, **headers: str) -> tuple[int, str | None, bytes]:
    """POST an MCP `initialize`: the status, the session id it opened (if any), the body."""
    sent = {**MCP_HEADERS, **({"X-API-Key": key} if key else {}), **headers}
    status, answer_headers, body = server.raw("POST", "/mcp", json.dumps(INITIALIZE).encode(), sent)
    return status, answer_headers.get("mcp-session-id"), body


def mcp(server: Server, method: str, key: str, session_id: str) -> int:
    """One request in an MCP session (a ping, or DELETE to end it): the status."""
    headers = {**MCP_HEADERS, "X-API-Key": key, "Mcp-Session-Id": session_id}
    ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    return server.raw(method, "/mcp", ping if method == "POST" else None, headers)[0]


# --- B13: the Origin of state-changing requests -------------------------------------------------------


def test_a_page_of_another_origin_cannot_change_data_without_keys(open_server: Server) -> None:
    server = open_server
    server.ok("POST", "/api/v1/sessions/trip/messages", {"role": "user", "content": "I fly to Porto."}, key="")
    listed = server.ok("GET", "/api/v1/sessions", key="")["sessions"]

    # What a web page can send on its own (a form post, a no-cors fetch): refused, coded, nothing stored.
    for method, path in (
        ("POST", "/api/v1/sessions"),
        ("POST", "/api/v1/sessions/trip/commit"),
        ("POST", "/api/v1/sessions/trip/messages"),
        ("DELETE", "/api/v1/sessions/trip"),
        ("PATCH", "/api/v1/sessions/trip"),
    ):
        for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            status, _, body = server.raw(method, path, headers=headers)
            assert status == 403 and error_code(body) == "PERMISSION_DENIED", (method, path, headers, body)
            assert "cross-origin" in json.loads(body)["error"]["message"]
    status, _, body = open_mcp_session(server, None, Origin=EVIL)
    assert status == 403 and error_code(body) == "PERMISSION_DENIED"
    assert server.ok("GET", "/api/v1/sessions", key="")["sessions"] == listed
    info = server.ok("GET", "/api/v1/sessions/trip", key="")
    assert info["message_count"] == 1 and info["commit_count"] == 0

    # Reading is not changing; clients outside a browser send no Origin; this server's own
    # pages and loopback pages (a local tool) may change data.
    assert server.raw("GET", "/api/v1/sessions/trip", headers={"Origin": EVIL})[0] == 200
    own = {"Origin": server.base, "Content-Type": "application/json"}
    local = {"Origin": "http://localhost:5173", "Content-Type": "application/json"}
    same = {"Origin": EVIL, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
    for headers in ({"Content-Type": "application/json"}, own, local, same):
        status, _, body = server.raw("POST", "/api/v1/sessions", b"{}", headers)
        assert status == 200, (headers, body)
    assert open_mcp_session(server, None, Origin="http://127.0.0.1:6274")[0] == 200


def test_a_page_of_another_origin_cannot_change_data_with_keys(keyed_server: Server) -> None:
    # Keys or not, the same rule (the MCP spec asks every server to check Origin): a page's
    # request is refused even when a key came with it.
    status, _, body = keyed_server.raw("POST", "/api/v1/sessions", b"{}", {"X-API-Key": ADA, "Origin": EVIL})
    assert status == 403 and error_code(body) == "PERMISSION_DENIED"
    status, _, body = open_mcp_session(keyed_server, ADA, Origin=EVIL)
    assert status == 403 and error_code(body) == "PERMISSION_DENIED"
    assert keyed_server.ok("POST", "/api/v1/sessions", {}, key=ADA)["session_id"]


# --- B11: an MCP session belongs to the key that opened it ---------------------------------------------


def test_an_mcp_session_is_usable_only_with_the_key_that_opened_it(keyed_server: Server) -> None:
    status, session_id, _ = open_mcp_session(keyed_server, ADA)
    assert status == 200 and session_id
    assert mcp(keyed_server, "POST", ADA, session_id) == 200

    # Another key sees no such session: it can neither use nor end it.
    assert mcp(keyed_server, "POST", EVE, session_id) == 404
    assert mcp(keyed_server, "DELETE", EVE, session_id) == 404
    assert mcp(keyed_server, "POST", ADA, session_id) == 200

    assert mcp(keyed_server, "DELETE", ADA, session_id) == 200
    assert mcp(keyed_server, "POST", ADA, session_id) == 404


# --- B1: MCP sessions per key ----------------------------------------------------------------------------


def test_one_key_cannot_take_every_mcp_session(keyed_server: Server) -> None:
    eves = []
    for _ in range(64):
        status, session_id, body = open_mcp_session(keyed_server, EVE)
        assert status == 200 and session_id, body
        eves.append(session_id)
    status, session_id, body = open_mcp_session(keyed_server, EVE)
    assert status == 429 and session_id is None and error_code(body) == "RESOURCE_EXHAUSTED"
    assert "VIKING_MCP_HTTP_MCP_SESSIONS_PER_KEY" in json.loads(body)["error"]["message"]

    # Another tenant is not affected; the key itself gets room back by ending a session.
    status, bobs, _ = open_mcp_session(keyed_server, BOB)
    assert status == 200 and bobs
    assert mcp(keyed_server, "DELETE", EVE, eves.pop()) == 200
    status, session_id, _ = open_mcp_session(keyed_server, EVE)
    assert status == 200 and session_id
    eves.append(session_id)
    for session_id in eves:
        assert mcp(keyed_server, "DELETE", EVE, session_id) == 200
    assert mcp(keyed_server, "DELETE", BOB, bobs) == 200


def test_idle_mcp_sessions_end_and_give_their_room_back(tmp_path: Path) -> None:
    with http_server(
        tmp_path,
        VIKING_MCP_API_KEYS=json.dumps(KEYS),
        VIKING_MCP_HTTP_MCP_SESSIONS_PER_KEY="2",
        VIKING_MCP_HTTP_MCP_SESSION_IDLE_SECONDS="1",
    ) as server:
        first = [open_mcp_session(server, EVE)[1] for _ in range(2)]
        assert all(first)
        assert open_mcp_session(server, EVE)[0] == 429
        deadline = time.monotonic() + 30
        while (status := open_mcp_session(server, EVE)[0]) == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200, "an idle session should have ended within 30 s"
        while mcp(server, "POST", EVE, str(first[0])) != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert mcp(server, "POST", EVE, str(first[0])) == 404


# --- B5: slow and idle connections -------------------------------------------------------------------


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


def health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def test_connections_that_never_finish_their_headers_are_closed(open_server: Server) -> None:
    partial = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{open_server.port}\r\nX-Slow: a".encode()
    slow = [connect(open_server.port, partial) for _ in range(200)]
    idle = [connect(open_server.port) for _ in range(20)]
    try:
        assert health(open_server.port) == 200
        answers = [read_until_closed(sock) for sock in slow]
        assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers[0]
        assert error_code(answers[0].partition(b"\r\n\r\n")[2]) == "UNAVAILABLE"
        assert [read_until_closed(sock) for sock in idle] == [b""] * 20  # nothing asked, nothing answered
    finally:
        for sock in slow + idle:
            sock.close()
    assert health(open_server.port) == 200


def test_a_byte_now_and_then_does_not_keep_a_connection(open_server: Server) -> None:
    sock = connect(open_server.port, b"GET /health HTTP/1.1\r\n")
    opened = time.monotonic()
    try:
        with pytest.raises(OSError):  # the server closes it: a send then fails
            while time.monotonic() - opened < 30:
                sock.sendall(b"X")
                time.sleep(0.2)
    finally:
        sock.close()


def test_a_body_that_never_finishes_is_refused_and_nothing_stored(open_server: Server) -> None:
    head = (
        f"POST /api/v1/sessions/dripped/messages HTTP/1.1\r\nHost: 127.0.0.1:{open_server.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    answer = read_until_closed(connect(open_server.port, head + b'{"role": "user", '))
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert error_code(answer.partition(b"\r\n\r\n")[2]) == "UNAVAILABLE"
    assert open_server.call("GET", "/api/v1/sessions/dripped", key="")[0] == 404


def test_a_slow_request_within_its_deadlines_is_served(open_server: Server) -> None:
    # Headers at once, then a body that takes longer than the header deadline (1 s) but
    # well within the body's (5 s): the request is served, on a connection kept open.
    body = json.dumps({"role": "user", "content": "slow but steady"}).encode()
    head = (
        f"POST /api/v1/sessions/steady/messages HTTP/1.1\r\nHost: 127.0.0.1:{open_server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = connect(open_server.port, head)
    try:
        for start in range(0, len(body), len(body) // 4 + 1):
            time.sleep(0.5)
            sock.sendall(body[start : start + len(body) // 4 + 1])
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200, response.read()
    finally:
        sock.close()
    assert open_server.ok("GET", "/api/v1/sessions/steady", key="")["message_count"] == 1


def test_past_the_connection_limit_new_connections_are_answered_503(tmp_path: Path) -> None:
    with http_server(tmp_path, VIKING_MCP_HTTP_MAX_CONNECTIONS="50") as server:
        held = [connect(server.port, b"GET /health HTTP/1.1\r\n") for _ in range(50)]
        try:
            refused = [read_until_closed(connect(server.port)) for _ in range(10)]
            assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refused), refused[0]
            assert error_code(refused[0].partition(b"\r\n\r\n")[2]) == "UNAVAILABLE"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if health(server.port) == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        assert health(server.port) == 200


@pytest.mark.parametrize(
    ("soft", "hard", "refuses_above", "cap"),
    [
        (256, -1, 10_240, 10_240 - 576),  # macOS: soft 256, hard unlimited, at most 10240 allowed
        (1024, 1024, None, 448),  # a hard limit of 1024: nothing to raise
        (256, 256, None, 64),  # a tiny hard limit still leaves a quarter for connections
        (1024, 524_288, None, 65_536 - 576),  # Linux: raised to 65536
    ],
)
def test_the_connection_cap_takes_what_the_open_file_limit_allows(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, refuses_above: int | None, cap: int
) -> None:
    """B5's cap is the open-file limit less a reserve; a soft limit of 256 (macOS) would leave
    no connections, so the server first raises it toward the hard limit, as Go's runtime does."""
    import resource

    from viking_mcp.api.app import _connection_cap

    limits = [soft, hard]

    def setrlimit(_which: int, new: tuple[int, int]) -> None:
        if refuses_above is not None and new[0] > refuses_above:
            raise ValueError("not allowed")
        limits[:] = list(new)

    monkeypatch.setattr(resource, "RLIM_INFINITY", -1)
    monkeypatch.setattr(resource, "getrlimit", lambda _which: tuple(limits))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert _connection_cap(None) == cap
    assert _connection_cap(50) == 50
