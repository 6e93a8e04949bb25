"""The MCP resources: every node of the viking:// tree, as resource templates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from viking_mcp.engine.uris import read_node
from viking_mcp.errors import VikingError
from viking_mcp.mcp.state import ServerState


def add_resources(server: MCPServer[ServerState], state: ServerState) -> None:
    """Every node of the viking:// tree, as resource templates."""

    def read(uri: str, ctx: Context[ServerState, Any]) -> str:
        try:
            return read_node(state.require_engine(), uri, state.actor(ctx))[0]
        except (VikingError, ToolError) as exc:
            raise ResourceError(str(exc)) from exc

    def resource(template: str, description: str, mime_type: str) -> None:
        # One reader per shape of template; the SDK reads parameter names off the signature.
        register = server.resource(template, description=description, mime_type=mime_type)
        if "{archive_id}" in template:

            def archive_reader(session_id: str, archive_id: str, ctx: Context[ServerState, Any]) -> str:
                return read(template.format(session_id=session_id, archive_id=archive_id), ctx)

            register(archive_reader)
        elif "{tool_id}" in template:

            def tool_reader(session_id: str, tool_id: str, ctx: Context[ServerState, Any]) -> str:
                return read(template.format(session_id=session_id, tool_id=tool_id), ctx)

            register(tool_reader)
        else:

            def session_reader(session_id: str, ctx: Context[ServerState, Any]) -> str:
                return read(template.format(session_id=session_id), ctx)

            register(session_reader)

    resource("viking://session/{session_id}", "A session: its counters, metadata and files.", "application/json")
    for name, mime in (
        (".meta.json", "application/json"),
        ("messages.jsonl", "application/jsonl"),
        (".abstract.md", "text/markdown"),
        (".overview.md", "text/markdown"),
        (".relations.json", "application/json"),
    ):
        resource(f"viking://session/{{session_id}}/{name}", f"The session's {name}.", mime)
    resource("viking://session/{session_id}/history", "The session's archives.", "application/json")
    resource("viking://session/{session_id}/tools", "The session's tool calls.", "application/json")
    resource(
        "viking://session/{session_id}/tools/{tool_id}/tool.json",
        "One tool call of a session.",
        "application/json",
    )
    resource(
        "viking://session/{session_id}/history/{archive_id}",
        "An archive: status, abstract, files.",
        "application/json",
    )
    for name, mime in (
        ("messages.jsonl", "application/jsonl"),
        (".abstract.md", "text/markdown"),
        (".overview.md", "text/markdown"),
        ("memory_diff.json", "application/json"),
        (".done", "text/plain"),
    ):
        resource(f"viking://session/{{session_id}}/history/{{archive_id}}/{name}", f"The archive's {name}.", mime)

    for scope in ("user", "agent"):
        _memory_resources(server, read, scope)


def _memory_resources(
    server: MCPServer[ServerState], read: Callable[[str, Context[ServerState, Any]], str], scope: str
) -> None:
    """Templates for one owner's memories: the listing, a category, one memory (and the profile)."""
    base = f"viking://{scope}/{{owner_id}}/memories"
    whose = "user's" if scope == "user" else "agent's"

    def listing(owner_id: str, ctx: Context[ServerState, Any]) -> str:
        return read(base.format(owner_id=owner_id), ctx)

    def category_listing(owner_id: str, category: str, ctx: Context[ServerState, Any]) -> str:
        return read(f"{base.format(owner_id=owner_id)}/{category}", ctx)

    def memory(owner_id: str, category: str, name: str, ctx: Context[ServerState, Any]) -> str:
        return read(f"{base.format(owner_id=owner_id)}/{category}/{name}", ctx)

    def profile(owner_id: str, ctx: Context[ServerState, Any]) -> str:
        return read(f"{base.format(owner_id=owner_id)}/profile.md", ctx)

    server.resource(base, description=f"The {whose} long-term memories.", mime_type="application/json")(listing)
    if scope == "user":
        server.resource(f"{base}/profile.md", description="The user's profile.", mime_type="text/markdown")(profile)
    server.resource(
        f"{base}/{{category}}", description=f"The {whose} memories of one category.", mime_type="application/json"
    )(category_listing)
    server.resource(
        f"{base}/{{category}}/{{name}}",
        description=f"One of the {whose} memories: abstract, overview and content.",
        mime_type="text/markdown",
    )(memory)
