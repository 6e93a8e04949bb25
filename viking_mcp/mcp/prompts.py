"""The MCP prompt: rebuild an agent's context window from a session."""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import Message as PromptMessage, UserMessage
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from viking_mcp.errors import VikingError
from viking_mcp.mcp.state import ServerState


def add_prompts(server: MCPServer[ServerState], state: ServerState) -> None:
    budget_default = state.settings.mcp_default_token_budget

    @server.prompt(title="Rebuild context from a session")
    def rebuild_context(
        ctx: Context[ServerState, Any], session_id: str, token_budget: str = str(budget_default), query: str = ""
    ) -> list[PromptMessage]:
        """Rebuild an agent's context window from a session within a token budget; with a query
        (the task at hand), archived messages relevant to it take part of the budget."""
        try:
            budget = int(token_budget)
        except ValueError:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"INVALID_ARGUMENT: token_budget {token_budget!r} is not a whole number",
            ) from None
        try:
            engine = state.require_engine()
            text = engine.read_context(session_id, budget, query or None, actor=state.actor(ctx)).text
        except (VikingError, ToolError) as exc:
            # A protocol error keeps its message (the SDK hides a plain exception's text).
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc
        return [
            UserMessage(
                "Continue our conversation. Here is what viking-mcp kept of it "
                f"(session {session_id}, within {budget} tokens):\n\n{text}"
            )
        ]
