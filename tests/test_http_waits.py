"""Waiting commits must not take the threads every other request needs."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import anyio
import httpx2
import pytest

from viking_mcp.api.app import build_app
from viking_mcp.auth import KeyRing
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


class Slow:
    name = "slow"

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        time.sleep(0.5)
        return ArchiveSummary(abstract="done", overviews=["done"])


async def test_many_waiting_commits_leave_other_requests_alone(tmp_path: Path) -> None:
    settings = replace(Settings(home=tmp_path / "home"), commit_wait_seconds=8.0)
    engine = Engine(settings, summariser=Slow())
    app = build_app(settings, engine=engine, keyring=KeyRing(), run_worker=True)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                for i in range(60):
                    await http.post(f"/api/v1/sessions/s{i}/messages", json={"role": "user", "content": "hi"})

                async def commit(i: int) -> None:
                    await http.post(f"/api/v1/sessions/s{i}/commit", json={"wait": True})

                async with anyio.create_task_group() as group:
                    for i in range(60):  # more waiting commits than the thread pool has threads
                        group.start_soon(commit, i)
                    # Until every commit has passed Phase 1 (its task exists) and is waiting.
                    with anyio.fail_after(30):
                        while len((await http.get("/api/v1/tasks?limit=100")).json()["result"]["tasks"]) < 60:
                            await anyio.sleep(0.05)
                    started = time.monotonic()
                    answer = await http.get("/api/v1/sessions?limit=5")
                    took = time.monotonic() - started
                    assert answer.status_code == 200
                    assert took < 4.0, f"a plain read waited {took:.1f} s behind waiting commits"
    finally:
        engine.close()
