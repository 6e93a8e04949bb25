"""Fixtures: real stores in temporary directories, real MCP clients and servers.

Tests marked `both_stores` run twice: on the embedded SQLite store and on a real
PostgreSQL server that the run starts itself (tests/pg_server.py), each test on a store
of its own. Where PostgreSQL cannot be started the PostgreSQL half is skipped, saying
why, except under CI (CI=true), where it must run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.pg_server import PostgresServer, Unavailable as PostgresUnavailable
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.mcp.server import build_server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


STORES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker
    if "store_backend" in metafunc.fixturenames and marked("both_stores") and not marked("sqlite_only"):
        metafunc.parametrize("store_backend", STORES, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(f"no PostgreSQL server for the PostgreSQL half of the suite: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """Which store the test runs on: `sqlite` unless the test is marked `both_stores`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def new_settings(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Settings]:
    """Settings for a new, empty store of the test's kind, each call another one."""
    server: PostgresServer | None = None
    if store_backend == "postgresql":
        server = request.getfixturevalue("postgres_server")

    def make(name: str) -> Settings:
        return Settings(home=tmp_path / name, store=server.fresh_url() if server else None)

    return make


@pytest.fixture
def settings(new_settings: Callable[[str], Settings]) -> Settings:
    return new_settings("home")


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """An engine with no background worker: tests run Phase 2 when they choose to."""
    engine = Engine(settings)
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
async def mcp(settings: Settings) -> AsyncIterator[Client]:
    """An in-process MCP client on a fresh server (with its background worker)."""
    async with Client(build_server(settings)) as client:
        yield client


# A message as get_context and expand_archive show it: `[HH:MM] role: text` or `[YYYY-MM-DD HH:MM] role: text`.
_MESSAGE_LINE = re.compile(r"^\[(?:\d{4}-\d\d-\d\d )?\d\d:\d\d\] (\w+: .*)$", re.MULTILINE)


def shown_messages(text: str) -> list[str]:
    """`role: text` (its first line) of each message a tool's text shows, in order."""
    return _MESSAGE_LINE.findall(text)


def listed_ids(text: str) -> list[str]:
    """The ids an MCP listing (list_sessions, list_tasks) shows: one line each, after its
    heading, the id before the first colon; lines in brackets are notes."""
    return [line.split(":", 1)[0] for line in text.splitlines()[1:] if not line.startswith("(")]


async def message_ids(client: Client, uri: str) -> list[str]:
    """The ids of the messages a messages.jsonl resource (a session's, an archive's) holds, in order.
    The tools show messages as text for a model; the resources hold them whole."""
    contents = (await client.read_resource(uri)).contents
    return [json.loads(line)["id"] for line in getattr(contents[0], "text", "").splitlines()]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIKING_MCP_")}
    env.update({"VIKING_MCP_HOME": str(home), "VIKING_MCP_LOG_LEVEL": "WARNING", **extra})
    return env


def stdio_params(home: Path, **extra: str) -> StdioServerParameters:
    """Launch parameters for the real server process (`python -m viking_mcp`)."""
    return StdioServerParameters(command=sys.executable, args=["-m", "viking_mcp"], env=server_env(home, **extra))
