"""Phase 2 with an LLM endpoint, end to end: a real HTTP server on 127.0.0.1 speaking the
OpenAI chat-completions protocol, the engine committing and summarising through it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLlmServer, Reply
from viking_mcp.config import LlmSettings, Settings
from viking_mcp.engine import Engine

GOOD = {
    "abstract": "Ada planned a trip to Kyoto with her sister Bea.",
    "overview": "## Trip\nAda and Bea fly to Kyoto on 3 April 2025; Ada prefers ryokans.",
    "memories": [
        {"category": "profile", "abstract": "Ada is a data engineer in Lisbon.", "content": "- Job: data engineer"},
        {"category": "preferences", "name": "lodging", "abstract": "Prefers ryokans to hotels."},
        {"category": "entities", "name": "Bea", "abstract": "Bea: Ada's sister."},
        {"category": "events", "abstract": "Booked flights to Kyoto.", "when": "2025-01-10"},
        {"category": "cases", "abstract": "Sold-out ryokan: booked the sister inn instead."},
    ],
}


@pytest.fixture
def fake() -> Iterator[FakeLlmServer]:
    with FakeLlmServer(responder=lambda _: json.dumps(GOOD), usage=(900, 150)) as server:
        yield server


def engine_for(tmp_path: Path, server: FakeLlmServer, timeout: float = 5.0) -> Engine:
    llm = LlmSettings(provider="openai", base_url=server.base_url, model="fake-model", api_key="sk-test",
                      timeout_seconds=timeout, max_attempts=3, backoff_seconds=0.01)  # fmt: skip
    return Engine(Settings(home=tmp_path / "home", llm=llm))


def commit_one(engine: Engine, session: str = "trip") -> Any:
    engine.add_message(session, "user", content="I'm Ada. My sister Bea and I fly to Kyoto on 3 April.")
    engine.add_message(session, "assistant", content="Booked! I found a ryokan near Gion.")
    commit = engine.commit(session)
    engine.run_pending_phase2()
    return engine.get_task(commit.task_id or "")


def test_good_output_gives_memories_in_the_right_categories_and_uris(tmp_path: Path, fake: FakeLlmServer) -> None:
    engine = engine_for(tmp_path, fake)
    try:
        task = commit_one(engine)
        assert task.status == "completed", task.error
        uris = {m.uri: m.category for m in engine.store.list_memories("default", "user", "default", None, 100)}
        uris |= {m.uri: m.category for m in engine.store.list_memories("default", "agent", "default", None, 100)}
        assert uris["viking://user/default/memories/profile.md"] == "profile"
        assert uris["viking://user/default/memories/preferences/lodging.md"] == "preferences"
        assert uris["viking://user/default/memories/entities/bea.md"] == "entities"
        assert any(u.startswith("viking://user/default/memories/events/2025-01-10-") for u in uris)
        assert any(u.startswith("viking://agent/default/memories/cases/") for u in uris)
        detail = engine.expand_archive("trip", "archive_001")
        assert detail.abstract == GOOD["abstract"] and detail.overview == GOOD["overview"]
        info = engine.get_session("trip")
        assert info.llm_token_usage.model_dump() == {"prompt": 900, "completion": 150, "total": 1050}
        assert info.memories_extracted["total"] == 5
        [request] = fake.requests
        assert request.json["model"] == "fake-model" and "Kyoto" in request.user
        assert request.headers["authorization"] == "Bearer sk-test"
    finally:
        engine.close()


def test_malformed_json_fails_the_task_with_the_reason_and_stays_retryable(tmp_path: Path, fake: FakeLlmServer) -> None:
    engine = engine_for(tmp_path, fake)
    try:
        fake.script([Reply(content='{"abstract": "half a reply", "memories": [')])
        task = commit_one(engine)
        assert task.status == "failed"
        assert task.error is not None and "malformed" in task.error
        assert engine.get_context("trip", 1000).stats.failedArchives == 1
        assert engine.store.list_memories("default", "user", "default", None, 10) == []  # nothing half-written
        retry = engine.retry_archive("trip", "archive_001")  # the endpoint answers properly now
        engine.run_pending_phase2()
        assert engine.get_task(retry.task_id or "").status == "completed"
    finally:
        engine.close()


def test_a_429_then_success_completes(tmp_path: Path, fake: FakeLlmServer) -> None:
    engine = engine_for(tmp_path, fake)
    try:
        fake.script([Reply(status=429, headers={"Retry-After": "0"}, json_body={"error": {"message": "slow down"}})])
        task = commit_one(engine)
        assert task.status == "completed", task.error
        assert len(fake.requests) == 2
    finally:
        engine.close()


def test_a_timeout_then_success_completes_and_persistent_timeouts_fail(tmp_path: Path, fake: FakeLlmServer) -> None:
    engine = engine_for(tmp_path, fake, timeout=0.5)
    try:
        fake.script([Reply(delay=2.0, content=json.dumps(GOOD))])
        task = commit_one(engine)
        assert task.status == "completed", task.error
        assert len(fake.requests) == 2

        fake.script([Reply(delay=2.0, content=json.dumps(GOOD))] * 3)
        task = commit_one(engine, "other")
        assert task.status == "failed"
        assert task.error is not None and "3 attempts" in task.error
    finally:
        engine.close()
