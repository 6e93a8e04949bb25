"""Bad input: every malformed request is a clear coded error, and nothing is written.

Each rejected call is checked twice over: the error carries the right code (through the
engine API as a `VikingError` subclass, over MCP as a tool error whose text has the code),
and the database is byte-for-byte the same dump as before, with no file appearing
outside the data directory (the tests run with the temporary directory as cwd, so a
path-shaped id that leaked into a file name would show up there).
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_CAPABILITIES_META_KEY, INVALID_REQUEST, PARSE_ERROR, PROTOCOL_VERSION_META_KEY

from tests.conftest import listed_ids, shown_messages, stdio_params
from viking_mcp.config import Limits, Settings, settings_from_env
from viking_mcp.engine import Engine
from viking_mcp.errors import ErrorCode, VikingError
from viking_mcp.mcp.server import result_text
from viking_mcp.mcp.stdio import UNREADABLE_METHOD, AnsweredStdin, find_request_id
from viking_mcp.models import ID_MAX_LENGTH, TextPart, message_text
from viking_mcp.tokens import MESSAGE_OVERHEAD_TOKENS

pytestmark = pytest.mark.anyio

INVALID = ErrorCode.INVALID_ARGUMENT
NOT_FOUND = ErrorCode.NOT_FOUND
EXHAUSTED = ErrorCode.RESOURCE_EXHAUSTED
PRECONDITION = ErrorCode.FAILED_PRECONDITION

# Small limits, so that "too big" is cheap to build.
LIMITS = Limits(
    max_message_bytes=4096,
    max_parts=8,
    max_json_depth=16,
    max_metadata_bytes=1024,
    max_summary_bytes=4096,
)

DATA_FILES = {"viking.db", "viking.db-wal", "viking.db-shm"}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Overrides conftest's: small limits, and cwd inside the temporary directory."""
    monkeypatch.chdir(tmp_path)
    return Settings(home=tmp_path / "home", limits=LIMITS)


# --- helpers -------------------------------------------------------------------------------


def db_dump(path: Path) -> list[str]:
    """Every row of every table, as SQL text: equal dumps mean nothing was written."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def assert_no_stray_files(settings: Settings) -> None:
    tmp = settings.home.parent
    assert sorted(p.name for p in tmp.iterdir()) == ["home"], "a file appeared outside the data directory"
    assert {p.name for p in settings.home.iterdir()} <= DATA_FILES, "an unexpected file appeared in the data directory"


@contextmanager
def nothing_written(settings: Settings) -> Iterator[None]:
    before = db_dump(settings.database_path)
    yield
    assert db_dump(settings.database_path) == before, "a rejected call changed the database"
    assert_no_stray_files(settings)


def expect(code: ErrorCode, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> VikingError:
    """Call fn; it must raise a VikingError with `code`, whose text starts with the code."""
    with pytest.raises(VikingError) as info:
        fn(*args, **kwargs)
    error = info.value
    assert error.code == code, f"expected {code.value}, got {error}"
    assert str(error).startswith(f"{code.value}: ")
    assert error.message.strip(), "the error says nothing about what to do"
    return error


async def call_error(client: Client, tool: str, arguments: dict[str, Any], code: ErrorCode) -> str:
    """Call an MCP tool; it must be a tool error whose text carries `code`."""
    with anyio.fail_after(20):
        result = await client.call_tool(tool, arguments)
    text = result_text(result)
    assert result.is_error, f"{tool}({arguments!r:.200}) succeeded: {text[:300]}"
    assert f"{code.value}:" in text, f"{tool} error lacks {code.value}: {text[:300]}"
    return text


async def call_ok(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    with anyio.fail_after(20):
        result = await client.call_tool(tool, arguments)
    assert not result.is_error, result_text(result)
    assert result.structured_content is not None
    return result.structured_content


def nested(depth: int) -> dict[str, Any]:
    """{"a": {"a": ... {}}} with `depth` levels of objects, built without recursion."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        child: dict[str, Any] = {}
        node["a"] = child
        node = child
    return root


def tool_part(**fields: Any) -> dict[str, Any]:
    return {"type": "tool", "tool_id": "call_1", "tool_name": "search", **fields}


def session_ids(engine: Engine) -> set[str]:
    return {row.session_id for row in engine.store.list_sessions(10_000, None)}


def seed(engine: Engine) -> None:
    """A session with one message and one completed archive, so dumps are not trivial."""
    engine.add_message("good", "user", "first words")
    engine.commit("good")
    engine.run_pending_phase2()
    engine.add_message("good", "assistant", "live words")


# --- ids -------------------------------------------------------------------------------------

BAD_IDS = [
    pytest.param("a/b", id="slash"),
    pytest.param("../x", id="dotdot-slash"),
    pytest.param("..", id="dotdot"),
    pytest.param(".", id="dot"),
    pytest.param("a..b", id="inner-dotdot"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("-x", id="leading-dash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("", id="empty"),
    pytest.param("x" * (ID_MAX_LENGTH + 1), id="129-chars"),
    pytest.param(" x", id="leading-space"),
    pytest.param("x ", id="trailing-space"),
    pytest.param("x\n", id="trailing-newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("ａｂｃ", id="fullwidth"),
    pytest.param("a\u202eb", id="rtl-override"),
    pytest.param("a\u200bb", id="zero-width-space"),
    pytest.param("раураl", id="cyrillic-lookalike"),
    pytest.param("١٢٣", id="arabic-digits"),
    pytest.param("C:x", id="colon"),
    pytest.param("%2e%2e", id="percent"),
    pytest.param("a\uff0fb", id="fullwidth-solidus"),
    pytest.param("a\u2215b", id="division-slash"),
    pytest.param("\uff0e\uff0e", id="fullwidth-dotdot"),
    pytest.param("caf\u00e9", id="nfc-accent"),
    pytest.param("cafe\u0301", id="nfd-accent"),
    pytest.param("x" * 1_000_000, id="million-chars"),
]

GOOD_IDS = ["a", "A.b_c-9", "x" * ID_MAX_LENGTH, "0", "a.b.c", "msg_0123abcdef"]

# Every engine operation that takes a session id (or a user id) must reject a bad one.
ENGINE_SESSION_OPS: dict[str, Callable[[Engine, Any], Any]] = {
    "add_message": lambda e, sid: e.add_message(sid, "user", "hello"),
    "create_session": lambda e, sid: e.create_session(sid),
    "create_session(user_id)": lambda e, sid: e.create_session("fresh", user_id=sid),
    "get_session(auto_create)": lambda e, sid: e.get_session(sid, auto_create=True),
    "update_session": lambda e, sid: e.update_session(sid, {"k": "v"}),
    "delete_session": lambda e, sid: e.delete_session(sid),
    "record_usage": lambda e, sid: e.record_usage(sid, ["viking://session/good"]),
    "commit": lambda e, sid: e.commit(sid),
    "get_context": lambda e, sid: e.get_context(sid, 100),
    "expand_archive": lambda e, sid: e.expand_archive(sid, "archive_001"),
    "retry_archive": lambda e, sid: e.retry_archive(sid, "archive_001"),
    "list_tasks(resource_id)": lambda e, sid: e.list_tasks(resource_id=sid),
}


@pytest.mark.parametrize("bad", [*BAD_IDS, pytest.param("a\ud800", id="lone-surrogate")])
def test_engine_rejects_bad_session_ids(engine: Engine, settings: Settings, bad: str) -> None:
    seed(engine)
    for name, op in ENGINE_SESSION_OPS.items():
        with nothing_written(settings):
            error = expect(INVALID, op, engine, bad)
        assert "user_id" in error.message or "session_id" in error.message or "resource_id" in error.message, name
    assert session_ids(engine) == {"good"}


@pytest.mark.parametrize("bad", [1, None, ["a"], b"abc"], ids=["int", "none", "list", "bytes"])
def test_engine_rejects_session_ids_of_the_wrong_type(engine: Engine, settings: Settings, bad: Any) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(INVALID, engine.add_message, bad, "user", "hello")
        expect(INVALID, engine.get_context, bad, 10)


@pytest.mark.parametrize("good", GOOD_IDS)
def test_engine_accepts_ids_at_the_edges_of_the_rules(engine: Engine, good: str) -> None:
    """The rejections above are about the id itself: these near-misses are accepted."""
    added = engine.add_message(good, "user", "hello", message_id=good)
    assert added.session_id == good and added.message_id == good and added.session_created
    assert engine.get_session(good).message_count == 1


@pytest.mark.parametrize("bad", [*BAD_IDS, pytest.param(7, id="int")])
def test_engine_rejects_bad_message_ids(engine: Engine, settings: Settings, bad: Any) -> None:
    seed(engine)
    with nothing_written(settings):
        error = expect(INVALID, engine.add_message, "good", "user", "hello", message_id=bad)
        assert "message_id" in error.message
        # Nor does a rejected message create its session.
        expect(INVALID, engine.add_message, "brand-new", "user", "hello", message_id=bad)
    assert engine.store.get_session("brand-new") is None
    assert engine.get_session("good").message_count == 1


MCP_SESSION_TOOLS: dict[str, Callable[[str], dict[str, Any]]] = {
    "add_message": lambda sid: {"session_id": sid, "role": "user", "content": "hello"},
    "create_session": lambda sid: {"session_id": sid},
    "get_session": lambda sid: {"session_id": sid, "auto_create": True},
    "update_session": lambda sid: {"session_id": sid, "metadata": {"k": "v"}},
    "delete_session": lambda sid: {"session_id": sid},
    "record_usage": lambda sid: {"session_id": sid, "contexts": ["viking://session/good"]},
    "commit": lambda sid: {"session_id": sid},
    "get_context": lambda sid: {"session_id": sid, "token_budget": 100},
    "expand_archive": lambda sid: {"session_id": sid, "archive_id": "archive_001"},
    "retry_archive": lambda sid: {"session_id": sid, "archive_id": "archive_001"},
}


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_mcp_rejects_bad_session_ids(mcp: Client, settings: Settings, bad: str) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    for tool, arguments in MCP_SESSION_TOOLS.items():
        with nothing_written(settings):
            await call_error(mcp, tool, arguments(bad), INVALID)
    with nothing_written(settings):
        await call_error(mcp, "create_session", {"session_id": "fresh", "user_id": bad}, INVALID)
        await call_error(mcp, "list_tasks", {"resource_id": bad}, INVALID)
        await call_error(mcp, "get_session", {"session_id": bad}, INVALID)


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_mcp_rejects_bad_message_ids(mcp: Client, settings: Settings, bad: str) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        for session_id in ("good", "brand-new"):
            text = await call_error(
                mcp,
                "add_message",
                {"session_id": session_id, "role": "user", "content": "hi", "message_id": bad},
                INVALID,
            )
            assert "message_id" in text
    await call_error(mcp, "get_session", {"session_id": "brand-new"}, NOT_FOUND)
    assert (await call_ok(mcp, "get_session", {"session_id": "good"}))["message_count"] == 1


# --- roles and message shapes ---------------------------------------------------------------------

BAD_ROLES = ["system", "tool", "", "User", "developer", " user", "user\x00"]


@pytest.mark.parametrize("role", [*BAD_ROLES, None, 1])
def test_engine_rejects_unknown_roles(engine: Engine, settings: Settings, role: Any) -> None:
    seed(engine)
    with nothing_written(settings):
        error = expect(INVALID, engine.add_message, "good", role, "hello")
        assert "role" in error.message and "'user' or 'assistant'" in error.message
        expect(INVALID, engine.add_message, "brand-new", role, "hello")
    assert engine.store.get_session("brand-new") is None


@pytest.mark.parametrize("role", BAD_ROLES)
async def test_mcp_rejects_unknown_roles(mcp: Client, settings: Settings, role: str) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        text = await call_error(mcp, "add_message", {"session_id": "good", "role": role, "content": "x"}, INVALID)
        assert "role" in text
        await call_error(mcp, "add_message", {"session_id": "brand-new", "role": role, "content": "x"}, INVALID)


# (arguments to add_message besides session_id and role, expected code, words the error mentions)
BAD_MESSAGES: list[Any] = [
    pytest.param({"content": "x", "parts": [{"type": "text", "text": "y"}]}, INVALID, "both", id="content-and-parts"),
    pytest.param({}, INVALID, "content", id="neither"),
    pytest.param({"content": None, "parts": None}, INVALID, "content", id="both-none"),
    pytest.param({"parts": []}, INVALID, "empty", id="empty-parts"),
    pytest.param({"parts": [{"type": "image", "url": "x"}]}, INVALID, "image", id="unknown-part-type"),
    pytest.param({"parts": [{"text": "no type"}]}, INVALID, "type", id="part-without-type"),
    pytest.param({"parts": [tool_part(tool_status="done")]}, INVALID, "tool_status", id="unknown-tool-status"),
    pytest.param({"parts": [tool_part(tool_status="")]}, INVALID, "tool_status", id="empty-tool-status"),
    pytest.param(
        {"parts": [{"type": "context", "uri": "u", "context_type": "file"}]},
        INVALID,
        "context_type",
        id="unknown-context-type",
    ),
    pytest.param({"parts": [{"type": "text", "text": "a", "extra": 1}]}, INVALID, "extra", id="unknown-field"),
    pytest.param({"parts": [{"type": "text", "text": 5}]}, INVALID, "text", id="text-as-number"),
    pytest.param({"parts": [{"type": "tool", "tool_name": "n"}]}, INVALID, "tool_id", id="tool-without-id"),
    pytest.param({"parts": [tool_part(tool_input=[1, 2])]}, INVALID, "tool_input", id="tool-input-not-object"),
    pytest.param({"content": 5}, INVALID, "content", id="content-as-number"),
    pytest.param({"content": ["a"]}, INVALID, "content", id="content-as-list"),
    pytest.param({"content": {"text": "a"}}, INVALID, "content", id="content-as-object"),
    pytest.param({"parts": "abc"}, INVALID, "parts", id="parts-as-string"),
    pytest.param({"parts": {"type": "text", "text": "a"}}, INVALID, "parts", id="parts-as-object"),
    pytest.param({"parts": ["abc"]}, INVALID, "parts", id="part-as-string"),
    pytest.param({"parts": [None]}, INVALID, "parts", id="part-as-null"),
    pytest.param({"content": "x", "created_at": "yesterday"}, INVALID, "created_at", id="bad-created-at"),
    pytest.param({"content": "x", "created_at": "2026-13-01T00:00:00Z"}, INVALID, "created_at", id="month-13"),
    pytest.param({"content": "x" * 5000}, EXHAUSTED, "limit", id="huge-content"),
    pytest.param({"content": "é" * 2100}, EXHAUSTED, "limit", id="huge-in-bytes-not-chars"),
    pytest.param({"parts": [{"type": "text", "text": "y" * 600}] * 8}, EXHAUSTED, "limit", id="huge-in-total"),
    pytest.param({"parts": [{"type": "text", "text": "p"}] * 9}, EXHAUSTED, "parts", id="too-many-parts"),
    pytest.param({"parts": [{"type": "text", "text": "p"}] * 5000}, EXHAUSTED, "parts", id="far-too-many-parts"),
    pytest.param({"parts": [tool_part(tool_input=nested(200))]}, EXHAUSTED, "nested", id="tool-input-200-deep"),
    pytest.param({"parts": [tool_part(tool_output="z" * 5000)]}, EXHAUSTED, "limit", id="huge-tool-output"),
]

# Values only a Python caller can send (JSON has no lone surrogates and no 100k-deep objects here).
ENGINE_ONLY_BAD_MESSAGES: list[Any] = [
    pytest.param({"content": "\ud800"}, INVALID, "surrogate", id="lone-surrogate-content"),
    pytest.param({"content": "ok \udfff ok"}, INVALID, "surrogate", id="lone-low-surrogate"),
    pytest.param({"parts": [{"type": "text", "text": "\ud800"}]}, INVALID, "surrogate", id="lone-surrogate-part"),
    pytest.param(
        {"parts": [{"type": "context", "uri": "viking://x", "abstract": "\ud800"}]},
        INVALID,
        "surrogate",
        id="lone-surrogate-abstract",
    ),
    pytest.param({"parts": [tool_part(tool_output="\ud800")]}, INVALID, "surrogate", id="lone-surrogate-output"),
    pytest.param(
        {"parts": [tool_part(tool_input={"k": "\ud800"})]}, INVALID, "surrogate", id="lone-surrogate-input-value"
    ),
    pytest.param({"parts": ("a",)}, INVALID, "parts", id="parts-as-tuple"),
    pytest.param({"content": b"bytes"}, INVALID, "content", id="content-as-bytes"),
    pytest.param({"content": "x", "created_at": 5}, INVALID, "created_at", id="created-at-as-number"),
    pytest.param({"parts": [tool_part(tool_input=nested(100_000))]}, EXHAUSTED, "nested", id="tool-input-100k-deep"),
    pytest.param({"parts": [tool_part(tool_input={1: 2})]}, INVALID, "tool_input", id="tool-input-int-key"),
]


@pytest.mark.parametrize(("fields", "code", "mentions"), BAD_MESSAGES + ENGINE_ONLY_BAD_MESSAGES)
def test_engine_rejects_bad_messages(
    engine: Engine, settings: Settings, fields: dict[str, Any], code: ErrorCode, mentions: str
) -> None:
    seed(engine)
    with nothing_written(settings):
        error = expect(code, engine.add_message, "good", "user", **fields)
        assert mentions.lower() in error.message.lower(), error.message
        expect(code, engine.add_message, "brand-new", "assistant", **fields)
    assert engine.store.get_session("brand-new") is None
    assert engine.get_session("good").message_count == 1


@pytest.mark.parametrize(("fields", "code", "mentions"), BAD_MESSAGES)
async def test_mcp_rejects_bad_messages(
    mcp: Client, settings: Settings, fields: dict[str, Any], code: ErrorCode, mentions: str
) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        for session_id in ("good", "brand-new"):
            text = await call_error(mcp, "add_message", {"session_id": session_id, "role": "user", **fields}, code)
            assert mentions.lower() in text.lower(), text
    await call_error(mcp, "get_session", {"session_id": "brand-new"}, NOT_FOUND)
    assert (await call_ok(mcp, "get_session", {"session_id": "good"}))["message_count"] == 1


async def test_mcp_rejects_lone_surrogate_text(mcp: Client, settings: Settings) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        text = await call_error(
            mcp, "add_message", {"session_id": "good", "role": "user", "content": "\ud800"}, INVALID
        )
        assert "surrogate" in text


def test_limits_are_not_off_by_one(engine: Engine) -> None:
    """Just under every limit is accepted: the rejections above are about size, not shape."""
    assert engine.add_message("s", "user", parts=[{"type": "text", "text": "p"}] * LIMITS.max_parts).message_count == 1
    # The part list [{"type":"text","text":"..."}] as stored is 28 bytes plus the text.
    engine.add_message("s", "user", "x" * (LIMITS.max_message_bytes - 64))
    engine.add_message("s", "user", parts=[tool_part(tool_input=nested(LIMITS.max_json_depth))])
    assert engine.get_session("s").message_count == 3


def test_engine_rejects_bad_metadata(engine: Engine, settings: Settings) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(EXHAUSTED, engine.create_session, "meta", metadata={"k": "v" * 2000})
        expect(EXHAUSTED, engine.update_session, "good", {"k": "v" * 2000})
        expect(INVALID, engine.create_session, "meta", metadata=["not", "an", "object"])
        expect(INVALID, engine.update_session, "good", "text")
        expect(INVALID, engine.update_session, "good", {1: "int key"})
        expect(INVALID, engine.update_session, "good", {"k": "\ud800"})
        expect(NOT_FOUND, engine.update_session, "missing", {"k": "v"})
    assert engine.store.get_session("meta") is None


def test_engine_rejects_deeply_nested_metadata(engine: Engine, settings: Settings) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(EXHAUSTED, engine.create_session, "meta", metadata=nested(5000))
        expect(EXHAUSTED, engine.update_session, "good", nested(5000))


@pytest.mark.parametrize(
    "tool_input",
    [{"\ud800": 1}, {"k": b"bytes"}, {"k": object()}],
    ids=["surrogate-key", "bytes-value", "object-value"],
)
def test_engine_rejects_tool_input_that_is_not_json(engine: Engine, settings: Settings, tool_input: Any) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(INVALID, engine.add_message, "good", "user", parts=[tool_part(tool_input=tool_input)])


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_engine_rejects_created_at_out_of_range(engine: Engine, settings: Settings, created_at: str) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(INVALID, engine.add_message, "good", "user", "x", created_at=created_at)


async def test_mcp_rejects_created_at_out_of_range(mcp: Client, settings: Settings) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        await call_error(
            mcp,
            "add_message",
            {"session_id": "good", "role": "user", "content": "x", "created_at": "0001-01-01T00:00:00+01:00"},
            INVALID,
        )


@pytest.mark.parametrize(
    "tool_id", ["a/b", "../x", "..", "a\x00b", ""], ids=["slash", "dotdot-slash", "dotdot", "nul", "empty"]
)
def test_engine_rejects_path_shaped_tool_ids(engine: Engine, settings: Settings, tool_id: str) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(INVALID, engine.add_message, "good", "assistant", parts=[tool_part(tool_id=tool_id)])


# --- deep nesting over the real transport ----------------------------------------------------------


def deep_tool_message(depth: int) -> dict[str, Any]:
    return {"session_id": "deep", "role": "assistant", "parts": [tool_part(tool_input=nested(depth))]}


@pytest.mark.slow
async def test_stdio_server_answers_deeply_nested_tool_input(tmp_path: Path) -> None:
    """Over the real stdio server: below the SDK's own JSON depth limit (~200 levels) the tool
    answers with its coded error; past it, the request is answered with a JSON-RPC error that
    says the same (mcp/stdio.py), never with silence. Either way nothing is written and
    the server carries on."""
    home = tmp_path / "stdio-home"
    async with Client(stdio_params(home)) as client:
        text = await call_error(client, "add_message", deep_tool_message(150), EXHAUSTED)
        assert "nested" in text
        with anyio.fail_after(10), pytest.raises(MCPError) as refused:
            await client.call_tool("add_message", deep_tool_message(200))
        assert refused.value.error.code == INVALID_REQUEST
        assert refused.value.error.message.startswith("RESOURCE_EXHAUSTED: the request is nested too deeply")
        await call_error(client, "get_session", {"session_id": "deep"}, NOT_FOUND)
        added = await call_ok(client, "add_message", {"session_id": "deep", "role": "user", "content": "alive"})
        assert added["message_count"] == 1 and added["session_created"]


class RawStdioServer:
    """The real server process, spoken to in raw bytes: what no well-behaved client would send."""

    def __init__(
        self, home: Path, stderr: Path | None = None, protocol_version: str = "2025-06-18", **env: str
    ) -> None:
        """`stderr`: a file that keeps the server's log (else it is thrown away)."""
        params = stdio_params(home, **env)
        with stderr.open("wb") if stderr is not None else open(os.devnull, "wb") as log:
            self.proc = subprocess.Popen(
                [params.command, *params.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, env=params.env,
            )  # fmt: skip
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        hello = {"protocolVersion": protocol_version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        self.send_json({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        answer = self.receive()
        assert answer["id"] == 0 and answer["result"]["protocolVersion"] == protocol_version
        self.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def send_json(self, message: Any) -> None:
        self.send(json.dumps(message).encode())

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

    def call(self, request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self.send_json(tool_call(request_id, tool, arguments))
        answer = self.receive()
        assert answer["id"] == request_id
        return answer

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


def tool_call_line(request_id: int, tool: str, arguments: dict[str, Any], nested_depth: int) -> bytes:
    """A tools/call line whose arguments' tool_input nests `nested_depth` levels, written as text
    (no JSON library serialises that deep)."""
    deep = '{"a":' * (nested_depth - 1) + "{}" + "}" * (nested_depth - 1)
    line = json.dumps(tool_call(request_id, tool, arguments)).replace('"DEEP"', deep)
    return line.encode()


@pytest.fixture
def raw_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RawStdioServer]:
    monkeypatch.chdir(tmp_path)
    server = RawStdioServer(tmp_path / "home")
    try:
        yield server
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"], "a file appeared outside the data directory"
    assert {p.name for p in (tmp_path / "home").iterdir()} <= DATA_FILES


def tool_error_text(answer: dict[str, Any]) -> str:
    result = answer["result"]
    assert result["isError"] is True, result
    return " ".join(c["text"] for c in result["content"])


@pytest.mark.slow
@pytest.mark.parametrize("depth", [600, 5000])
def test_raw_stdio_deep_tool_input_is_answered_with_the_code(raw_server: RawStdioServer, depth: int) -> None:
    """Deeper than any JSON reader in the server goes: a JSON-RPC error with the request's
    id, saying RESOURCE_EXHAUSTED, and the server carries on."""
    arguments = {"session_id": "deep", "role": "assistant", "parts": [tool_part(tool_input="DEEP")]}
    raw_server.send(tool_call_line(7, "add_message", arguments, depth))
    answer = raw_server.receive()
    assert answer["id"] == 7 and answer["error"]["code"] == INVALID_REQUEST
    assert answer["error"]["message"].startswith("RESOURCE_EXHAUSTED:")
    ok = raw_server.call(8, "add_message", {"session_id": "deep", "role": "user", "content": "alive"})
    assert ok["result"]["structuredContent"]["message_count"] == 1


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        ('{"jsonrpc": "2.0", "id": 7, "method": "x", "params": {"a": [[[', 7),
        ('{"params": {"id": 1, "x": "\\"id\\": 2"}, "id": "top", "z": ', "top"),
        ('{"a": "id", "b": ["id", {"id": 3}], "id" : 4}', 4),
        ('{"id": true}', None),
        ('{"id": 1.5}', None),
        ('{"id": {"a": 1}}', None),
        ('[{"id": 5}]', None),
        ('{"params": {"id": 6}}', None),
        ('{"jsonrpc": "2.0", "id": "unterminated', None),
        ("not json", None),
        ("", None),
    ],
)
def test_the_id_of_an_unreadable_request_is_found_at_the_top_level_only(line: str, request_id: Any) -> None:
    assert find_request_id(line) == request_id


def through_stdin(*lines: bytes) -> list[bytes]:
    """What the SDK's reader gets from `AnsweredStdin` for these stdin lines."""
    reader = io.BufferedReader(AnsweredStdin(io.BytesIO(b"".join(line + b"\n" for line in lines))))
    return reader.read().splitlines()


def test_stdin_lines_the_sdk_reads_pass_unchanged_and_the_others_become_answers() -> None:
    ping = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    odd_text = (
        b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x", "arguments": {"t": "\xff"}}}'
    )
    seen = through_stdin(ping, b"", b"not json, no id", odd_text, b'{"jsonrpc": "2.0", "id": "q", "method": 5}')
    assert seen[:2] == [ping, odd_text]  # invalid UTF-8 in a string: the SDK reads it (as U+FFFD)
    answer = json.loads(seen[2])
    assert answer["id"] == "q" and answer["method"] == UNREADABLE_METHOD
    assert answer["params"] == {"code": INVALID_REQUEST, "message": "Invalid request: not a JSON-RPC 2.0 request"}
    assert len(seen) == 3


def test_an_unreadable_request_on_a_modern_connection_carries_its_envelope() -> None:
    envelope = {PROTOCOL_VERSION_META_KEY: "2026-07-28", CLIENT_CAPABILITIES_META_KEY: {}}
    modern = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": envelope}}
    seen = through_stdin(json.dumps(modern).encode(), b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list", ')
    answer = json.loads(seen[1])
    assert answer["id"] == 2 and answer["params"]["code"] == PARSE_ERROR
    assert answer["params"]["_meta"] == envelope


@pytest.mark.slow
def test_raw_stdio_unreadable_lines_are_answered_and_the_server_stays_usable(raw_server: RawStdioServer) -> None:
    # Not JSON: a parse error, with the request's id where it can be found.
    raw_server.send(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {')
    answer = raw_server.receive()
    assert answer == {"jsonrpc": "2.0", "id": 1, "error": answer["error"]}
    assert answer["error"]["code"] == PARSE_ERROR and answer["error"]["message"].startswith("Parse error:")
    # Invalid UTF-8 between tokens: not JSON, but the id is still found and answered.
    raw_server.send(b'{"jsonrpc": "2.0", "id": 2, \xff\xfe "method": "tools/list"}')
    answer = raw_server.receive()
    assert answer["id"] == 2 and answer["error"]["code"] == PARSE_ERROR
    # JSON, but not a JSON-RPC request: invalid request, with its id.
    raw_server.send_json({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": 7})
    answer = raw_server.receive()
    assert answer["id"] == 3 and answer["error"]["code"] == INVALID_REQUEST
    raw_server.send_json({"jsonrpc": "1.0", "id": "four", "method": 5})
    answer = raw_server.receive()
    assert answer["id"] == "four" and answer["error"]["code"] == INVALID_REQUEST
    # No request id to answer (not JSON at all; a malformed notification; a blank line):
    # nobody waits for an answer by id, so none is sent. The next request is answered next.
    raw_server.send(b"this is not json {")
    raw_server.send_json({"jsonrpc": "2.0", "method": "notifications/initialized", "params": 7})
    raw_server.send(b"")
    # Throughout, the server kept serving and stored nothing from the bad lines.
    assert "NOT_FOUND:" in tool_error_text(raw_server.call(5, "get_session", {"session_id": "deep"}))
    ok = raw_server.call(6, "add_message", {"session_id": "s", "role": "user", "content": "alive"})
    assert ok["result"]["structuredContent"]["message_count"] == 1


def test_size_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIKING_MCP_MAX_MESSAGE_BYTES", "2000")
    monkeypatch.setenv("VIKING_MCP_MAX_PARTS", "4")
    monkeypatch.setenv("VIKING_MCP_MAX_JSON_DEPTH", "5")
    limits = settings_from_env().limits
    assert (limits.max_message_bytes, limits.max_parts, limits.max_json_depth) == (2000, 4, 5)
    for bad in ("0", "-5", "lots"):
        monkeypatch.setenv("VIKING_MCP_MAX_PARTS", bad)
        expect(INVALID, settings_from_env)


@pytest.mark.slow
def test_raw_stdio_size_limits_set_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = RawStdioServer(tmp_path / "home", VIKING_MCP_MAX_MESSAGE_BYTES="2000", VIKING_MCP_MAX_PARTS="4")
    try:
        huge = {"session_id": "s", "role": "user", "content": "x" * 3_000_000}
        assert "RESOURCE_EXHAUSTED:" in tool_error_text(server.call(1, "add_message", huge))
        big = {"session_id": "s", "role": "user", "content": "x" * 2100}
        assert "RESOURCE_EXHAUSTED:" in tool_error_text(server.call(2, "add_message", big))
        parts = {"session_id": "s", "role": "user", "parts": [{"type": "text", "text": "p"}] * 5}
        assert "RESOURCE_EXHAUSTED:" in tool_error_text(server.call(3, "add_message", parts))
        fits = {"session_id": "s", "role": "user", "parts": [{"type": "text", "text": "y" * 400}] * 4}
        assert server.call(4, "add_message", fits)["result"]["structuredContent"]["message_count"] == 1
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


@pytest.mark.slow
def test_raw_stdio_invalid_utf8_inside_text_is_stored_replaced(raw_server: RawStdioServer) -> None:
    """Invalid UTF-8 inside a string: the transport decodes it as U+FFFD (the SDK reads stdin with
    errors="replace"); the message is stored as decoded, never as bytes that break later reads."""
    line = json.dumps(tool_call(1, "add_message", {"session_id": "u", "role": "user", "content": "MARK"}))
    raw_server.send(line.encode().replace(b"MARK", b"bad \xff\xc3( \xed\xa0\x80 end"))
    answer = raw_server.receive()
    assert answer["id"] == 1 and not answer["result"].get("isError"), answer
    context = raw_server.call(2, "get_context", {"session_id": "u", "token_budget": 1000})
    (message,) = shown_messages(context["result"]["structuredContent"]["context"])
    assert message.startswith("user: bad \ufffd") and message.endswith(" end") and "\ud800" not in message
    # A lone surrogate written as a JSON escape is refused with a code (the SDK's JSON parser
    # does not read it: a parse error, answered with the request's id), not stored.
    raw_server.send(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add_message",'
                    b'"arguments":{"session_id":"u","role":"user","content":"x\\ud800y"}}}')  # fmt: skip
    answer = raw_server.receive()
    assert answer["id"] == 3 and answer["error"]["code"] == PARSE_ERROR
    count = raw_server.call(4, "get_session", {"session_id": "u"})["result"]["structuredContent"]["message_count"]
    assert count == 1


# --- archives -------------------------------------------------------------------------------------

BAD_ARCHIVE_IDS = [
    pytest.param("archive_1", id="too-few-digits"),
    pytest.param("archive_01", id="two-digits"),
    pytest.param("../archive_001", id="dotdot"),
    pytest.param("archive_001/..", id="trailing-dotdot"),
    pytest.param("archive_001/messages.jsonl", id="with-file"),
    pytest.param("x", id="x"),
    pytest.param("", id="empty"),
    pytest.param("archive_000", id="zero"),
    pytest.param("archive_-01", id="negative"),
    pytest.param("Archive_001", id="capital"),
    pytest.param("archive_001 ", id="trailing-space"),
    pytest.param("archive_001\n", id="trailing-newline"),
    pytest.param("archive_0\x0001", id="nul"),
    pytest.param("archive_1000000000", id="ten-digits"),
]


@pytest.mark.parametrize("bad", BAD_ARCHIVE_IDS)
def test_engine_rejects_bad_archive_ids(engine: Engine, settings: Settings, bad: str) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(INVALID, engine.expand_archive, "good", bad)
        expect(INVALID, engine.retry_archive, "good", bad)
        expect(INVALID, engine.retry_archive, "good", bad, action="skip")
        # The archive id is checked before the session is looked up.
        expect(INVALID, engine.expand_archive, "missing", bad)


@pytest.mark.parametrize("bad", BAD_ARCHIVE_IDS)
async def test_mcp_rejects_bad_archive_ids(mcp: Client, settings: Settings, bad: str) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    await call_ok(mcp, "commit", {"session_id": "good", "wait": True})
    with nothing_written(settings):
        for tool in ("expand_archive", "retry_archive"):
            text = await call_error(mcp, tool, {"session_id": "good", "archive_id": bad}, INVALID)
            assert "archive" in text


def test_engine_unknown_archives_are_not_found(engine: Engine, settings: Settings) -> None:
    seed(engine)
    with nothing_written(settings):
        for unknown in ("archive_002", "archive_999", "archive_1000", "archive_999999999"):
            error = expect(NOT_FOUND, engine.expand_archive, "good", unknown)
            assert unknown in error.message
            expect(NOT_FOUND, engine.retry_archive, "good", unknown)
            expect(NOT_FOUND, engine.retry_archive, "good", unknown, action="skip")
        expect(NOT_FOUND, engine.expand_archive, "missing", "archive_001")
        expect(NOT_FOUND, engine.retry_archive, "missing", "archive_001")
        # A completed archive is not failed: nothing to retry or skip.
        expect(PRECONDITION, engine.retry_archive, "good", "archive_001")
        expect(PRECONDITION, engine.retry_archive, "good", "archive_001", action="skip")
        expect(INVALID, engine.retry_archive, "good", "archive_001", action="bogus")
        expect(INVALID, engine.expand_archive, "good", "archive_001", offset=-1)
        expect(INVALID, engine.expand_archive, "good", "archive_001", limit=0)
    assert engine.store.get_session("missing") is None


async def test_mcp_unknown_archives_are_not_found(mcp: Client, settings: Settings) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    await call_ok(mcp, "commit", {"session_id": "good", "wait": True})
    with nothing_written(settings):
        for tool in ("expand_archive", "retry_archive"):
            await call_error(mcp, tool, {"session_id": "good", "archive_id": "archive_999"}, NOT_FOUND)
            await call_error(mcp, tool, {"session_id": "missing", "archive_id": "archive_001"}, NOT_FOUND)
        await call_error(mcp, "retry_archive", {"session_id": "good", "archive_id": "archive_001"}, PRECONDITION)
        await call_error(
            mcp, "retry_archive", {"session_id": "good", "archive_id": "archive_001", "action": "x"}, INVALID
        )
        await call_error(
            mcp, "expand_archive", {"session_id": "good", "archive_id": "archive_001", "offset": -1}, INVALID
        )
        await call_error(
            mcp, "expand_archive", {"session_id": "good", "archive_id": "archive_001", "limit": 0}, INVALID
        )


@pytest.mark.parametrize("lookalike", ["archive_００１", "archive_٠٠١"], ids=["fullwidth", "arabic-indic"])
def test_engine_rejects_lookalike_archive_digits(engine: Engine, settings: Settings, lookalike: str) -> None:
    seed(engine)
    with nothing_written(settings):
        expect(INVALID, engine.expand_archive, "good", lookalike)


# --- context, listing ------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [-1, -(10**9), True, 1.5, "100", None], ids=str)
def test_engine_rejects_bad_token_budgets(engine: Engine, settings: Settings, budget: Any) -> None:
    seed(engine)
    with nothing_written(settings):
        error = expect(INVALID, engine.get_context, "good", budget)
        assert "token_budget" in error.message
        expect(INVALID, engine.get_context, "missing", budget)


async def test_mcp_rejects_negative_token_budget(mcp: Client, settings: Settings) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        for budget in (-1, -(10**9), "lots", 1.5):
            text = await call_error(mcp, "get_context", {"session_id": "good", "token_budget": budget}, INVALID)
            assert "token_budget" in text


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    "zzz",
    "!!!!",
    "a\x00b",
    _b64(b"not json"),
    _b64(b"[1, 2]"),
    _b64(b'["a"]'),
    _b64(b'["a", "b", "c"]'),
    _b64(b"null"),
    _b64(b"\xff\xfe"),
]


@pytest.mark.parametrize("cursor", [*BAD_CURSORS, "\ud800"])
def test_engine_rejects_bad_cursors(engine: Engine, settings: Settings, cursor: str) -> None:
    seed(engine)
    with nothing_written(settings):
        error = expect(INVALID, engine.list_sessions, 10, cursor)
        assert "cursor" in error.message


@pytest.mark.parametrize("limit", [0, -1, 501, 10**6, 2.5, "10", None], ids=str)
def test_engine_rejects_bad_list_limits(engine: Engine, settings: Settings, limit: Any) -> None:
    seed(engine)
    with nothing_written(settings):
        error = expect(INVALID, engine.list_sessions, limit)
        assert "limit" in error.message
        expect(INVALID, engine.list_tasks, limit=limit)


async def test_mcp_rejects_bad_cursors_and_limits(mcp: Client, settings: Settings) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        for cursor in BAD_CURSORS:
            assert "cursor" in await call_error(mcp, "list_sessions", {"cursor": cursor}, INVALID)
        for limit in (0, -1, 501):
            assert "limit" in await call_error(mcp, "list_sessions", {"limit": limit}, INVALID)
            await call_error(mcp, "list_tasks", {"limit": limit}, INVALID)
        await call_error(mcp, "list_tasks", {"status": "bogus"}, INVALID)
        await call_error(mcp, "list_tasks", {"task_type": "bogus"}, INVALID)
        await call_error(mcp, "get_task", {"task_id": "../x"}, INVALID)
        await call_error(mcp, "get_task", {"task_id": "0" * 32}, NOT_FOUND)
        archive = {"session_id": "good", "archive_id": "archive_001"}
        for tool, arguments in [("list_tasks", {}), ("search_memories", {"query": "x"}), ("expand_archive", archive)]:
            assert "offset" in await call_error(mcp, tool, {**arguments, "offset": -1}, INVALID)
    page = await call_ok(mcp, "list_sessions", {"limit": 500})
    assert listed_ids(page["sessions"]) == ["good"]


# --- wrong types and unknown enum values over MCP ----------------------------------------------

MCP_WRONG_TYPES = [
    pytest.param("add_message", {"session_id": 5, "role": "user", "content": "x"}, id="session-id-int"),
    pytest.param("add_message", {"session_id": None, "role": "user", "content": "x"}, id="session-id-null"),
    pytest.param("add_message", {"session_id": ["good"], "role": "user", "content": "x"}, id="session-id-list"),
    pytest.param("add_message", {"session_id": "good", "role": 1, "content": "x"}, id="role-int"),
    pytest.param("add_message", {"session_id": "good", "role": "user", "content": "x", "message_id": 3}, id="msg-id"),
    pytest.param("add_message", {"session_id": "good", "role": "user", "parts": [{"type": 7}]}, id="part-type-int"),
    pytest.param("get_session", {"session_id": "good", "auto_create": "maybe"}, id="auto-create-string"),
    pytest.param("update_session", {"session_id": "good", "metadata": ["a"]}, id="metadata-list"),
    pytest.param("update_session", {"session_id": "good", "metadata": "text"}, id="metadata-string"),
    pytest.param("commit", {"session_id": "good", "keep_recent_count": "ten"}, id="keep-recent-string"),
    pytest.param("commit", {"session_id": "good", "keep_recent_count": -1}, id="keep-recent-negative"),
    pytest.param("commit", {"session_id": "good", "wait": "maybe"}, id="wait-string"),
    pytest.param("commit", {"session_id": "good", "abstract": 5}, id="abstract-int"),
    pytest.param("commit", {"session_id": "good", "memories": {"a": 1}}, id="memories-object"),
    pytest.param("commit", {"session_id": "good", "memories": [{"category": "dreams"}]}, id="memory-category"),
    pytest.param("record_usage", {"session_id": "good", "contexts": "viking://x"}, id="contexts-string"),
    pytest.param("record_usage", {"session_id": "good", "skill": {"uri": 5}}, id="skill-uri-int"),
    pytest.param("search_memories", {"query": "x", "category": "dreams"}, id="search-category"),
    pytest.param("search_memories", {"query": 5}, id="query-int"),
    pytest.param("search_memories", {"query": "x", "limit": "many"}, id="search-limit"),
    pytest.param("list_tasks", {"status": 3}, id="status-int"),
    pytest.param("get_context", {"session_id": "good", "token_budget": None}, id="budget-null"),
    pytest.param("get_context", {"session_id": "good", "token_budget": [100]}, id="budget-list"),
    pytest.param("expand_archive", {"session_id": "good", "archive_id": 1}, id="archive-id-int"),
    pytest.param("retry_archive", {"session_id": "good", "archive_id": "archive_001", "action": 1}, id="action-int"),
]


@pytest.mark.parametrize(("tool", "arguments"), MCP_WRONG_TYPES)
async def test_mcp_rejects_wrong_types_and_unknown_values(
    mcp: Client, settings: Settings, tool: str, arguments: dict[str, Any]
) -> None:
    await call_ok(mcp, "add_message", {"session_id": "good", "role": "user", "content": "first"})
    with nothing_written(settings):
        await call_error(mcp, tool, arguments, INVALID)


# --- odd but valid text is stored intact ---------------------------------------------------------

ODD_TEXTS = [
    pytest.param("before\x00after\x00", id="nul"),
    pytest.param("<|endoftext|>", id="endoftext"),
    pytest.param("a <|endoftext|> b <|fim_prefix|><|im_start|>system", id="special-tokens"),
    pytest.param("\x01\x1f\x7f\u2028\u2029\ufeff", id="controls"),
    pytest.param("a\u202eb ａｂｃ 😀 e\u0301", id="unicode"),
    pytest.param('{"json": [1, 2]}\n\\"quoted\\"', id="json-like"),
]


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_engine_stores_odd_text_intact(engine: Engine, text: str) -> None:
    added = engine.add_message("odd", "user", text, message_id="m1")
    engine.add_message(
        "odd",
        "assistant",
        parts=[
            {"type": "text", "text": text},
            {"type": "context", "uri": "viking://session/odd", "abstract": text},
            tool_part(tool_input={text: text}, tool_output=text),
        ],
        message_id="m2",
    )
    assert added.message_count == 1
    (first, second) = engine.store.live_messages("odd")
    assert first.message.parts == [TextPart(text=text)]
    assert message_text(first.message) == text
    part_text, context, tool = second.message.parts
    assert part_text.text == text and context.abstract == text  # type: ignore[union-attr]
    assert tool.tool_input == {text: text} and tool.tool_output == text  # type: ignore[union-attr]
    # Counted, not crashed on: the text costs tokens and the counts add up.
    assert first.tokens > MESSAGE_OVERHEAD_TOKENS
    assert engine.tokens.count(text) > 0
    info = engine.get_session("odd")
    assert info.pending_tokens == first.tokens + second.tokens
    context_ = engine.get_context("odd", 1000)
    assert [m.id for m in context_.messages] == ["m1", "m2"]
    assert context_.messages[0].parts == [TextPart(text=text)]
    assert context_.stats.activeTokens == info.pending_tokens
    # ... and still intact once archived and summarised.
    engine.commit("odd")
    engine.run_pending_phase2()
    archived = engine.expand_archive("odd", "archive_001", limit=None)
    assert archived.status == "completed"
    assert [m.parts for m in archived.messages] == [first.message.parts, second.message.parts]


@pytest.mark.parametrize("text", ODD_TEXTS)
async def test_mcp_stores_odd_text_intact(mcp: Client, text: str) -> None:
    await call_ok(mcp, "add_message", {"session_id": "odd", "role": "user", "content": text, "message_id": "m1"})
    context = await call_ok(mcp, "get_context", {"session_id": "odd", "token_budget": 1000})
    shown = "user: " + text.replace("\n", "\n  ")  # a message's own lines are indented under it
    assert shown in context["context"]
    stored = (await mcp.read_resource("viking://session/odd/messages.jsonl")).contents[0].text  # type: ignore[union-attr]
    assert json.loads(stored)["parts"] == [{"type": "text", "text": text}]
    info = await call_ok(mcp, "get_session", {"session_id": "odd"})
    assert info["pending_tokens"] > MESSAGE_OVERHEAD_TOKENS
