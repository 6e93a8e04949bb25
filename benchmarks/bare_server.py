"""The floor: a bare MCPServer with one no-op tool, served over stdio.

    python benchmarks/bare_server.py

The benchmark starts it exactly as it starts viking-mcp and measures it with the same
client code: its cold start, idle memory and tool round trip are the least any MCP server
built on this SDK can cost on this machine. The tool takes add_message's arguments, so the
request on the wire is the same size.
"""

from mcp.server import MCPServer

server = MCPServer("bare")


@server.tool()
def noop(session_id: str, role: str, content: str) -> dict[str, bool]:
    """Does nothing."""
    return {"ok": True}


if __name__ == "__main__":
    server.run("stdio")
