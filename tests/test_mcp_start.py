"""What the MCP server does before it can answer: as little as it can.

A host waits for `tools/list` when it starts the server, so the tools (a pydantic model and
JSON schemas each, built by the SDK), the resource templates and the prompt are registered
after start, and `tools/list` is answered meanwhile from `mcp_tools.json`. These tests
keep that file honest: current, identical to what the registrations list, and ignored
when it is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from viking_mcp.config import Settings
from viking_mcp.faces import mcp_server
from viking_mcp.faces.cli import _arguments, _parser
from viking_mcp.faces.mcp_server import build_server, cached_tool_listing, listing_key, remember_tool_listing

pytestmark = pytest.mark.anyio

REGENERATE = "run `python -m viking_mcp.faces.mcp_tools` to write it again"


def dumped(tools: list[Any]) -> list[dict[str, Any]]:
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


async def registered_listing(settings: Settings) -> list[dict[str, Any]]:
    server = build_server(settings)
    server.ensure_tools()
    return dumped(await server.list_tools())


def shipped_key() -> dict[str, Any]:
    key: dict[str, Any] = json.loads(mcp_server.LISTING_PATH.read_text(encoding="utf-8"))["key"]
    return key


def test_the_tool_listing_file_is_current() -> None:
    """Written from the tools as they are now (the SDK and pydantic may have moved on since:
    then it is not used, and the next test says so)."""
    assert shipped_key()["sources"] == listing_key(20_000)["sources"], f"mcp_tools.json is out of date: {REGENERATE}"


async def test_the_tool_listing_file_lists_exactly_what_the_tools_register(settings: Settings) -> None:
    if shipped_key() != listing_key(settings.mcp_default_token_budget):
        pytest.skip(f"mcp_tools.json was written with other versions {shipped_key()['versions']}: {REGENERATE}")
    cached = cached_tool_listing(settings)
    assert cached is not None, REGENERATE
    assert dumped(cached) == await registered_listing(settings), REGENERATE
    names = [tool.name for tool in cached]
    assert len(names) == 15 and "add_message" in names and "retry_archive" in names


async def test_before_registration_tools_list_answers_from_the_file(settings: Settings) -> None:
    server = build_server(settings)
    assert server._tool_manager.list_tools() == []  # nothing registered yet
    listed = await server.list_tools()
    assert dumped(listed) == dumped(cached_tool_listing(settings) or [])
    assert server._tool_manager.list_tools() == []  # listing registered nothing


async def test_a_tool_call_registers_the_tools_first(settings: Settings) -> None:
    server = build_server(settings)
    async with Client(server) as client:
        result = await client.call_tool("add_message", {"session_id": "s", "role": "user", "content": "hi"})
        assert not result.is_error
        assert len(server._tool_manager.list_tools()) == 15


async def test_a_stale_file_is_not_used(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document = json.loads(mcp_server.LISTING_PATH.read_text(encoding="utf-8"))
    document["key"]["sources"] = "0" * 64  # as if a tool changed since the file was written
    document["tools"][0]["description"] = "stale"
    stale = tmp_path / "mcp_tools.json"
    stale.write_text(json.dumps(document), encoding="utf-8")
    monkeypatch.setattr(mcp_server, "LISTING_PATH", stale)
    assert cached_tool_listing(settings) is None
    server = build_server(settings)
    assert dumped(await server.list_tools()) == await registered_listing(settings)

    stale.write_text("{not json", encoding="utf-8")
    assert cached_tool_listing(settings) is None
    stale.unlink()
    assert cached_tool_listing(settings) is None


async def test_another_default_budget_is_listed_as_configured(settings: Settings) -> None:
    """get_context's default budget is a setting, and it appears in the listing."""
    custom = replace(settings, mcp_default_token_budget=1234)
    assert cached_tool_listing(custom) is None
    server = build_server(custom)
    listed = {tool.name: tool for tool in await server.list_tools()}
    assert listed["get_context"].input_schema["properties"]["token_budget"]["default"] == 1234


def in_fresh_interpreter(code: str, tmp_path: Path) -> str:
    """What `code` prints, run by a new Python on a new data directory."""
    env = {"VIKING_MCP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_listing_the_tools_imports_neither_models_nor_engine(tmp_path: Path) -> None:
    """In a fresh interpreter: serve as the stdio command does (lifespan and all), initialize
    and list the tools, then look at what was imported to do that."""
    code = """
import sys, anyio
from mcp import Client
from viking_mcp.config import settings_from_env
from viking_mcp.faces.mcp_server import build_server

async def main():
    async with Client(build_server(settings_from_env())) as client:
        tools = (await client.list_tools()).tools
        heavy = ("viking_mcp.models", "viking_mcp.faces.mcp_tools", "viking_mcp.engine", "viking_mcp.store", "sqlite3")
        print(len(tools), [m for m in heavy if m in sys.modules])

anyio.run(main)
"""
    assert in_fresh_interpreter(code, tmp_path) == "15 []"


def test_a_settled_idle_server_has_not_loaded_the_tokenizer(tmp_path: Path) -> None:
    """The tokenizer (40 MB) is loaded by the first append, not at start: the idle server's
    memory is a target. That first append runs on a thread, not on the event loop."""
    code = """
import sys, time, anyio
from mcp import Client
from viking_mcp.config import settings_from_env
from viking_mcp.faces.mcp_server import build_server

async def main():
    async with Client(build_server(settings_from_env())) as client:
        await client.call_tool("list_sessions", {})  # the data directory is open
        await anyio.sleep(1.0)  # settled: tools registered, listing remembered
        print("tiktoken" in sys.modules, end=" ")
        await client.call_tool("add_message", {"session_id": "s", "role": "user", "content": "hi"})
        print("tiktoken" in sys.modules)

anyio.run(main)
"""
    assert in_fresh_interpreter(code, tmp_path) == "False True"


def test_no_arguments_is_the_stdio_server_without_building_the_parser() -> None:
    fast = vars(_arguments([]))
    parsed = vars(_parser().parse_args([]))
    assert fast == {key: parsed[key] for key in fast}
    assert fast["command"] is None


async def test_a_listing_that_does_not_fit_is_remembered_in_the_data_directory(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed beside another SDK or pydantic release than the shipped file was written
    with, the first start registers the tools to list them and writes their listing into
    the data directory; the next start lists from it."""
    monkeypatch.setattr(mcp_server, "LISTING_PATH", tmp_path / "missing.json")
    assert cached_tool_listing(settings) is None
    settings.home.mkdir(parents=True, exist_ok=True)
    server = build_server(settings)
    server.ensure_tools()
    await remember_tool_listing(server, settings)
    remembered = cached_tool_listing(settings)
    assert remembered is not None
    assert dumped(remembered) == await registered_listing(settings)
    restarted = build_server(settings)
    assert restarted.listed_from_file
    assert dumped(await restarted.list_tools()) == dumped(remembered)
    assert list(settings.home.glob("*.tmp")) == []


async def test_the_stdio_server_remembers_the_listing_once_settled(tmp_path: Path) -> None:
    """The real command, with a shipped file that does not fit (another -O level than the
    tests run with): after it settles, the data directory holds the listing."""
    from mcp import StdioServerParameters

    from tests.conftest import server_env

    home = tmp_path / "home"
    params = StdioServerParameters(
        command=sys.executable, args=["-O", "-m", "viking_mcp"], env=server_env(home), cwd=str(tmp_path)
    )
    async with Client(params) as client:
        listed = (await client.list_tools()).tools
        for _ in range(100):
            if (home / mcp_server.LISTING_CACHE_NAME).exists():
                break
            await anyio.sleep(0.1)
    document = json.loads((home / mcp_server.LISTING_CACHE_NAME).read_text(encoding="utf-8"))
    assert document["key"]["optimize"] == 1
    assert document["tools"] == dumped(listed)
