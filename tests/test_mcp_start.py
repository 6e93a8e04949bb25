"""How the MCP server starts and stops, and what it leaves behind.

The tools, resource templates and prompt are registered the ordinary way, before anything
is served; the store opens in the server's lifespan. Nothing but the database is written
into the data directory, whatever the installed SDK or pydantic release.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from mcp import Client

from tests.conftest import REPO, stdio_params
from tests.test_http_api import NO_KEY, http_server
from viking_mcp.cli.main import _arguments, _parser
from viking_mcp.config import Settings
from viking_mcp.mcp.server import build_server, describe_open_error

pytestmark = pytest.mark.anyio

# What a data directory may hold: SQLite's database, and its WAL and shared-memory files.
DATABASE_FILES = {"viking.db", "viking.db-wal", "viking.db-shm"}


async def test_the_tools_are_registered_before_the_server_runs(settings: Settings) -> None:
    server = build_server(settings)
    names = [tool.name for tool in await server.list_tools()]
    assert len(names) == 16 and "add_message" in names and "retry_archive" in names
    templates = await server.list_resource_templates()
    assert any(t.uri_template == "viking://session/{session_id}/history/{archive_id}" for t in templates)
    assert [prompt.name for prompt in await server.list_prompts()] == ["rebuild_context"]
    assert not settings.home.exists(), "building the server opened the store"


async def test_another_default_budget_is_listed_as_configured(settings: Settings) -> None:
    """get_context's default budget is a setting, and it appears in the listing."""
    server = build_server(replace(settings, mcp_default_token_budget=1234))
    listed = {tool.name: tool for tool in await server.list_tools()}
    assert listed["get_context"].input_schema["properties"]["token_budget"]["default"] == 1234


async def test_a_store_that_cannot_be_opened_stops_the_server_with_the_reason(tmp_path: Path) -> None:
    """The lifespan raises the store's error before anything is served (the CLI prints
    `describe_open_error`'s line for it and exits 2: tests/test_stdio_server.py)."""
    home = tmp_path / "home"
    home.write_text("a file, not a folder")
    settings = Settings(home=home)
    with pytest.raises(OSError) as raised:
        async with Client(build_server(settings)):
            pass
    assert describe_open_error(raised.value, settings).startswith(f"cannot use the data directory {home}:")
    assert home.read_text() == "a file, not a folder"


async def test_after_stdio_and_http_the_data_directory_holds_only_the_database(tmp_path: Path) -> None:
    """A real stdio server and a real HTTP server (REST and MCP at /mcp), each used for a
    whole session's life, leave nothing in the data directory but the database."""
    home = tmp_path / "home"
    async with Client(stdio_params(home)) as client:
        await client.list_tools()
        for text in ("I fly to Lisbon on 3 May.", "Booked TP1351."):
            result = await client.call_tool("add_message", {"session_id": "s", "role": "user", "content": text})
            assert not result.is_error, result.content
        result = await client.call_tool("commit", {"session_id": "s", "wait": True})
        assert not result.is_error and result.structured_content is not None
        assert result.structured_content["task_status"] == "completed"
        await client.read_resource("viking://session/s/history/archive_001/.overview.md")
    assert {p.name for p in home.iterdir()} <= DATABASE_FILES

    with http_server(tmp_path) as server:
        server.ok("POST", "/api/v1/sessions/h/messages", {"role": "user", "content": "Hello over HTTP."}, key=NO_KEY)
        assert server.ok("POST", "/api/v1/sessions/h/commit", {"wait": True}, key=NO_KEY)["task_status"] == "completed"
        async with Client(f"{server.base}/mcp") as client:
            result = await client.call_tool("get_context", {"session_id": "h", "token_budget": 2000})
            assert not result.is_error, result.content
    assert {p.name for p in home.iterdir()} <= DATABASE_FILES
    # Beside it, only the HTTP server's captured output (the test's, not the server's).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "stderr.txt", "stdout.txt"]


def test_a_settled_idle_server_has_not_loaded_the_tokenizer(tmp_path: Path) -> None:
    """The tokenizer (40 MB) is loaded by the first append, not at start: the idle server's
    memory is a target."""
    code = """
import sys, anyio
from mcp import Client
from viking_mcp.config import settings_from_env
from viking_mcp.mcp.server import build_server, describe_open_error

async def main():
    async with Client(build_server(settings_from_env())) as client:
        await client.call_tool("list_sessions", {})
        print("tiktoken" in sys.modules, end=" ")
        await client.call_tool("add_message", {"session_id": "s", "role": "user", "content": "hi"})
        print("tiktoken" in sys.modules)

anyio.run(main)
"""
    env = {"VIKING_MCP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False True"


def test_no_arguments_is_the_stdio_server_without_building_the_parser() -> None:
    fast = vars(_arguments([]))
    parsed = vars(_parser().parse_args([]))
    assert fast == {key: parsed[key] for key in fast}
    assert fast["command"] is None


# The SDK's private names that code of ours once reached into. Each broke, or could break,
# silently on the next SDK release; only the SDK's public API is used now.
PRIVATE_SDK_NAMES = re.compile(r"_tool_manager|_lowlevel_server|fn_metadata|_stream_protocols|FuncMetadata")


def test_only_the_sdks_public_api_is_used() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "viking_mcp").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_SDK_NAMES.search(line) or re.search(r"from mcp[\w.]*\._", line)
    ]
    assert found == []


def test_nothing_shipped_names_an_exact_dependency_version() -> None:
    """No file in the package is keyed to the installed release of a dependency."""
    pinned = re.compile(r'"(pydantic|pydantic_core|mcp|mcp_types)"\s*:\s*"\d+\.\d+\.\d+')
    shipped = [p for p in (REPO / "viking_mcp").rglob("*") if p.is_file() and p.suffix in (".json", ".py")]
    assert [str(p) for p in shipped if pinned.search(p.read_text(encoding="utf-8"))] == []
    assert not list((REPO / "viking_mcp").rglob("*.json"))
