"""The faces of the engine: MCP server, CLI, embedded client (and, later, the HTTP API)."""
