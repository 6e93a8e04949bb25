"""Where bytes live. `open_store` picks the backend from the settings."""

from __future__ import annotations

from viking_mcp.config import Settings
from viking_mcp.store.base import Store


def open_store(settings: Settings) -> Store:
    from viking_mcp.store.sqlite import SQLiteStore

    return SQLiteStore(settings.database_path, busy_timeout_ms=settings.busy_timeout_ms, durability=settings.durability)


__all__ = ["Store", "open_store"]
