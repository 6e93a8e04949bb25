"""The `viking-mcp` command: the servers, and subcommands on a data directory or a server."""
