"""The MCP tools, one module per area; importing them fills `viking_mcp.mcp.state.TOOLS`.

The tools are module-level functions: importable and testable alone. Plain ones the SDK
runs on worker threads, so no engine call (a write least of all) ever runs on the event
loop. Two are async: `add_message` hands its append to the engine's batch thread
(`engine/batching.py`), and `commit` waits for Phase 2 on the loop without holding a thread.
"""

# In the order the tools were always listed: sessions, messages, commit, tasks, memories, context;
# then search, which came later.
# isort: off
from viking_mcp.mcp.tools import sessions, messages, commits, tasks, memories, context, search

# isort: on
from viking_mcp.mcp.state import TOOLS

__all__ = ["TOOLS", "commits", "context", "memories", "messages", "search", "sessions", "tasks"]
