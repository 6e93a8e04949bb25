"""Fixtures: real stores in temporary directories, real MCP clients and servers."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.faces.mcp_server import build_server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


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


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIKING_MCP_")}
    env.update({"VIKING_MCP_HOME": str(home), "VIKING_MCP_LOG_LEVEL": "WARNING", **extra})
    return env


def stdio_params(home: Path, **extra: str) -> StdioServerParameters:
    """Launch parameters for the real server process (`python -m viking_mcp`)."""
    return StdioServerParameters(command=sys.executable, args=["-m", "viking_mcp"], env=server_env(home, **extra))
