"""viking-mcp: conversation memory for LLM agents, as an MCP server and a Python library.

from viking_mcp import Client

with Client(path="./memory") as client:
    session = client.session()
    session.add_message("user", [{"type": "text", "text": "Hi, I'm Ada."}])
    session.commit()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from viking_mcp._version import __version__

if TYPE_CHECKING:
    from viking_mcp.client import Client, Session

__all__ = ["Client", "Session", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import viking_mcp` stays cheap for the server's cold start.
    if name in ("Client", "Session"):
        from viking_mcp import client

        return getattr(client, name)
    raise AttributeError(f"module 'viking_mcp' has no attribute {name!r}")
