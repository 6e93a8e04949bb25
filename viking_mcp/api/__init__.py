"""The HTTP API: OpenViking's session API at /api/v1 and MCP at /mcp, one ASGI app."""
