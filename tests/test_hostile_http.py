"""Hostile pages, keys and connections against a real `viking-mcp serve --transport http` (issue 15).

- B13: a web page of another origin cannot change data, on a server without keys or with.

Every assertion is on an outcome (answered, refused with a code, closed, not stored); the
waits are generous upper bounds, never measurements.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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
    """No keys (so loopback only)."""
    with http_server(tmp_path_factory.mktemp("open")) as running:
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
