"""The MCP resources: every node of the viking:// tree, as resource templates."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from viking_mcp.engine.uris import read_node
from viking_mcp.errors import VikingError
from viking_mcp.mcp.state import ServerState

JSON, MARKDOWN = "application/json", "text/markdown"
SESSION = "viking://session/{session_id}"
ARCHIVE = f"{SESSION}/history/{{archive_id}}"


def _memories(scope: str) -> list[tuple[str, str, str, str]]:
    """One owner's memories: the listing, (the user's profile,) a category, one memory."""
    base, whose = f"viking://{scope}/{{owner_id}}/memories", f"{scope}'s"
    profile = [(f"{base}/profile.md", "profile", "The user's profile.", MARKDOWN)] if scope == "user" else []
    return [
        (base, "listing", f"The {whose} long-term memories.", JSON),
        *profile,
        (f"{base}/{{category}}", "category_listing", f"The {whose} memories of one category.", JSON),
        (
            f"{base}/{{category}}/{{name}}",
            "memory",
            f"One of the {whose} memories: abstract, overview and content.",
            MARKDOWN,
        ),
    ]


# The MIME type of each file a session or an archive holds.
FILE_TYPES = {
    ".meta.json": JSON,
    "messages.jsonl": "application/jsonl",
    ".abstract.md": MARKDOWN,
    ".overview.md": MARKDOWN,
    ".relations.json": JSON,
    "memory_diff.json": JSON,
    ".done": "text/plain",
}
SESSION_FILES = (".meta.json", "messages.jsonl", ".abstract.md", ".overview.md", ".relations.json")
ARCHIVE_FILES = ("messages.jsonl", ".abstract.md", ".overview.md", "memory_diff.json", ".done")

# (URI template, the name clients list it by, description, MIME type), in the order listed.
TEMPLATES: list[tuple[str, str, str, str]] = [
    (SESSION, "session_reader", "A session: its counters, metadata and files.", JSON),
    *[(f"{SESSION}/{file}", "session_reader", f"The session's {file}.", FILE_TYPES[file]) for file in SESSION_FILES],
    (f"{SESSION}/history", "session_reader", "The session's archives.", JSON),
    (f"{SESSION}/tools", "session_reader", "The session's tool calls.", JSON),
    (f"{SESSION}/tools/{{tool_id}}/tool.json", "tool_reader", "One tool call of a session.", JSON),
    (ARCHIVE, "archive_reader", "An archive: status, abstract, files.", JSON),
    *[(f"{ARCHIVE}/{file}", "archive_reader", f"The archive's {file}.", FILE_TYPES[file]) for file in ARCHIVE_FILES],
    *_memories("user"),
    *_memories("agent"),
]


def add_resources(server: MCPServer[ServerState], state: ServerState) -> None:
    for template, name, description, mime_type in TEMPLATES:
        server.resource(template, name=name, description=description, mime_type=mime_type)(_reader(template, state))


def _reader(template: str, state: ServerState) -> Callable[..., str]:
    """Reads the node a URI of `template` names."""

    def read(ctx: Context[ServerState, Any], **params: str) -> str:
        try:
            return read_node(state.require_engine(), template.format(**params), state.actor(ctx))[0]
        except (VikingError, ToolError) as exc:
            raise ResourceError(str(exc)) from exc

    # The SDK (and pydantic, validating the call) read the template's parameters off these.
    names = re.findall(r"{(\w+)}", template)
    parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str) for name in names]
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context[ServerState, Any])
    read.__signature__ = inspect.Signature([*parameters, context])  # type: ignore[attr-defined]
    read.__annotations__ = {**dict.fromkeys(names, str), "ctx": Context[ServerState, Any], "return": str}
    return read
