"""Sessions, commit (Phase 1 and 2), context assembly and tasks."""

from viking_mcp.engine.engine import Engine
from viking_mcp.engine.worker import Phase2Worker

__all__ = ["Engine", "Phase2Worker"]
