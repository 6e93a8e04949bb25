"""The `viking-mcp` command. With no arguments it is an MCP server on stdio.

stdout belongs to the MCP protocol when serving: everything meant for a person goes to
stderr (logging included).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from viking_mcp import __version__
from viking_mcp.errors import VikingError

logger = logging.getLogger("viking_mcp")

_TTY_HELP = """\
viking-mcp {version}: conversation memory for LLM agents (an MCP server).

It is now serving MCP on stdin/stdout, which is meant for an MCP client such as
Claude Desktop, Claude Code, Cursor or VS Code, not for typing into. To use it:

  Claude Code:     claude mcp add viking-mcp -- {command}
  Claude Desktop:  add to claude_desktop_config.json:
                   {{"mcpServers": {{"viking-mcp": {{"command": "{command}"}}}}}}

Data directory: {home}  (set VIKING_MCP_HOME to change it)
Press Ctrl-C to stop. `viking-mcp --help` lists the options.
"""


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="viking-mcp",
        description="Conversation memory for LLM agents. With no command: an MCP server on stdio.",
    )
    parser.add_argument("--version", action="version", version=f"viking-mcp {__version__}")
    parser.add_argument("--home", help="data directory (default: $VIKING_MCP_HOME or the user data directory)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VIKING_MCP_LOG_LEVEL", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging on stderr (default INFO)",
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the MCP server (the default)")
    serve.add_argument("--transport", choices=["stdio"], default="stdio", help="MCP transport (default stdio)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        from viking_mcp.config import settings_from_env

        settings = settings_from_env()
        if args.home:
            settings = settings.with_home(args.home)
        return _serve_stdio(settings)
    except (VikingError, OSError, BaseExceptionGroup) as exc:
        # The store is opened by the server's lifespan; its errors may arrive in a group.
        cause = _first_cause(exc)
        if cause is None:
            raise
        if isinstance(cause, OSError):
            sys.stderr.write(f"viking-mcp: cannot use the data directory: {cause}; set VIKING_MCP_HOME or --home\n")
        else:
            sys.stderr.write(f"viking-mcp: {cause}\n")
        return 2
    except KeyboardInterrupt:
        return 130


def _first_cause(exc: BaseException) -> VikingError | OSError | None:
    if isinstance(exc, VikingError | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _first_cause(inner)) is not None:
                return found
    return None


def _stop_on_signal(signum: int, _frame: object) -> None:
    """Ctrl-C or SIGTERM: leave at once. The stdin reader thread cannot be interrupted, so a
    graceful shutdown could hang; nothing is lost by not waiting, since every acknowledged
    write is already committed and unfinished Phase 2 work resumes at the next start."""
    sys.stderr.write(f"viking-mcp: stopping ({signal.Signals(signum).name})\n")
    sys.stderr.flush()
    os._exit(0)


def _serve_stdio(settings: object) -> int:
    from viking_mcp.config import Settings
    from viking_mcp.faces.mcp_server import build_server

    assert isinstance(settings, Settings)
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    if sys.stdin.isatty():
        command = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "viking-mcp"
        sys.stderr.write(_TTY_HELP.format(version=__version__, command=command, home=settings.home))
        sys.stderr.flush()
    build_server(settings).run("stdio")
    return 0
