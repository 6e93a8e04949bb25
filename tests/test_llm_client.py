"""Phase 2 from an LLM endpoint, against a real HTTP server on 127.0.0.1 (tests/fake_llm.py).

Good output becomes memories; malformed output, 429s, 5xx, timeouts and refused keys each
behave as the contract says: retried when transient, a clear error otherwise, never an
empty "completed".
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_llm import FakeLlmServer, Reply
from viking_mcp.config import LlmSettings, llm_settings_from_env
from viking_mcp.errors import InvalidArgument
from viking_mcp.memory.llm import LlmError, LlmPhase2
from viking_mcp.models import Message, TextPart
from viking_mcp.summarize.base import ArchiveInput
from viking_mcp.tokens import TokenCounter

API_KEY = "sk-test-SECRET-0123456789"

GOOD: dict[str, Any] = {
    "abstract": "Caroline told the assistant about her move to Lisbon, her sister Melanie and her coffee.",
    "overview": "# Overview\n\n- Caroline, a nurse, moved to Lisbon on 2024-05-07.\n"
    "- Her sister Melanie visits in June.",
    "memories": [
        {
            "category": "profile",
            "abstract": "Caroline is a nurse who lives in Lisbon.",
            "overview": "",
            "content": "Caroline works as a nurse and moved to Lisbon in May 2024.",
            "name": None,
            "when": None,
        },
        {
            "category": "preferences",
            "name": "coffee",
            "abstract": "Caroline drinks oat-milk flat whites.",
            "overview": "",
            "content": "",
            "when": None,
        },
        {
            "category": "entities",
            "name": "Melanie",
            "abstract": "Melanie is Caroline's sister.",
            "overview": "",
            "content": "",
            "when": None,
        },
        {
            "category": "events",
            "name": "move to Lisbon",
            "abstract": "Caroline moved to Lisbon.",
            "overview": "",
            "content": "",
            "when": "2024-05-07",
        },
    ],
}


def message(n: int, text: str, role: str = "user", day: int = 8) -> Message:
    return Message(
        id=f"msg_{n:04d}",
        role="user" if role == "user" else "assistant",
        parts=[TextPart(text=text)],
        created_at=f"2024-05-{day:02d}T09:{n // 60 % 60:02d}:{n % 60:02d}.000000Z",
    )


def archive(messages: list[Message], previous_overview: str = "") -> ArchiveInput:
    return ArchiveInput(
        session_id="s1", archive_id="archive_001", messages=messages, previous_overview=previous_overview
    )


SMALL = archive(
    [
        message(0, "I moved to Lisbon yesterday. I'm a nurse, by the way."),
        message(1, "Welcome to Lisbon! How is the new job?", role="assistant"),
        message(2, "Good. My sister Melanie visits in June. I live on oat-milk flat whites."),
    ]
)


@pytest.fixture(scope="module")
def tokens() -> TokenCounter:
    counter = TokenCounter()
    counter.warm_up()
    return counter


@pytest.fixture
def server() -> Iterator[FakeLlmServer]:
    with FakeLlmServer(responder=lambda _request: json.dumps(GOOD)) as fake:
        yield fake


class Sleeps(list[float]):
    """An injected `sleep` that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def phase2(
    server: FakeLlmServer, tokens: TokenCounter, provider: str = "openai", **overrides: Any
) -> tuple[LlmPhase2, Sleeps]:
    options: dict[str, Any] = {
        "provider": provider,
        "base_url": server.url_for(provider),
        "model": "test-model",
        "api_key": API_KEY,
        "timeout_seconds": 5.0,
        **overrides,
    }
    sleeps = Sleeps()
    return LlmPhase2(LlmSettings(**options), tokens, sleep=sleeps), sleeps


# --- good output -------------------------------------------------------------------------


def test_good_output_becomes_memories_in_their_categories(server: FakeLlmServer, tokens: TokenCounter) -> None:
    llm, sleeps = phase2(server, tokens)
    result = llm.run(SMALL)

    assert result.abstract == GOOD["abstract"]
    assert result.overview.startswith("# Overview")
    assert [(m.category, m.name, m.when) for m in result.memories] == [
        ("profile", None, None),
        ("preferences", "coffee", None),
        ("entities", "Melanie", None),
        ("events", "move to Lisbon", "2024-05-07"),
    ]
    assert (result.prompt_tokens, result.completion_tokens, result.calls) == (100, 20, 1)
    assert sleeps == []

    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.json
    assert body["model"] == "test-model"
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0 and body["max_tokens"] == 4000
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "preferences" in request.system and "JSON" in request.system
    assert "[2024-05-08T09:00:00.000000Z] user: I moved to Lisbon yesterday." in request.user
    assert "[2024-05-08T09:00:01.000000Z] assistant: Welcome to Lisbon!" in request.user


def test_anthropic_messages_api(server: FakeLlmServer, tokens: TokenCounter) -> None:
    server.usage = (321, 45)
    llm, _ = phase2(server, tokens, provider="anthropic")
    result = llm.run(archive(SMALL.messages, previous_overview="# Earlier\n\n- Caroline is training for a 10k."))

    assert [m.category for m in result.memories] == ["profile", "preferences", "entities", "events"]
    assert (result.prompt_tokens, result.completion_tokens) == (321, 45)
    [request] = server.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    body = request.json
    assert body["model"] == "test-model" and body["max_tokens"] == 4000 and body["temperature"] == 0
    assert "preferences" in body["system"]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "Caroline is training for a 10k" in request.user  # the previous overview is carried forward
    assert "My sister Melanie visits in June" in request.user


def test_no_key_sends_no_authorization_header(server: FakeLlmServer, tokens: TokenCounter) -> None:
    llm, _ = phase2(server, tokens, api_key=None)  # e.g. a local Ollama
    llm.run(SMALL)
    assert "authorization" not in server.requests[0].headers


def test_fenced_json_and_harmless_drift_are_accepted(server: FakeLlmServer, tokens: TokenCounter) -> None:
    drifted = json.loads(json.dumps(GOOD))
    drifted["memories"][3]["category"] = "Events"
    drifted["memories"][3]["confidence"] = 0.9  # a key MemoryInput does not have
    server.script([Reply(content="Here you go:\n```json\n" + json.dumps(drifted) + "\n```")])
    llm, _ = phase2(server, tokens)
    result = llm.run(SMALL)
    assert result.memories[3].category == "events" and result.memories[3].when == "2024-05-07"


def test_usage_missing_is_counted_locally(server: FakeLlmServer, tokens: TokenCounter) -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": json.dumps(GOOD)}, "finish_reason": "stop"}]}
    server.script([Reply(json_body=body)])
    llm, _ = phase2(server, tokens)
    result = llm.run(SMALL)
    assert result.prompt_tokens > 500  # the system prompt alone is several hundred tokens
    assert result.completion_tokens == tokens.count(json.dumps(GOOD))


# --- malformed output: an error, once, never an empty result -------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("Sure! Here is the summary: {abstract: Caroline moved", "invalid JSON"),
        ("I could not summarise this conversation.", "no JSON object"),
        ("", "no text"),
        (json.dumps({**GOOD, "memories": [{**GOOD["memories"][0], "category": "hobbies"}]}), "'hobbies'"),
        (json.dumps({"abstract": "Something happened.", "overview": "x"}), "memories"),
        (json.dumps({**GOOD, "abstract": "  "}), "abstract"),
        (json.dumps([GOOD]), "not a JSON object"),
    ],
)
def test_malformed_output_is_an_error_after_one_request(
    server: FakeLlmServer, tokens: TokenCounter, content: str, reason: str
) -> None:
    server.script([Reply(content=content)])
    llm, sleeps = phase2(server, tokens)
    with pytest.raises(LlmError, match="malformed") as caught:
        llm.run(SMALL)
    assert reason in str(caught.value)
    assert len(server.requests) == 1 and sleeps == []


def test_cut_off_output_says_to_raise_the_output_limit(server: FakeLlmServer, tokens: TokenCounter) -> None:
    cut = {"choices": [{"message": {"content": json.dumps(GOOD)[:200]}, "finish_reason": "length"}]}
    server.script([Reply(json_body=cut)])
    llm, _ = phase2(server, tokens)
    with pytest.raises(LlmError, match="VIKING_MCP_LLM_MAX_OUTPUT_TOKENS"):
        llm.run(SMALL)


# --- transient failures are retried ---------------------------------------------------------


def test_429_then_success_waits_as_told(server: FakeLlmServer, tokens: TokenCounter) -> None:
    server.script([Reply(status=429, headers={"Retry-After": "3"}, json_body={"error": {"message": "slow down"}})])
    llm, sleeps = phase2(server, tokens)
    result = llm.run(SMALL)
    assert len(result.memories) == 4 and result.calls == 1
    assert len(server.requests) == 2
    assert sleeps == [3.0]


def test_backoff_doubles_and_retry_after_is_capped(server: FakeLlmServer, tokens: TokenCounter) -> None:
    server.script(
        [
            Reply(status=500, body="oops"),
            Reply(status=502, body="bad gateway"),
            Reply(status=429, headers={"Retry-After": "3600"}),
        ]
    )
    llm, sleeps = phase2(server, tokens, max_attempts=4, backoff_seconds=0.25)
    assert len(llm.run(SMALL).memories) == 4
    assert sleeps == [0.25, 0.5, 30.0]


def test_503_every_time_fails_after_max_attempts(server: FakeLlmServer, tokens: TokenCounter) -> None:
    server.script([Reply(status=503, body='{"error": "overloaded"}')] * 5)
    llm, sleeps = phase2(server, tokens, max_attempts=3)
    with pytest.raises(LlmError, match="failed after 3 attempts") as caught:
        llm.run(SMALL)
    assert "503" in str(caught.value) and "overloaded" in str(caught.value)
    assert len(server.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_timeout_then_success(server: FakeLlmServer, tokens: TokenCounter) -> None:
    server.script([Reply(delay=3.0, content=json.dumps(GOOD))])
    llm, sleeps = phase2(server, tokens, timeout_seconds=0.5)
    started = time.monotonic()
    result = llm.run(SMALL)
    assert time.monotonic() - started < 2.5
    assert len(result.memories) == 4
    assert len(server.requests) == 2 and sleeps == [0.5]


def test_timeouts_every_time_name_the_timeout(server: FakeLlmServer, tokens: TokenCounter) -> None:
    server.script([Reply(delay=3.0, content=json.dumps(GOOD))] * 2)
    llm, _ = phase2(server, tokens, timeout_seconds=0.3, max_attempts=2)
    with pytest.raises(LlmError, match=r"failed after 2 attempts: last error no answer .* within 0\.3 s"):
        llm.run(SMALL)


def test_connection_refused_is_retried_then_reported(tokens: TokenCounter) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = LlmSettings(provider="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key=API_KEY)
    sleeps = Sleeps()
    with pytest.raises(LlmError, match=r"failed after 4 attempts: last error cannot reach http://127\.0\.0\.1"):
        LlmPhase2(settings, tokens, sleep=sleeps).run(SMALL)
    assert sleeps == [0.5, 1.0, 2.0]


# --- refusals fail at once -------------------------------------------------------------------


def test_401_fails_at_once_without_leaking_the_key(server: FakeLlmServer, tokens: TokenCounter) -> None:
    server.script([Reply(status=401, json_body={"error": {"message": f"Incorrect API key provided: {API_KEY}"}})])
    llm, sleeps = phase2(server, tokens)
    with pytest.raises(LlmError) as caught:
        llm.run(SMALL)
    text = str(caught.value)
    assert "401" in text and "Incorrect API key" in text and "VIKING_MCP_LLM_API_KEY" in text
    assert API_KEY not in text and API_KEY not in repr(llm.settings)
    assert len(server.requests) == 1 and sleeps == []


def test_404_points_at_base_url_and_model(server: FakeLlmServer, tokens: TokenCounter) -> None:
    llm, _ = phase2(server, tokens, base_url=server.root_url + "/wrong")
    with pytest.raises(LlmError, match=r"HTTP 404.*VIKING_MCP_LLM_BASE_URL.*test-model"):
        llm.run(SMALL)


def test_unsupported_response_format_is_left_out_next_time(server: FakeLlmServer, tokens: TokenCounter) -> None:
    # LM Studio, for one, refuses {"type": "json_object"}.
    refusal = {"error": "'response_format.type' must be 'json_schema' or 'text'"}
    server.script([Reply(status=400, json_body=refusal)])
    llm, sleeps = phase2(server, tokens, max_attempts=1)
    assert len(llm.run(SMALL).memories) == 4
    assert ["response_format" in body for body in server.bodies] == [True, False]
    llm.run(SMALL)
    assert "response_format" not in server.bodies[-1] and sleeps == []


# --- long archives are sent in parts --------------------------------------------------------


def test_long_archive_is_chunked_and_carries_the_overview(server: FakeLlmServer, tokens: TokenCounter) -> None:
    def responder(request: dict[str, Any]) -> str:
        user = request["messages"][-1]["content"]
        part = int(re.search(r"transcript part (\d+)", user).group(1))  # type: ignore[union-attr]
        return json.dumps(
            {
                "abstract": f"Abstract after part {part}.",
                "overview": f"# Overview\n\nOverview after part {part}.",
                "memories": [{"category": "events", "abstract": f"Part {part} happened.", "when": "2024-05-08"}],
            }
        )

    server.responder = responder
    messages = [
        message(n, f"Note {n:03d}: the hiking club plans route {n} along the coast, bring water.", day=8)
        for n in range(300)
    ]
    llm, _ = phase2(server, tokens, max_prompt_tokens=2000)
    result = llm.run(archive(messages, previous_overview="# Before\n\nCaroline joined the hiking club."))

    calls = len(server.requests)
    assert calls >= 3 and result.calls == calls
    for request in server.requests:
        assert tokens.count(request.system) + tokens.count(request.user) <= 2000
    # Every message is sent exactly once, in order.
    seen = [int(n) for request in server.requests for n in re.findall(r"Note (\d{3}):", request.user)]
    assert seen == list(range(300))
    # Each part gets the overview and abstract the previous part returned.
    assert "Caroline joined the hiking club." in server.requests[0].user
    assert "Overview after part 1." in server.requests[1].user
    assert "Abstract after part 1." in server.requests[1].user
    assert f"Overview after part {calls - 1}." in server.requests[-1].user
    assert "(the last part)" in server.requests[-1].user and "(more parts follow)" in server.requests[0].user
    # The result is the last part's summary, with every part's memories and usage.
    assert result.overview.endswith(f"Overview after part {calls}.")
    assert [m.abstract for m in result.memories] == [f"Part {n} happened." for n in range(1, calls + 1)]
    assert (result.prompt_tokens, result.completion_tokens) == (100 * calls, 20 * calls)


def test_a_huge_message_is_cut_to_fit(server: FakeLlmServer, tokens: TokenCounter) -> None:
    huge = "The logs say: " + " ".join(f"line {n} ok;" for n in range(20_000))
    llm, _ = phase2(server, tokens, max_prompt_tokens=2000)
    llm.run(archive([message(0, "Please read these logs."), message(1, huge), message(2, "Thanks, that helped.")]))

    users = [request.user for request in server.requests]
    assert len(users) == 3
    for request in server.requests:
        assert tokens.count(request.system) + tokens.count(request.user) <= 2000
    assert "[... truncated]" in users[1] and "line 20 ok;" in users[1] and "line 19999 ok;" not in users[1]
    assert "Thanks, that helped." in users[2]


# --- settings from the environment ----------------------------------------------------------


def test_no_model_means_no_llm() -> None:
    assert llm_settings_from_env({}) is None
    assert llm_settings_from_env({"VIKING_MCP_LLM_MODEL": " ", "OPENAI_API_KEY": "sk-x"}) is None


def test_settings_defaults_per_provider() -> None:
    openai = llm_settings_from_env({"VIKING_MCP_LLM_MODEL": "gpt-4o-mini", "OPENAI_API_KEY": "sk-openai"})
    assert openai == LlmSettings(
        provider="openai", base_url="https://api.openai.com/v1", model="gpt-4o-mini", api_key="sk-openai"
    )
    anthropic = llm_settings_from_env(
        {
            "VIKING_MCP_LLM_MODEL": "claude-haiku-4-5",
            "VIKING_MCP_LLM_PROVIDER": "Anthropic",
            "OPENAI_API_KEY": "sk-openai",
            "ANTHROPIC_API_KEY": "sk-ant",
        }
    )
    assert anthropic is not None
    assert (anthropic.provider, anthropic.base_url, anthropic.api_key) == (
        "anthropic",
        "https://api.anthropic.com",
        "sk-ant",
    )
    ollama = llm_settings_from_env(
        {
            "VIKING_MCP_LLM_MODEL": "llama3.2",
            "VIKING_MCP_LLM_BASE_URL": "http://127.0.0.1:11434/v1/",
            "VIKING_MCP_LLM_API_KEY": "own-key",
            "OPENAI_API_KEY": "sk-openai",
            "VIKING_MCP_LLM_TIMEOUT_SECONDS": "120",
            "VIKING_MCP_LLM_MAX_ATTEMPTS": "2",
            "VIKING_MCP_LLM_MAX_PROMPT_TOKENS": "6000",
        }
    )
    assert ollama is not None
    assert (ollama.base_url, ollama.api_key, ollama.timeout_seconds, ollama.max_attempts) == (
        "http://127.0.0.1:11434/v1",
        "own-key",
        120.0,
        2,
    )
    assert ollama.max_prompt_tokens == 6000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VIKING_MCP_LLM_PROVIDER", "gemini"),
        ("VIKING_MCP_LLM_BASE_URL", "api.openai.com/v1"),
        ("VIKING_MCP_LLM_TIMEOUT_SECONDS", "soon"),
        ("VIKING_MCP_LLM_TIMEOUT_SECONDS", "0"),
        ("VIKING_MCP_LLM_TIMEOUT_SECONDS", "nan"),
        ("VIKING_MCP_LLM_MAX_ATTEMPTS", "0"),
        ("VIKING_MCP_LLM_MAX_ATTEMPTS", "three"),
        ("VIKING_MCP_LLM_MAX_PROMPT_TOKENS", "100"),
        ("VIKING_MCP_LLM_MAX_OUTPUT_TOKENS", "-1"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(InvalidArgument, match=variable):
        llm_settings_from_env({"VIKING_MCP_LLM_MODEL": "m", variable: value})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@[::1]:8080/v1/chat?key=k", "http://[::1]:8080/v1/chat"),
        ("https://api.example.com/v1?api_key=k", "https://api.example.com/v1"),
    ],
)
def test_urls_in_messages_keep_ipv6_brackets_and_drop_credentials(url: str, shown: str) -> None:
    assert LlmPhase2._safe_url(url) == shown
