"""The MCP server: tools, resources and a prompt over the engine, on stdio or HTTP."""
