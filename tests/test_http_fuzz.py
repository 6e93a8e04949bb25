"""Malformed requests get a 4xx with a coded envelope, never a 5xx.

schemathesis generates requests (valid and invalid) from the app's own OpenAPI
document, in process over ASGI; hand-written cases cover what a generator rarely
builds: broken JSON, huge and chunked bodies, path tricks, odd Unicode.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from starlette.testclient import TestClient

from viking_mcp.api.app import build_app
from viking_mcp.auth import KeyRing
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.errors import NotFound
from viking_mcp.models import Owner

ERROR_CODES = {
    "NOT_FOUND",
    "INVALID_ARGUMENT",
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
}


def seed(engine: Engine) -> None:
    """A session 'demo' with a completed archive and live messages, for the examples phase
    (made again whenever a generated DELETE removed it)."""
    try:
        engine.get_session("demo")
        return
    except NotFound:
        pass
    engine.create_session("demo", {"topic": "fuzz"})
    engine.add_message("demo", "user", "I'm Ada and I fly to Lisbon on 3 May.")
    engine.add_message("demo", "assistant", "Noted: Lisbon, 3 May.")
    engine.commit("demo", wait=True)
    engine.add_message("demo", "user", "Which seat?")


# schemathesis builds its tests at collection time from a loaded schema (its lazy,
# fixture-based loader does not work with pytest 9), so the app and its engine exist
# from import on, in a temporary directory removed at the end.
_HOME = Path(tempfile.mkdtemp(prefix="viking-fuzz-"))
_ENGINE = Engine(Settings(home=_HOME / "home"))
atexit.register(shutil.rmtree, _HOME, True)
atexit.register(_ENGINE.close)
seed(_ENGINE)
# No keys: every generated request reaches the endpoints (the request guard is tested below).
APP = build_app(_ENGINE.settings, engine=_ENGINE, keyring=KeyRing())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True)


@pytest.fixture(scope="module")
def fuzz_engine() -> Iterator[Engine]:
    yield _ENGINE


def assert_envelope(status: int, body: Any) -> None:
    assert status < 500, body
    if status >= 400:
        assert isinstance(body, dict) and body.get("status") == "error", body
        assert body["error"]["code"] in ERROR_CODES, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    else:
        assert body.get("status") in ("ok", None), body  # /health has no envelope


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any) -> None:
    seed(_ENGINE)
    response = case.call_and_validate(checks=[not_a_server_error])
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        assert_envelope(response.status_code, json.loads(response.content))
    else:
        assert response.status_code < 500


# --- hand-written malformed requests ---------------------------------------------------------------


@pytest.fixture(scope="module")
def client(fuzz_engine: Engine) -> Iterator[TestClient]:
    keys = KeyRing(users={"fuzz-key-0123456789abcdef": Owner()})
    with TestClient(build_app(fuzz_engine.settings, engine=fuzz_engine, keyring=keys)) as test_client:
        test_client.headers["X-API-Key"] = "fuzz-key-0123456789abcdef"
        yield test_client


def coded(response: Any, status: int, code: str) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == status, body
    assert body["status"] == "error" and body["error"]["code"] == code, body
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "raw",
    [b"{bad", b"{", b'{"role": "user", "content": "x"', b"\xff\xfe\x00", b"null x", b"[1, 2", b'"\\ud800', b"{}}"],
)
def test_bad_json_is_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/api/v1/sessions/demo/messages", content=raw, headers={"Content-Type": "application/json"})
    coded(response, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/sessions/demo/messages", {"role": "robot", "content": "x"}),
        ("/api/v1/sessions/demo/messages", {"role": "user", "content": 5}),
        ("/api/v1/sessions/demo/messages", {"role": "user"}),
        ("/api/v1/sessions/demo/messages", {"role": "user", "parts": "text"}),
        ("/api/v1/sessions/demo/messages", {"role": "user", "parts": [{"type": "image"}]}),
        ("/api/v1/sessions/demo/messages", {"role": "user", "parts": [{"type": "text"}]}),
        ("/api/v1/sessions/demo/messages", {"role": "user", "content": "x", "created_at": "yesterday"}),
        ("/api/v1/sessions/demo/messages", {"role": "user", "content": "x", "message_id": "../etc"}),
        ("/api/v1/sessions/demo/messages", [1, 2, 3]),
        ("/api/v1/sessions/demo/commit", {"keep_recent_count": -1}),
        ("/api/v1/sessions/demo/commit", {"keepRecentCount": "many"}),
        ("/api/v1/sessions/demo/commit", {"keep_recent_count": 10**40}),
        ("/api/v1/sessions/demo/commit", {"wait": {"x": 1}}),
        ("/api/v1/sessions/demo/commit", {"memories": [{"category": "dreams", "abstract": "x"}]}),
        ("/api/v1/sessions/demo/commit", "commit"),
        ("/api/v1/sessions/demo/used", {"contexts": "viking://x"}),
        ("/api/v1/sessions/demo/used", {"skill": {"uri": 1}}),
        ("/api/v1/sessions", {"session_id": 12}),
        ("/api/v1/sessions", {"session_id": "a b"}),
        ("/api/v1/sessions", {"metadata": [1]}),
        ("/api/v1/sessions", {"metadata": {"x": float("nan")}}),
    ],
)
def test_wrong_types_are_400(client: TestClient, path: str, body: Any) -> None:
    raw = json.dumps(body).encode()  # NaN goes out as the bare token NaN, which Python's parser accepts
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    coded(response, 400, "INVALID_ARGUMENT")


def test_deep_json_is_refused(client: TestClient) -> None:
    deep = "[" * 5000 + "]" * 5000
    response = client.post(
        "/api/v1/sessions",
        content=f'{{"metadata": {{"x": {deep}}}}}'.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code in (400, 413), response.text
    assert response.json()["error"]["code"] in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")


def test_body_without_json_content_type_is_400(client: TestClient) -> None:
    response = client.post("/api/v1/sessions/demo/messages", content=b'{"role":"user","content":"x"}')
    coded(response, 400, "INVALID_ARGUMENT")
    form = client.post("/api/v1/sessions/demo/messages", data={"role": "user", "content": "x"})
    coded(form, 400, "INVALID_ARGUMENT")


def test_huge_body_is_413_before_it_is_read(client: TestClient) -> None:
    big = b'{"role":"user","content":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    response = client.post("/api/v1/sessions/demo/messages", content=big, headers={"Content-Type": "application/json"})
    coded(response, 413, "RESOURCE_EXHAUSTED")

    def chunks() -> Iterator[bytes]:  # no Content-Length: read up to the limit only
        yield b'{"role":"user","content":"'
        for _ in range(64):
            yield b"y" * 65536
        yield b'"}'

    chunked = client.post(
        "/api/v1/sessions/demo/messages", content=chunks(), headers={"Content-Type": "application/json"}
    )
    coded(chunked, 413, "RESOURCE_EXHAUSTED")


def test_message_over_the_engine_limit_is_413(client: TestClient) -> None:
    body = {"role": "user", "content": "z" * 1_100_000}
    coded(client.post("/api/v1/sessions/demo/messages", json=body), 413, "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize(
    "session_id",
    ["..", "a%2Fb", "a%2F..%2Fb", "%00", "a%00b", "%20", "x" * 200, "%E2%80%AEevil", "caf%C3%A9", "a%5Cb", "-lead"],
)
def test_bad_ids_are_4xx(client: TestClient, session_id: str) -> None:
    for method, suffix, body in (
        ("GET", "", None),
        ("DELETE", "", None),
        ("GET", "/context", None),
        ("POST", "/messages", {"role": "user", "content": "x"}),
        ("POST", "/commit", None),
        ("GET", "/archives/archive_001", None),
    ):
        response = client.request(method, f"/api/v1/sessions/{session_id}{suffix}", json=body)
        assert 400 <= response.status_code < 500, (method, session_id, response.text)
        assert response.json()["error"]["code"] in ("INVALID_ARGUMENT", "NOT_FOUND"), response.text


@pytest.mark.parametrize(
    "archive_id", ["archive_1", "archive_0001", "archive_000", "archive_١٢٣", "../x", "ARCHIVE_001"]
)
def test_bad_archive_ids_are_4xx(client: TestClient, archive_id: str) -> None:
    response = client.get(f"/api/v1/sessions/demo/archives/{archive_id}")
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["code"] in ("INVALID_ARGUMENT", "NOT_FOUND")


def test_unicode_tricks_are_stored_or_refused_cleanly(client: TestClient) -> None:
    for text in ("\u202eevil", "e\u0301", "\U0001f600" * 10, "\x00nul", "\ufeffbom", "\ud800 lone"):
        response = client.post(
            "/api/v1/sessions/unicode/messages",
            content=json.dumps({"role": "user", "content": text}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code in (200, 400), response.text
        assert response.json()["status"] == ("ok" if response.status_code == 200 else "error")
    lone_metadata = b'{"session_id": "uni2", "metadata": {"\\udc80": "\\ud800"}}'
    response = client.post("/api/v1/sessions", content=lone_metadata, headers={"Content-Type": "application/json"})
    coded(response, 400, "INVALID_ARGUMENT")


def test_bad_query_values_are_400(client: TestClient) -> None:
    for path in (
        "/api/v1/sessions?limit=0",
        "/api/v1/sessions?limit=abc",
        "/api/v1/sessions?limit=99999999999999999999999",
        "/api/v1/sessions?cursor=not-a-cursor",
        "/api/v1/sessions/demo/context?token_budget=-1",
        "/api/v1/sessions/demo/context?token_budget=1e9",
        "/api/v1/sessions/demo?auto_create=maybe",
        "/api/v1/tasks?status=sleeping",
        "/api/v1/tasks?resource_id=..",
        "/api/v1/memories/search?query=",
        "/api/v1/memories/search?query=x&category=dreams",
    ):
        coded(client.get(path), 400, "INVALID_ARGUMENT")


def test_unknown_routes_and_methods_have_envelopes(client: TestClient) -> None:
    coded(client.get("/api/v1/nope"), 404, "NOT_FOUND")
    coded(client.get("/nope"), 404, "NOT_FOUND")
    body = client.put("/api/v1/sessions/demo").json()
    assert body["status"] == "error" and body["error"]["code"] == "INVALID_ARGUMENT"


def test_bad_content_length_is_400(client: TestClient) -> None:
    response = client.post(
        "/api/v1/sessions", content=b"{}", headers={"Content-Type": "application/json", "Content-Length": "lots"}
    )
    assert response.status_code == 400


def test_missing_and_wrong_keys_are_401(client: TestClient, tmp_path: Path) -> None:
    for headers in (
        {"X-API-Key": ""},
        {"X-API-Key": "wrong-key-0123456789"},
        {"X-API-Key": "", "Authorization": "Basic eDp5"},
    ):
        response = client.get("/api/v1/sessions", headers=headers)
        coded(response, 401, "UNAUTHENTICATED")
