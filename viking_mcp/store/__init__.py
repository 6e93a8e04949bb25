"""Where bytes live. `open_store` picks the backend from the settings: the embedded SQLite
store in the data directory by default, PostgreSQL when `settings.store` is a URL."""

from __future__ import annotations

from viking_mcp.config import Settings
from viking_mcp.errors import FailedPrecondition
from viking_mcp.store.sql import SQLStore as Store


def open_store(settings: Settings) -> Store:
    if settings.store is not None:
        try:
            from viking_mcp.store.postgres import PostgresStore
        except ImportError as exc:
            raise FailedPrecondition(
                f"a PostgreSQL store needs psycopg ({exc}); install it with `pip install 'viking-mcp[postgres]'`"
            ) from None
        return PostgresStore(
            settings.store,
            pool_size=settings.pg_pool_size,
            lease_seconds=settings.pg_lease_seconds,
            connect_timeout=settings.busy_timeout_ms / 1000 + 5,
        )
    from viking_mcp.store.sqlite import SQLiteStore

    return SQLiteStore(settings.database_path, busy_timeout_ms=settings.busy_timeout_ms, durability=settings.durability)


__all__ = ["Store", "open_store"]
